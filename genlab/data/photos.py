"""Colour photographs: 3x32x32 crops of the two sample images in the scikit-learn wheel.

Values are the 8-bit values / 255. Each photo's columns are cut into disjoint bands, so no
test crop shares a pixel with a training crop: [0, 448) train, [448, 544) val, [544, 640) test.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from genlab.data.dataset import Dataset
from genlab.data.packages import installed_file
from genlab.data.source import Source, SourceMissing, bounds

PHOTO_CROP = 32
_PHOTO_BANDS = {"train": (0, 448, 4), "val": (448, 544, 8), "test": (544, 640, 8)}
_WHAT = "photos: scikit-learn's sample images"


@functools.lru_cache(maxsize=1)
def photos_source() -> Source:
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        path = installed_file("scikit-learn", f"sklearn/datasets/images/{name}", _WHAT)
        try:
            with Image.open(path) as im:
                photos.append(np.asarray(im.convert("RGB")))  # (427, 640, 3) uint8
        except OSError as e:
            raise SourceMissing(f"{_WHAT} are unreadable ({e})") from None
    parts, counts = [], []
    for split in ("train", "val", "test"):
        lo, hi, stride = _PHOTO_BANDS[split]
        crops = [
            photo[r : r + PHOTO_CROP, c : c + PHOTO_CROP]
            for photo in photos
            for r in range(0, photo.shape[0] - PHOTO_CROP + 1, stride)
            for c in range(lo, hi - PHOTO_CROP + 1, stride)
        ]
        parts.append(np.stack(crops))
        counts.append(len(crops))
    x = torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).float().div_(255)
    data = Dataset(x.contiguous(), None, "photos")
    return Source(data=data, splits=bounds(*counts), cached=True)
