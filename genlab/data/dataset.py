"""Datasets: images and any other per-image fields in memory; the batch format.

A :class:`Dataset` is a set of named fields, one row per image: ``x`` (float32
``(N, C, H, W)`` in ``[0, 1]``), optional integer labels ``y`` and whatever a conditional model
needs (``text``: a list of N strings, ``attrs``: an ``(N, k)`` tensor, ``domain``, ``x_b``...).
A batch is the same dict cut to B rows, so a model that needs a new field only needs a
dataset that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

SPLITS = ("train", "val", "test", "all")
BINARIZE_MODES = ("static", "dynamic", "threshold")

# A per-image field: a tensor whose first dimension is N, or a list of N Python objects.
Field = torch.Tensor | list
# Rows of a dataset: a slice, or an int64 index tensor (a bool mask is turned into one).
Rows = slice | torch.Tensor
# {"x": (B, C, H, W) float, "y": (B,) int64 if labelled, every other field cut to B rows}.
Batch = dict[str, Any]


class DataError(ValueError):
    """Bad data or a bad data request; the message says what was expected and how to fix it."""


def bad_mode_message(mode: object) -> str:
    return (
        f"unknown binarization {mode!r}: expected 'static', 'dynamic' or 'threshold' "
        "(or None to keep grey values)"
    )


def check_unit_range(x: torch.Tensor, what: str) -> None:
    """Raise DataError unless every value of x is a number in [0, 1]."""
    if x.numel() == 0:
        return
    if torch.isnan(x).any():
        raise DataError(f"{what}: images contain NaN; expected values in [0, 1]")
    lo, hi = torch.aminmax(x)
    if lo < 0 or hi > 1:
        raise DataError(
            f"{what}: values range over [{lo.item():.4g}, {hi.item():.4g}]; expected [0, 1]"
        )


def check_shape(shape: object) -> tuple[int, int, int]:
    ok = (
        isinstance(shape, (tuple, list))
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    )
    if not ok:
        raise DataError(f"shape must be (C, H, W) with three positive ints, got {shape!r}")
    return tuple(shape)  # type: ignore[return-value]


def take(value: Field, rows: Rows) -> Field:
    """Rows `rows` of one field, as a copy (sources kept in a cache must never be mutated)."""
    if isinstance(value, torch.Tensor):
        part = value[rows]
        return part.clone() if isinstance(rows, slice) else part  # indexing already copies
    if isinstance(rows, slice):
        return value[rows]
    return [value[i] for i in rows.tolist()]


def concat_fields(parts: Sequence[Mapping[str, Field]]) -> dict[str, Field]:
    """The fields of several pieces one after the other.

    A field is kept only if every piece has it: a partially labelled "all" split would be a
    trap for class-conditional models.
    """
    names = [k for k in parts[0] if all(k in p for p in parts[1:])]
    out: dict[str, Field] = {}
    for k in names:
        values = [p[k] for p in parts]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[k] = torch.cat(values)
        else:
            out[k] = [item for v in values for item in v]
    return out


class Dataset:
    """Images in memory with their other per-image fields and their provenance.

    ``x`` is float32 ``(N, C, H, W)`` in ``[0, 1]``: grey values, or exactly 0/1 when the
    binarization was applied when loading (``"static"``, ``"threshold"``). With ``"dynamic"``
    ``x`` keeps grey values and :class:`~genlab.data.Loader` draws fresh binary images for
    every batch. ``y`` (optional) holds (N,) integer labels; ``fields`` any other per-image
    fields, each a tensor with first dimension N or a list of N items (e.g. captions). All
    fields, ``x`` and ``y`` included, are in ``dataset.fields`` and read as attributes
    (``dataset.text``); the loader puts every one of them in each batch.

    ``paths`` (image folders) names each row's file; ``origin`` is what :func:`~genlab.data.load`
    was asked for (``{"source", "split", "binarize", "seed", "limit"}``, JSON-able; passing it
    back as ``load(**origin)`` gives the same data), None for datasets built by hand.

    ``unaligned`` names fields (e.g. ``("x_b", "y_b")``, a second image domain) whose rows
    are not paired with those of ``x``: the loader draws them in an order of their own.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        name: str = "data",
        split: str = "all",
        binarize: str | None = None,
        seed: int = 0,
        classes: list[str] | None = None,
        paths: list[str] | None = None,
        *,
        fields: Mapping[str, Any] | None = None,
        origin: dict[str, Any] | None = None,
        unaligned: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.split = split
        self.binarize = binarize
        self.seed = seed
        self.classes = classes
        self.origin = origin
        self.paths: list[str] | None = None  # set last: its length is checked against x
        self.fields: dict[str, Field] = {"x": self._checked_x(x)}
        if y is not None:
            self.fields["y"] = self._checked_y(y)
        for key, value in (fields or {}).items():
            self.fields[self._checked_name(key)] = self._checked_field(key, value)
        if split not in SPLITS:
            raise DataError(f"{name}: split must be one of {SPLITS}, got {split!r}")
        if binarize is not None and binarize not in BINARIZE_MODES:
            raise DataError(bad_mode_message(binarize))
        self.paths = None if paths is None else self._checked_field("paths", paths)
        missing = [k for k in unaligned if k not in self.fields or k in ("x", "y")]
        if missing:
            raise DataError(f"{name}: unaligned fields must be fields other than x and y, "
                            f"got {missing}")
        self.unaligned: tuple[str, ...] = tuple(unaligned)

    # ---- validation ---------------------------------------------------------------------------
    def _checked_x(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{self.name}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise DataError(f"{self.name}: x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DataError(
                f"{self.name}: x must be float in [0, 1], got {x.dtype} "
                "(divide uint8 images by 255)"
            )
        if "fields" in self.__dict__ and len(x) != len(self):
            raise DataError(f"{self.name}: x must keep the {len(self)} rows, got {len(x)}")
        if len(x) == 0:
            raise DataError(f"{self.name}: the {self.split} split holds no images")
        check_unit_range(x, self.name)
        return x.float()

    def _checked_y(self, y: object) -> torch.Tensor:
        n = len(self.x)
        if not isinstance(y, torch.Tensor) or y.shape != (n,):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else y
            raise DataError(f"{self.name}: y must be a ({n},) tensor of labels, got {got}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"{self.name}: y must hold integer labels, got {y.dtype}")
        return y.long()

    def _checked_name(self, key: object) -> str:
        if not isinstance(key, str) or not key.isidentifier():
            raise DataError(f"{self.name}: field names must be identifiers, got {key!r}")
        if key in ("x", "y"):
            raise DataError(f"{self.name}: pass {key} as Dataset({key}=...), not in fields")
        if hasattr(Dataset, key) or key in self.__dict__:
            raise DataError(f"{self.name}: {key!r} names a Dataset attribute; rename the field")
        return key

    def _checked_field(self, key: str, value: object) -> Field:
        n = len(self.x)
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and len(value) == n:
            return value
        if isinstance(value, list) and len(value) == n:
            return value
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if isinstance(value, list):
            got = f"a list of {len(value)}"
        raise DataError(
            f"{self.name}: field {key!r} must be a tensor with first dimension {n} or a list "
            f"of {n} items (one per image), got {got}"
        )

    # ---- fields -------------------------------------------------------------------------------
    @property
    def x(self) -> torch.Tensor:
        return self.fields["x"]  # type: ignore[return-value]

    @x.setter
    def x(self, value: torch.Tensor) -> None:
        self.fields["x"] = self._checked_x(value)

    @property
    def y(self) -> torch.Tensor | None:
        return self.fields.get("y")  # type: ignore[return-value]

    @y.setter
    def y(self, value: torch.Tensor | None) -> None:
        if value is None:
            self.fields.pop("y", None)
        else:
            self.fields["y"] = self._checked_y(value)

    def __getattr__(self, key: str) -> Field:
        # Only called when normal lookup fails: the other fields read as attributes.
        fields = self.__dict__.get("fields")
        if fields is not None and key in fields:
            return fields[key]
        raise AttributeError(f"{type(self).__name__} has no attribute or field {key!r}")

    def select(self, rows: Rows) -> Dataset:
        """The rows `rows` (a slice, an index tensor or a bool mask) of every field and path.

        The result keeps the name, split, binarization and classes; its ``origin`` is None,
        since ``load`` alone would not give these rows back.
        """
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        fields = {k: take(v, rows) for k, v in self.fields.items()}
        x, y = fields.pop("x"), fields.pop("y", None)
        paths = take(self.paths, rows) if self.paths is not None else None
        meta = (self.name, self.split, self.binarize, self.seed, self.classes)
        return Dataset(x, y, *meta, paths, fields=fields, unaligned=self.unaligned)

    # ---- description --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        _, c, h, w = self.x.shape
        return (c, h, w)

    def describe(self) -> str:
        """One line saying what this data is, for logs and reports."""
        if self.split == "all":
            what = f"{self.name} (all splits)"
        else:
            what = f"{self.name} {self.split} split"
        n = len(self)
        c, h, w = self.shape
        if self.binarize is None:
            how = "grey values" if c == 1 else "colour values"
        elif self.binarize == "threshold":
            how = "threshold binarization (threshold 0.5: not comparable with published NLLs)"
        else:
            how = f"{self.binarize} binarization (seed {self.seed})"
        return f"{what}, {n} image{'s' if n != 1 else ''} {c}x{h}x{w}, {how}"

    def __repr__(self) -> str:
        return f"<Dataset {self.describe()}; fields {', '.join(self.fields)}>"
