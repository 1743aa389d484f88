"""Two image domains, unpaired: the data of translation models (CycleGAN, UNIT...).

A source named ``A:B`` (``mnist:mnist-colour``, ``mnist:typeset``, ``mnist:fashion-mnist``)
holds domain A as ``x`` (with labels ``y``) and domain B as ``x_b`` (with ``y_b``), each split
taken from the same split of both domains and cut to the shorter of the two. The two are
**unaligned**: the dataset lists ``x_b`` and ``y_b`` in ``Dataset.unaligned``, so
:class:`~genlab.data.Loader` draws them in an order of their own (seeded apart from the
order of ``x``); row i of ``x`` and row i of ``x_b`` are unrelated images. ``y`` and ``y_b``
let a metric check that a translation keeps the class (digit -> the same digit).

Both domains are 3x32x32: grey images are repeated over 3 channels and every 28x28 image is
padded by 2 on each side (as :mod:`genlab.data.attributes`), so one network shape serves
both directions.

Domains:

- ``mnist``: MNIST digits, grey on black.
- ``mnist-colour``: MNIST digits in white on a background of a random colour
  (:data:`~genlab.data.attributes.COLOURS` darkened to 60%), drawn per image from ``seed``.
  Its images are other MNIST images than domain A's (the second half of each split), so no
  digit is in both domains.
- ``typeset``: digits 0-9 typed with PIL in every installed font of DejaVu, Noto (Sans,
  Serif, Mono) and URW base35, regular, bold and italic, at random size and offset.
- ``fashion-mnist``: Fashion-MNIST (its classes are not digits: ``y_b`` names clothes).

Split sizes: 10k / 1k / 1k images per domain (``limit`` keeps fewer).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data.attributes import COLOURS
from genlab.data.dataset import DataError, Dataset, concat_fields
from genlab.data.seeds import generator, mix
from genlab.data.source import Source, SourceMissing, bounds

TAG_DOMAINS = 9
SIZE = 32
SPLIT_SIZES = {"train": 10_000, "val": 1_000, "test": 1_000}
DOMAINS = ("mnist", "mnist-colour", "typeset", "fashion-mnist")
PAIRS = ("mnist:mnist-colour", "mnist:typeset", "mnist:fashion-mnist")
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/noto",
             "/usr/share/fonts/opentype/urw-base35")  # fmt: skip
# Font families that draw Latin digits (Noto ships hundreds of scripts; these are its Latin).
_FAMILIES = ("DejaVu", "NotoSans-", "NotoSerif-", "NotoSansMono-", "NotoSerifDisplay-",
             "NimbusSans", "NimbusRoman", "NimbusMono", "C059", "P052", "URWBookman",
             "URWGothic", "Z003")  # fmt: skip


def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """(n, 1 or 3, 28, 28) -> (n, 3, 32, 32): grey repeated over RGB, padded by 2 with black."""
    x = F.pad(x, (2, 2, 2, 2))
    return x.expand(-1, 3, -1, -1).clone() if x.shape[1] == 1 else x


def fonts() -> list[Path]:
    """Installed font files of the Latin families that typeset digits, sorted by name."""
    found = [p for d in FONT_DIRS if Path(d).is_dir() for p in Path(d).iterdir()
             if p.suffix.lower() in (".ttf", ".otf") and p.name.startswith(_FAMILIES)]
    return sorted(found, key=lambda p: p.name)


def typeset_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n digits typed in random fonts: ((n, 1, 28, 28) grey ink, (n,) labels)."""
    from PIL import Image, ImageDraw

    files = fonts()
    if not files:
        raise SourceMissing("no fonts found for typeset digits (`make fonts` installs them)")
    g = generator(seed)
    label = torch.randint(0, 10, (n,), generator=g)
    font = torch.randint(0, len(files), (n,), generator=g)
    size = torch.randint(18, 27, (n,), generator=g)
    shift = torch.randint(-2, 3, (n, 2), generator=g)
    out = np.zeros((n, 28, 28), dtype=np.float32)
    for i in range(n):
        face = _font(str(files[int(font[i])]), int(size[i]))
        img = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(img)
        text = str(int(label[i]))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
        dx, dy = int(shift[i, 0]), int(shift[i, 1])
        at = (14 - (left + right) / 2 + dx, 14 - (top + bottom) / 2 + dy)
        draw.text(at, text, fill=255, font=face)
        out[i] = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(out)[:, None], label


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int):  # noqa: ANN202 (a PIL font)
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _grey_rows(base: Source, split: str, part: int, n: int) -> torch.Tensor:
    """Row indices of `base`'s `split`: the first n of half `part` (0 or 1), or of all (-1)."""
    rows = torch.arange(len(base.data))[base.splits[split]]
    if part >= 0:
        half = len(rows) // 2
        rows = rows[part * half : (part + 1) * half]
    return rows[:n]


def _coloured(grey: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, 1, 28, 28) ink -> (n, 3, 32, 32): white digits on a random dark colour."""
    palette = torch.tensor(list(COLOURS.values())) * 0.6  # (8, 3)
    back = palette[torch.randint(0, len(palette), (len(grey),), generator=g)]  # (n, 3)
    ink = F.pad(grey, (2, 2, 2, 2))
    return ink + (1 - ink) * back[:, :, None, None]


def domain(name: str, split: str, n: int, seed: int, *, second: bool) -> tuple[torch.Tensor, ...]:
    """(images (m, 3, 32, 32), labels (m,)) of domain `name`, at most n of `split`.

    ``second``: this is domain B of a pair whose domain A may be the same base data set
    (mnist-colour), so it takes the second half of each split.
    """
    from genlab.data.fashion_mnist import fashion_source
    from genlab.data.mnist import mnist_source

    i = ("train", "val", "test").index(split)
    if name == "typeset":
        x, y = typeset_digits(n, mix(TAG_DOMAINS, seed, i))
        return to_rgb32(x), y
    base = fashion_source() if name == "fashion-mnist" else mnist_source()
    rows = _grey_rows(base, split, 1 if second and name == "mnist-colour" else
                      (0 if name == "mnist" else -1), n)
    grey, y = base.data.x[rows], base.data.y[rows]
    if name == "mnist-colour":
        return _coloured(grey, generator(mix(TAG_DOMAINS, seed, 10 + i))), y
    return to_rgb32(grey), y


def domain_pair_source(pair: str, seed: int, limit: int | None) -> Source:
    """The unaligned two-domain source `pair` ("A:B")."""
    a, _, b = pair.partition(":")
    if a not in DOMAINS or b not in DOMAINS:
        raise DataError(f"unknown domains {pair!r}: expected A:B with A and B among {DOMAINS}")
    pieces = []
    for split, size in SPLIT_SIZES.items():
        n = min(size, limit or size)
        xa, ya = domain(a, split, n, seed, second=False)
        xb, yb = domain(b, split, n, seed, second=True)
        m = min(len(xa), len(xb))
        pieces.append({"x": xa[:m], "y": ya[:m], "x_b": xb[:m], "y_b": yb[:m]})
    whole = concat_fields(pieces)
    data = Dataset(whole.pop("x"), whole.pop("y"), pair, fields=whole, unaligned=("x_b", "y_b"))
    return Source(data=data, splits=bounds(*(len(p["x"]) for p in pieces)))

