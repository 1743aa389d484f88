"""The model registry: CLI name -> model class. Adding a model = one file + one line here."""

from __future__ import annotations

import dataclasses
from typing import Any

from genlab.models.base import GenerativeModel, RunError, Unsupported, load
from genlab.models.baselines import FullJoint, Independent, Markov
from genlab.models.gan import GAN
from genlab.models.made import MADE
from genlab.models.nade import NADE
from genlab.models.pixelcnn import GatedPixelCNN, PixelCNN
from genlab.models.pixelrnn import DiagonalBiLSTM, RowLSTM
from genlab.models.rnade import RNADE
from genlab.models.vae import VAE

MODELS: dict[str, type[GenerativeModel]] = {
    cls.name: cls
    for cls in (Independent, Markov, FullJoint, NADE, MADE, RNADE, VAE, GAN, RowLSTM,
                DiagonalBiLSTM, PixelCNN, GatedPixelCNN)
}


def create(
    name: str,
    shape: tuple[int, int, int] = (1, 28, 28),
    preset: str | None = None,
    **overrides: Any,
) -> GenerativeModel:
    """A fresh, randomly initialised model ``name`` for images of ``shape`` (C, H, W).

    ``preset`` ("cpu" or "paper") applies that preset's model settings; ``overrides`` are
    fields of the model's config dataclass and win over the preset.
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
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(
            f"{name} has no setting {', '.join(unknown)}; "
            f"its settings are: {', '.join(sorted(fields)) or '(none)'}"
        )
    # Tuple-valued settings (layer widths...) arrive as lists from JSON or as one number from
    # the command line (--set hidden=300): give the config the tuple it declares.
    for f in dataclasses.fields(cls.Config):
        if f.name in settings and isinstance(f.default, tuple):
            value = settings[f.name]
            settings[f.name] = tuple(value) if isinstance(value, list | tuple) else (value,)
    return cls(tuple(shape), cls.Config(**settings))


__all__ = ["MODELS", "GenerativeModel", "RunError", "Unsupported", "create", "load"]
