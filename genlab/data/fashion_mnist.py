"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, MNIST layout).

The last 10k of the 60k training images are val, so the splits are 50k / 10k / 10k like MNIST.
"""

from __future__ import annotations

import functools
from pathlib import Path

from genlab.data.idx import idx_source, is_idx_folder
from genlab.data.source import Source, SourceMissing

# Where the Debian package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def fashion_source() -> Source:
    """Fashion-MNIST from FASHION_MNIST_DIR (read when called, so it can be pointed elsewhere)."""
    return _fashion_source(str(FASHION_MNIST_DIR))


@functools.lru_cache(maxsize=1)
def _fashion_source(folder: str) -> Source:
    if not is_idx_folder(Path(folder)):
        raise SourceMissing(f"Fashion-MNIST not found in {folder}")
    src = idx_source(Path(folder), "fashion-mnist", FASHION_CLASSES)
    src.cached = True
    return src
