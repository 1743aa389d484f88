"""Folders of IDX files in the MNIST layout (as torchvision writes them, or the original site).

``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally gzipped, optionally in a ``raw/`` sub-folder.
Validation is the end of the training file: 10k images for MNIST-sized files, 1/6 of it for
smaller ones; test is the t10k file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from genlab.data.dataset import DataError, Dataset, Field, concat_fields
from genlab.data.source import Source, bounds

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) expected to have `ndim` dimensions."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path.name}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path.name}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"{path.name}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; "
            f"expected 0000 08 {ndim:02x} for {ndim}-d unsigned bytes)"
        )
    if raw[3] != ndim:
        raise DataError(
            f"{path.name}: IDX file has {raw[3]} dimensions, expected {ndim} "
            f"({'images' if ndim == 3 else 'labels'})"
        )
    dtype = _IDX_TYPES[raw[2]]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path.name}: IDX header is truncated ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    want = math.prod(dims) * dtype.itemsize
    if len(raw) - header != want:
        raise DataError(
            f"{path.name}: header says {'x'.join(map(str, dims))} ({want} bytes of data) "
            f"but the file holds {len(raw) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    # torchvision writes `train-images-idx3-ubyte`, the original site spells it
    # `train-images.idx3-ubyte`; both may be gzipped and may sit in a `raw/` sub-folder.
    ndim = 3 if kind == "images" else 1
    for where in (folder, folder / "raw"):
        for sep in ("-", "."):
            for gz in ("", ".gz"):
                path = where / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{gz}"
                if path.is_file():
                    return path
    return None


def is_idx_folder(folder: Path) -> bool:
    return folder.is_dir() and find_idx(folder, "train", "images") is not None


def idx_source(folder: Path, name: str, classes: list[str] | None = None) -> Source:
    paths = {
        (prefix, kind): find_idx(folder, prefix, kind)
        for prefix in ("train", "t10k")
        for kind in ("images", "labels")
    }
    for key in (("train", "images"), ("t10k", "images")):
        if paths[key] is None:
            raise DataError(
                f"{name}: no {key[0]}-{key[1]}-idx3-ubyte[.gz] file; expected the MNIST layout "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (optionally .gz, optionally in raw/)"
            )
    pieces: list[dict[str, Field]] = []
    for prefix in ("train", "t10k"):
        img_path, lab_path = paths[(prefix, "images")], paths[(prefix, "labels")]
        img = read_idx(img_path, 3)  # (n, H, W)
        if img.dtype != np.uint8:
            raise DataError(f"{img_path.name}: images must be unsigned bytes, got {img.dtype}")
        # (frombuffer arrays are read-only: copy before handing them to torch)
        piece: dict[str, Field] = {"x": torch.from_numpy(img.copy()).unsqueeze(1).float() / 255}
        if lab_path is not None:
            lab = read_idx(lab_path, 1)  # (n,)
            if len(lab) != len(img):
                raise DataError(
                    f"{lab_path.name}: {len(lab)} labels for {len(img)} images in {img_path.name}"
                )
            piece["y"] = torch.from_numpy(lab.astype(np.int64))
        pieces.append(piece)
    train, test = (p["x"] for p in pieces)  # (n, 1, H, W) each
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{name}: train images are {tuple(train.shape[2:])} but test images are "
            f"{tuple(test.shape[2:])}"
        )
    # Validation is the end of the official train file: 10k as usual for MNIST-sized data,
    # 1/6 of it (the same proportion) for smaller files.
    n_val = 10_000 if len(train) >= 60_000 else len(train) // 6
    whole = concat_fields(pieces)  # (N, 1, H, W) and (N,) labels if both files have them
    return Source(
        data=Dataset(whole["x"], whole.get("y"), name, classes=classes),
        splits=bounds(len(train) - n_val, n_val, len(test)),
    )
