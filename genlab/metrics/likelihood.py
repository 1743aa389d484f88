"""Evaluation: negative log-likelihood (nats and bits/dim), per-image scores, AUROC.

Every number says what it is: exact (autoregressive models, baselines) or an
importance-weighted estimate (VAE), on which split and with which binarization.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import Tensor

from genlab.data import Dataset, Loader
from genlab.devices import to_device
from genlab.models.base import GenerativeModel, require


@dataclass
class NLLReport:
    """The test negative log-likelihood of a model on a dataset."""

    nats: float  # mean negative log-likelihood, nats per image
    bits_per_dim: float  # nats / (C*H*W * ln 2)
    n_images: int
    exact: bool  # False for importance-weighted estimates
    data: str  # which data: source, split, binarization
    method: str  # "exact" or e.g. "importance-weighted estimate, k=5000"
    loss: float | None = None  # the training loss on the data (VAE: -ELBO or -IWAE bound)

    def __str__(self) -> str:
        s = (
            f"NLL {self.nats:.2f} nats/image = {self.bits_per_dim:.4f} bits/dim "
            f"({self.method}) on {self.data}"
        )
        if self.loss is not None and not self.exact:
            s += f"; training objective on the same images {self.loss:.2f} nats"
        return s


def _default_k(model: GenerativeModel) -> int | None:
    """The sample count a model's log_prob uses when none is given (None if it takes none)."""
    param = inspect.signature(model.log_prob).parameters.get("k")
    return param.default if param is not None else None


def method_of(model: GenerativeModel, k: int | None = None) -> tuple[str, int | None]:
    """How ``model.log_prob(x, k=k)`` computes: ("exact", None) or e.g.
    ("importance-weighted estimate", 5000), ``k`` being the model's default when None."""
    if model.exact:
        return "exact", None
    return model.estimate, k if k is not None else _default_k(model)


def bits_per_dim(nats: float, n_dims: int) -> float:
    return nats / (n_dims * math.log(2))


class Progress:
    """Progress over ``total`` items: a tqdm bar on a terminal (rate and ETA, updated at every
    ``update``), else plain lines, so logs stay readable: after the first update (an early
    ETA), then at most every ``every`` seconds, then one at the end."""

    def __init__(self, total: int, desc: str, unit: str = "img", enabled: bool = True,
                 stream: TextIO | None = None, every: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.start, self.last = 0, time.perf_counter(), -math.inf
        self.bar = None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                            file=self.stream)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last >= self.every or self.done >= self.total:
                self.last = now
                self.stream.write(self.line(now - self.start) + "\n")
                self.stream.flush()

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else math.inf
        pct = 100 * self.done / max(self.total, 1)
        head = (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
                f"{rate:.1f} {self.unit}/s")
        if self.done >= self.total:
            return f"{head}, done in {_clock(elapsed)}"
        return f"{head}, ETA {_clock((self.total - self.done) / rate)}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _clock(seconds: float) -> str:
    """12 s, 3:05, 1:02:03: how long, as a person reads it."""
    if not math.isfinite(seconds):
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@torch.no_grad()
def log_probs(
    model: GenerativeModel,
    data: Dataset,
    batch_size: int = 500,
    progress: bool = False,
    **kwargs: Any,
) -> Tensor:
    """Per-image log-likelihood (N,) float64 in nats, in the data's order, on the CPU.
    ``progress``: show images/s and the ETA on stderr, updated after every batch.

    Batches go to the model's device; each batch's results come back as it is done, so the
    device holds one batch at a time.
    """
    require(model, "log_prob")
    model.eval()
    out: list[Tensor] = []
    batches = Loader(data, batch_size, shuffle=False, drop_last=False, seed=12345)
    with Progress(len(data), "log_prob", enabled=progress) as bar:
        for batch in batches:
            out.append(model.log_prob(batch["x"].to(model.device), **kwargs).cpu().double())
            bar.update(len(batch["x"]))
    return torch.cat(out)


def check_finite(lp: Tensor, data: Dataset, allow_impossible: bool = False) -> None:
    """One ValueError naming the cause when log-likelihoods are NaN or +inf (the model's
    arithmetic broke down) or, unless ``allow_impossible``, -inf (images the model gives
    probability 0, so the mean NLL is infinite)."""
    cases = [(torch.isnan(lp), "NaN", "the model's arithmetic overflowed (are its weights "
                                      "huge, or did training diverge?)"),
             (lp == math.inf, "+inf", "a density overflowed")]
    if not allow_impossible:
        cases.append((lp == -math.inf, "-inf", "the model gives them probability 0, or its "
                                               "log-probabilities underflowed"))
    for bad, what, cause in cases:
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            name = data.paths[first] if getattr(data, "paths", None) else f"image {first}"
            raise ValueError(
                f"log_prob is {what} for {int(bad.sum())} of {len(lp)} images of {data.name} "
                f"(first: {name}): {cause}"
            )


def nll(
    model: GenerativeModel,
    data: Dataset,
    batch_size: int = 500,
    progress: bool = False,
    **kwargs: Any,
) -> NLLReport:
    """Mean test NLL; ``kwargs`` go to ``log_prob`` (e.g. ``k=5000`` for a VAE). A NaN or
    infinite log-likelihood is a ValueError naming the cause, never a report of "NLL nan"."""
    lp = log_probs(model, data, batch_size, progress=progress, **kwargs)
    check_finite(lp, data)
    nats = float(-lp.mean())
    name, k = method_of(model, kwargs.get("k"))
    method = name if k is None else f"{name}, k={k}"
    loss = None
    if not model.exact:
        loss = validate(model, data, batch_size=batch_size)
    return NLLReport(
        nats=nats,
        bits_per_dim=bits_per_dim(nats, model.n_pixels),
        n_images=len(lp),
        exact=model.exact,
        data=data.describe(),
        method=method,
        loss=loss,
    )


__all__ = ["NLLReport", "Progress", "bits_per_dim", "check_finite", "log_probs", "method_of",
           "nll", "validate"]


@torch.no_grad()
def validate(
    model: GenerativeModel, data: Dataset, batch_size: int = 256, limit: int | None = None
) -> float:
    """Mean of the model's own loss over (the first ``limit`` images of) ``data``.

    For likelihood models the loss *is* the negative log-likelihood in nats; for a VAE it is
    its negative training bound (ELBO or IWAE), an upper bound. Uses the first player's loss.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # A fixed generator keeps dynamic binarization of validation data identical across calls.
    for batch in Loader(data, batch_size, shuffle=False, drop_last=False, seed=12345):
        if limit is not None and count >= limit:
            break
        batch = to_device(batch, model.device)
        loss, _ = model.loss(batch, model.players[0])
        b = len(batch["x"])
        total += float(loss) * b
        count += b
    model.train(was_training)
    return total / max(count, 1)
