"""``.npz`` files: an image array ``x`` cut 80 / 10 / 10, or ``x_train``, ``x_val``, ``x_test``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from genlab.data.dataset import DataError, Dataset, Field, concat_fields
from genlab.data.source import Source, bounds


def array_to_images(arr: np.ndarray, what: str) -> torch.Tensor:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) uint8 / float array -> (N, C, H, W) float32 in [0, 1]."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        # Channels-first when dim 1 looks like channels (torch's own layout), else channels-last.
        if arr.shape[1] not in (1, 3):
            if arr.shape[3] not in (1, 3):
                raise DataError(
                    f"{what}: shape {arr.shape} has no channel axis of size 1 or 3; "
                    "expected (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1, 3}"
                )
            arr = arr.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{what}: shape {arr.shape}; expected (N,H,W), (N,H,W,C) or (N,C,H,W) "
            "(reshape flat rows first, e.g. x.reshape(-1, 28, 28))"
        )
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255)
    if arr.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(arr)).float()
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{what}: dtype {arr.dtype}; expected uint8 (0..255) or float in [0, 1]")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.numel() and torch.isnan(x).any():
        raise DataError(f"{what}: contains NaN; expected uint8 (0..255) or float in [0, 1]")
    if x.numel():
        lo, hi = torch.aminmax(x)
        if lo < 0 or hi > 1:
            raise DataError(
                f"{what}: float values range over [{lo.item():.4g}, {hi.item():.4g}]; "
                "expected [0, 1] (rescale, or store uint8 0..255)"
            )
    return x


def _read_arrays(path: Path, name: str) -> dict[str, np.ndarray]:
    if path.is_file() and not zipfile.is_zipfile(path):
        # numpy would report a non-zip file as "pickled data", which misleads.
        raise DataError(
            f"{name}: cannot read as .npz (not a zip archive of .npy arrays, as numpy.savez "
            "writes)"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{name}: cannot read as .npz ({e})") from None
    if not hasattr(npz, "files"):
        raise DataError(f"{name}: holds a single .npy array; save it with np.savez(path, x=...)")
    with npz:
        return {k: npz[k] for k in npz.files}


def npz_source(path: Path) -> Source:
    name = f"npz:{path.name}"
    arrays = _read_arrays(path, name)

    def pick(*keys: str) -> np.ndarray | None:
        return next((arrays[k] for k in keys if k in arrays), None)

    xs = {
        "train": pick("x_train", "images_train"),
        "val": pick("x_val", "x_valid", "images_val", "images_valid"),
        "test": pick("x_test", "images_test"),
    }
    ys = {
        "train": pick("y_train", "labels_train"),
        "val": pick("y_val", "y_valid", "labels_val", "labels_valid"),
        "test": pick("y_test", "labels_test"),
    }
    if all(v is None for v in xs.values()):
        whole = pick("x", "images")
        if whole is None:
            raise DataError(
                f"{name}: no image array; expected 'x' (or 'images'), or 'x_train'/'x_test' "
                f"splits; found {sorted(arrays) or 'no arrays'}"
            )
        xs["train"], ys["train"] = whole, pick("y", "labels")
    elif xs["train"] is None:
        raise DataError(f"{name}: has split arrays {sorted(arrays)} but no 'x_train'")

    pieces: dict[str, dict[str, Field]] = {}
    for split, arr in xs.items():
        if arr is None:
            continue
        pieces[split] = {"x": array_to_images(arr, f"{name} {split} images")}
        lab = ys[split]
        if lab is not None:
            lab = np.asarray(lab)
            if lab.shape != (len(arr),) or not np.issubdtype(lab.dtype, np.integer):
                raise DataError(
                    f"{name}: {split} labels must be {len(arr)} integers, got "
                    f"{lab.dtype} {lab.shape}"
                )
            pieces[split]["y"] = torch.from_numpy(lab.astype(np.int64))
    shapes = {tuple(p["x"].shape[1:]) for p in pieces.values()}
    if len(shapes) > 1:
        raise DataError(f"{name}: splits have different image shapes {sorted(shapes)}")

    # Missing val/test pieces are carved off the end of the training array (10% each).
    train = pieces["train"]
    k = len(train["x"]) // 10
    for split in ("test", "val"):
        if split not in pieces:
            cut = len(train["x"]) - k
            pieces[split] = {key: v[cut:] for key, v in train.items()}
            train = {key: v[:cut] for key, v in train.items()}
    order = [train, pieces["val"], pieces["test"]]
    whole = concat_fields(order)
    return Source(
        data=Dataset(whole["x"], whole.get("y"), name),
        splits=bounds(*(len(p["x"]) for p in order)),
    )
