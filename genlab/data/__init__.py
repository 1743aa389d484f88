"""Image data for genlab: datasets with open fields, binarization, the loader, the sources.

Every source becomes a :class:`Dataset`: ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]`` plus
any other per-image fields (``y``, ``text``, ``attrs``...). :func:`load` is the single entry
point and :data:`SOURCES` the one table of sources it reads; :class:`Loader` turns a dataset
into batches (dicts of every field) that depend only on ``(seed, step)``, so a run resumed at
step ``s`` sees exactly the batches it would have seen without the interruption;
:func:`binarization_for` decides what binarization a model's data gets.

Splits are always ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (the three concatenated).
How each source is split is documented in :func:`load`.

    dataset.py        Dataset, the batch format, DataError
    binarization.py   binarize, binarization_for, static draws
    loader.py         Loader
    registry.py       SOURCES and load
    mnist.py fashion_mnist.py idx.py npz.py folder.py photos.py synth.py: one per source
"""

from genlab.data.binarization import binarization_for, binarize
from genlab.data.dataset import BINARIZE_MODES, SPLITS, Batch, DataError, Dataset
from genlab.data.fashion_mnist import FASHION_CLASSES, FASHION_MNIST_DIR
from genlab.data.loader import Loader
from genlab.data.mnist import MNIST_CLASSES
from genlab.data.registry import (
    SOURCES,
    SourceEntry,
    check_source,
    describe_sources,
    load,
    sources_help,
)
from genlab.data.synth import synthetic

__all__ = [
    "BINARIZE_MODES",
    "Batch",
    "DataError",
    "Dataset",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "Loader",
    "MNIST_CLASSES",
    "SOURCES",
    "SPLITS",
    "SourceEntry",
    "binarization_for",
    "check_source",
    "binarize",
    "describe_sources",
    "load",
    "sources_help",
    "synthetic",
]
