"""What every source module returns: all of a source's images and where its splits lie."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.data.dataset import DataError, Dataset, Rows


class SourceMissing(DataError):
    """A source's files are absent or unreadable; `load` adds how to install them."""


def bounds(n_train: int, n_val: int, n_test: int) -> dict[str, Rows]:
    """Contiguous splits: train, then val, then test; "all" is the three together."""
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
    return {"train": slice(0, a), "val": slice(a, b), "test": slice(b, c), "all": slice(0, c)}


def tail_bounds(n: int) -> dict[str, Rows]:
    """Split n ordered items: the last 10% is test and the 10% before it val."""
    k = n // 10
    return bounds(n - 2 * k, k, k)


def count(rows: Rows, n: int) -> int:
    """Number of rows `rows` picks out of n."""
    return len(range(n)[rows]) if isinstance(rows, slice) else len(rows)


def first(rows: Rows, limit: int | None) -> Rows:
    """The first `limit` of `rows` (all of them for None)."""
    if limit is None:
        return rows
    if isinstance(rows, slice):
        return slice(rows.start, min(rows.stop, rows.start + limit))
    return rows[:limit]


@dataclass(eq=False)  # compared and hashed by identity: cached sources key caches
class Source:
    data: Dataset  # every image of the source, split "all"; may live in a cache: never mutate
    splits: dict[str, Rows]  # split -> its rows of `data` ("all" included)
    # Binarization draws pixel ~ Bernoulli(p); p = x unless the source keeps the 8-bit value k
    # over another denominator (MNIST: k/256, see mnist.py).
    levels_denominator: int | None = None
    cached: bool = False  # True for sources kept in the in-process cache (their draws too)

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    def bernoulli_p(self, x: torch.Tensor) -> torch.Tensor:
        if self.levels_denominator is None:
            return x
        return torch.round(x * 255) / self.levels_denominator
