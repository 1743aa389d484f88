"""Image files: a folder of PNG/JPEG images (flat, or one sub-folder per class), or one image.

Rows follow file order (class folders, then file names, sorted) and ``Dataset.paths`` names
each row's file. Split membership comes from a shuffle with a fixed seed, the same for every
run, cut 80 / 10 / 10: sorted class folders would otherwise put the last class entirely into
the test split, and runs with different seeds would be scored on different test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.data.dataset import DataError, Dataset, Rows
from genlab.data.seeds import generator
from genlab.data.source import Source, tail_bounds

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_FOLDER_SPLIT_SEED = 0
# Pillow reports broken files as OSError (UnidentifiedImageError), SyntaxError or ValueError.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    # Hidden files (e.g. macOS "._x.png" resource forks) are not images even with that suffix.
    hidden = path.name.startswith(".")
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not hidden


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def _read_images(
    files: list[Path], root: Path, name: str, shape: tuple[int, int, int] | None
) -> torch.Tensor:
    """(N, C, H, W) float32 in [0, 1]: `files` converted to grey or RGB, resized to `shape`.

    Without `shape`, the first image's size, grey if every image is grey, else RGB.
    """

    def bad(path: Path, e: Exception) -> DataError:
        rel = path.relative_to(root).as_posix()
        return DataError(f"{name}: cannot read image {rel} ({e}); fix or remove the file")

    if shape is None:
        # Only headers are read here: the first image's size, and grey unless any is colour.
        grey, size = True, None
        for path in files:
            try:
                with Image.open(path) as im:
                    grey = grey and im.mode in _GREY_MODES
                    size = size or im.size
            except _IMAGE_ERRORS as e:
                raise bad(path, e) from None
        shape = (1 if grey else 3, size[1], size[0])
    c, h, w = shape
    if c not in (1, 3):
        raise DataError(f"{name}: image files give 1 (grey) or 3 (RGB) channels, not {c}")
    # Pillow >= 9.1 names filters under Image.Resampling; its BILINEAR widens the kernel when
    # shrinking, i.e. it antialiases.
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    arrays = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("L" if c == 1 else "RGB")  # also decodes: corruption shows here
                if im.size != (w, h):
                    im = im.resize((w, h), bilinear)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(h, w, c))
        except _IMAGE_ERRORS as e:
            raise bad(path, e) from None
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)


def _fixed_splits(n: int) -> dict[str, Rows]:
    """Rows (ascending) of each split of n images in file order, cut after a fixed shuffle."""
    perm = torch.randperm(n, generator=generator(_FOLDER_SPLIT_SEED))  # (n,)
    splits: dict[str, Rows] = {
        s: perm[rows].sort().values for s, rows in tail_bounds(n).items() if s != "all"
    }
    splits["all"] = slice(0, n)
    return splits


def folder_source(folder: Path, shape: tuple[int, int, int] | None) -> Source:
    name = f"folder:{folder.resolve().name}"
    entries = sorted(folder.iterdir())
    top = [p for p in entries if is_image_file(p)]
    by_class = {
        d.name: files
        for d in entries
        if d.is_dir() and not d.name.startswith(".")
        for files in [_image_files(d)]
        if files
    }
    if top and by_class:
        raise DataError(
            f"{name}: has images both at the top ({top[0].name}) and in sub-folders "
            f"({next(iter(by_class))}/); keep it flat or put every image in a class sub-folder"
        )
    if not top and not by_class:
        raise DataError(
            f"{name}: no images found; expected {'/'.join(sorted(IMAGE_SUFFIXES))} files, "
            "flat or in one sub-folder per class"
        )
    classes = sorted(by_class) or None
    files = [p for c in classes for p in by_class[c]] if classes else top
    y = None
    if classes:
        y = torch.tensor([i for i, c in enumerate(classes) for _ in by_class[c]])  # (N,)
    x = _read_images(files, folder, name, shape)  # (N, C, H, W)
    paths = [p.relative_to(folder).as_posix() for p in files]
    data = Dataset(x, y, name, classes=classes, paths=paths)
    return Source(data=data, splits=_fixed_splits(len(files)))


def image_source(path: Path, shape: tuple[int, int, int] | None) -> Source:
    """One image file: a dataset of one image (its "all" and "train" split)."""
    name = f"image:{path.name}"
    x = _read_images([path], path.parent, name, shape)  # (1, C, H, W)
    return Source(data=Dataset(x, None, name, paths=[path.name]), splits=_fixed_splits(1))
