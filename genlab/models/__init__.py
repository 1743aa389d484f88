"""The model registry: CLI name -> model class. Adding a model = one file + one line here."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from genlab.models.aae import AAE
from genlab.models.base import GenerativeModel, RunError, Unsupported, load
from genlab.models.baselines import FullJoint, Independent, Markov
from genlab.models.conv_vae import ConvVAE
from genlab.models.cyclegan import CycleGAN
from genlab.models.dcgan import DCGAN
from genlab.models.gan import GAN
from genlab.models.infogan import InfoGAN
from genlab.models.made import MADE
from genlab.models.nade import NADE
from genlab.models.pixelcnn import GatedPixelCNN, PixelCNN
from genlab.models.pixelrnn import DiagonalBiLSTM, RowLSTM
from genlab.models.progan import ProGAN
from genlab.models.puzzlegan import PuzzleGAN
from genlab.models.rnade import RNADE
from genlab.models.stargan import StarGAN
from genlab.models.text2image import Text2Image
from genlab.models.vae import VAE

MODELS: dict[str, type[GenerativeModel]] = {
    cls.name: cls
    for cls in (Independent, Markov, FullJoint, NADE, MADE, RNADE, VAE, ConvVAE, AAE, GAN,
                DCGAN, InfoGAN, ProGAN, CycleGAN, RowLSTM, DiagonalBiLSTM, PixelCNN,
                GatedPixelCNN, StarGAN, Text2Image, PuzzleGAN)
}


# ---- settings: values checked against the config dataclass's field types -----------------------

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _describe(kind: Any) -> str:
    """'an integer', 'a list of integers', 'a number or null' ... for error messages."""
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return f"{_describe(item)} or a comma-separated list of {_PLURALS.get(item, 'them')}"
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a)
                           for a in typing.get_args(kind))
    return _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _coerce(kind: Any, value: Any) -> Any:
    """``value`` as field type ``kind``, or raise ValueError. JSON and the command line give
    lists for tuples, ints for floats and e.g. 1e3 for ints: those are taken as meant."""
    origin = typing.get_origin(kind)
    if origin is tuple:  # tuple[int, ...]: a list, a tuple, or one value (--set hidden=300)
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(typing.get_args(kind)[0], v) for v in items)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        for alternative in typing.get_args(kind):
            if alternative is not type(None):
                try:
                    return _coerce(alternative, value)
                except ValueError:
                    pass
        raise ValueError
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError
    return value  # a type this check does not know: the config's own __post_init__ decides


class SettingError(ValueError):
    """A model setting of the wrong type: "hidden must be an integer, got 'abc'"."""

    def __init__(self, key: str, expected: str, value: Any) -> None:
        super().__init__(f"{key} must be {expected}, got {value!r}")
        self.key, self.expected = key, expected


def check_settings(cls: type[GenerativeModel], settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` converted to the types of ``cls.Config``'s fields, or one clear error:
    TypeError naming the valid settings for an unknown one, :class:`SettingError` (a
    ValueError) for a wrong type ("hidden must be an integer, got 'abc'")."""
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(
            f"{cls.name} has no setting {', '.join(unknown)}; "
            f"its settings are: {', '.join(sorted(fields)) or '(none)'}"
        )
    hints = typing.get_type_hints(cls.Config)
    checked = {}
    for key, value in settings.items():
        try:
            checked[key] = _coerce(hints[key], value)
        except ValueError:
            raise SettingError(key, _describe(hints[key]), value) from None
    return checked


def create(
    name: str,
    shape: tuple[int, int, int] = (1, 28, 28),
    preset: str | None = None,
    **overrides: Any,
) -> GenerativeModel:
    """A fresh, randomly initialised model ``name`` for images of ``shape`` (C, H, W).

    ``preset`` ("cpu" or "paper") applies that preset's model settings; ``overrides`` are
    fields of the model's config dataclass and win over the preset; each is checked against
    the field's type.

    The models (``genlab.MODELS``):

    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name]
    settings: dict[str, Any] = {}
    if preset is not None:
        if preset not in cls.presets:
            raise KeyError(f"{name} has no preset {preset!r}; it has: {', '.join(cls.presets)}")
        settings.update(cls.presets[preset].get("model", {}))
    settings.update(overrides)
    return cls(tuple(shape), cls.Config(**check_settings(cls, settings)))


def _model_lines() -> str:
    """One docstring line per registered model, so ``help(genlab.create)`` cannot go stale."""
    lines = []
    for name, cls in MODELS.items():
        kind = "exact" if cls.exact else cls.estimate
        what = ", ".join(f"log_prob ({kind})" if c == "log_prob" else c
                         for c in cls.capabilities())
        lines.append(f"    - ``{name}``: {what}. {cls.paper or 'A textbook baseline.'}")
    return "\n".join(lines) + "\n"


if create.__doc__ is not None:  # None under python -OO
    create.__doc__ = create.__doc__.rstrip(" ") + _model_lines()


__all__ = ["MODELS", "GenerativeModel", "RunError", "SettingError", "Unsupported",
           "check_settings", "create", "load"]
