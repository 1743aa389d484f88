"""Colour icons: the Oxygen icon theme from Debian's ``oxygen-icon-theme`` package.

The theme ships 1,528 PNG icons at 32x32 and 823 at 64x64, RGBA, in folders by kind (actions,
apps, devices, mimetypes, places...), which are the labels (``Dataset.classes``). Many are
symbolic links to another icon of the same size under a second name; each drawing is kept once
(the file the links point to), so no icon is both a training and a test image. Icons are drawn
to be seen on a light desktop: their transparent parts are composited onto white, which gives
an RGB image (or grey, for one channel). Values are the 8-bit values / 255. The split is the
fixed shuffle of the sorted files, cut 80 / 10 / 10, of a folder of images
(``genlab.data.folder``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.data.dataset import DataError, Dataset
from genlab.data.folder import _IMAGE_ERRORS, _fixed_splits, is_image_file
from genlab.data.source import Source, SourceMissing

# Where the Debian package puts the theme: one folder per size.
ICONS_DIR = Path("/usr/share/icons/oxygen/base")
ICON_SIZES = (32, 64)
BACKGROUND = (255, 255, 255, 255)  # white, opaque


def icons_source(shape: tuple[int, int, int] | None = None) -> Source:
    """The icons at 32x32 RGB, or at the size and channels of ``shape`` (C in 1, 3; 32 or 64
    pixels square). Read from ICONS_DIR when called, so it can be pointed elsewhere."""
    c, h, w = shape if shape is not None else (3, 32, 32)
    if c not in (1, 3) or h != w or h not in ICON_SIZES:
        sizes = " or ".join(f"{s}x{s}" for s in ICON_SIZES)
        raise DataError(f"icons come as 1 or 3 channels at {sizes}, not {c}x{h}x{w}")
    return _icons_source(str(ICONS_DIR), h, c)


@functools.lru_cache(maxsize=2)
def _icons_source(folder: str, size: int, channels: int) -> Source:
    root = Path(folder) / f"{size}x{size}"
    if not root.is_dir():
        raise SourceMissing(f"icons: the Oxygen icon theme is not in {root}")
    files = sorted(p for p in root.rglob("*.png") if is_image_file(p) and not p.is_symlink())
    if not files:
        raise SourceMissing(f"icons: no PNG icons in {root}")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as im:
                rgba = im.convert("RGBA")
                if rgba.size != (size, size):
                    rgba = rgba.resize((size, size), getattr(Image, "Resampling", Image).BILINEAR)
                flat = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba)
                arrays.append(np.asarray(flat.convert("L" if channels == 1 else "RGB"),
                                         dtype=np.uint8).reshape(size, size, channels))
        except _IMAGE_ERRORS as e:
            raise SourceMissing(f"icons: cannot read {path.relative_to(root)} ({e})") from None
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)  # (N, C, S, S)
    paths = [p.relative_to(root).as_posix() for p in files]
    kinds = [p.split("/")[0] for p in paths]  # the folder: actions, apps, devices...
    classes = sorted(set(kinds))
    y = torch.tensor([classes.index(k) for k in kinds])  # (N,)
    data = Dataset(x.contiguous(), y, "icons", classes=classes, paths=paths)
    return Source(data=data, splits=_fixed_splits(len(files)), cached=True)
