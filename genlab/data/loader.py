"""The loader: deterministic, resumable batches of every field of a dataset."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from genlab.data.binarization import binarize
from genlab.data.dataset import Batch, DataError, Dataset, take
from genlab.data.seeds import TAG_DYNAMIC, TAG_EPOCH, TAG_EVAL, TAG_UNALIGNED, generator, mix


class Loader:
    """Deterministic, resumable batches: the batch for step s depends only on (seed, s).

    ``batch(step)`` serves training: epoch ``step // steps_per_epoch`` visits the data in an
    order drawn from ``(seed, epoch)``; each step takes the next global batch of
    ``batch_size * world_size`` images and rank ``r`` gets the ``r``-th contiguous share.
    Iterating serves evaluation: one pass, last partial batch kept.
    For ``"dynamic"`` data each batch is a fresh Bernoulli draw seeded from
    ``(seed, step, rank)``, so a resumed run sees identical binary images.
    Fields the dataset lists in ``unaligned`` (a second domain: ``x_b``, ``y_b``) follow an
    order of their own, drawn from ``(seed, epoch)`` on a separate stream (and, when
    iterating, from the eval pass): the same step always pairs the same rows, but row i of
    ``x`` never goes with row i of ``x_b`` by construction.
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
            batch = (f"one batch of {batch_size}" if world_size == 1 else
                     f"one global batch of {self.global_batch_size} ({world_size} x {batch_size})")
            raise DataError(f"{data.describe()}: fewer images than {batch}; lower the batch "
                            "size (--batch-size)")
        self._order_cache: tuple[int, torch.Tensor] | None = None
        self._other_cache: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        """(N,) int64 visiting order of the data in `epoch`."""
        if not self.shuffle:
            return torch.arange(len(self.data))
        # Consecutive steps share an epoch: keep the last permutation instead of redrawing it.
        if self._order_cache is None or self._order_cache[0] != epoch:
            g = generator(mix(TAG_EPOCH, self.seed, epoch))
            self._order_cache = (epoch, torch.randperm(len(self.data), generator=g))
        return self._order_cache[1]

    def _other_order(self, epoch: int) -> torch.Tensor:
        """(N,) int64 visiting order of the unaligned fields in `epoch` (shuffled even when
        ``shuffle`` is off: an unaligned domain is never paired by position)."""
        if self._other_cache is None or self._other_cache[0] != epoch:
            g = generator(mix(TAG_UNALIGNED, self.seed, epoch))
            self._other_cache = (epoch, torch.randperm(len(self.data), generator=g))
        return self._other_cache[1]

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

    def _gather(self, idx: torch.Tensor, draw_seed: int,
                other: torch.Tensor | None = None) -> Batch:
        # Every field, whatever it is: a conditional model adds fields, not loader code.
        # `other`: the rows of the unaligned fields (same length as idx).
        unaligned = self.data.unaligned
        batch = {k: take(v, other if k in unaligned and other is not None else idx)
                 for k, v in self.data.fields.items()}  # x: (B, C, H, W)
        if self.data.binarize == "dynamic":
            batch["x"] = binarize(batch["x"], "dynamic", generator(draw_seed))
        return batch

    def batch(self, step: int) -> Batch:
        """This rank's batch for training step `step`: every field of the dataset, B rows.

        ``{"x": (B, C, H, W)[, "y": (B,)][, other fields: B rows, lists stay lists]}``.

        With drop_last=False the last step of an epoch may be smaller (even empty on some ranks).
        """
        idx = self.indices(step)
        other = None
        if self.data.unaligned:
            epoch, i = divmod(step, self.steps_per_epoch)
            g = self.global_batch_size
            other = self._share(self._other_order(epoch)[i * g : (i + 1) * g])
        return self._gather(idx, mix(TAG_DYNAMIC, self.seed, step, self.rank), other)

    def _eval_chunks(self, order: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        order = self._order(0) if order is None else order
        g = self.global_batch_size
        for start in range(0, len(order), g):
            idx = self._share(order[start : start + g])
            if len(idx):
                yield idx

    def __iter__(self) -> Iterator[Batch]:
        """One pass over the data (in order, or epoch 0's order if shuffle), partial batch kept."""
        others = self._eval_chunks(self._other_order(0)) if self.data.unaligned else None
        for k, idx in enumerate(self._eval_chunks()):
            other = next(others) if others is not None else None
            yield self._gather(idx, mix(TAG_EVAL, self.seed, k, self.rank), other)

    def __len__(self) -> int:
        """Number of batches one iteration yields on this rank."""
        return sum(1 for _ in self._eval_chunks())
