"""Evaluation: negative log-likelihood (nats and bits/dim), per-image scores, AUROC.

Every number says what it is: exact (autoregressive models, baselines) or an
importance-weighted estimate (VAE), on which split and with which binarization.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genlab.data import Dataset, Loader
from genlab.models.base import GenerativeModel, Unsupported


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


def bits_per_dim(nats: float, n_dims: int) -> float:
    return nats / (n_dims * math.log(2))


@torch.no_grad()
def log_probs(
    model: GenerativeModel,
    data: Dataset,
    batch_size: int = 500,
    progress: bool = False,
    **kwargs: Any,
) -> Tensor:
    """Per-image log-likelihood (N,) float64 in nats, in the data's order."""
    if not model.has("log_prob"):
        model.log_prob(torch.zeros(1, *model.shape))  # raises Unsupported with the message
    model.eval()
    out: list[Tensor] = []
    batches = Loader(data, batch_size, shuffle=False, drop_last=False, seed=12345)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(
            batches,
            total=math.ceil(len(data) / batch_size),
            unit="batch",
            desc="log_prob",
            leave=False,
        )
    for batch in batches:
        out.append(model.log_prob(batch["x"], **kwargs).double().cpu())
    return torch.cat(out)


def nll(
    model: GenerativeModel,
    data: Dataset,
    batch_size: int = 500,
    progress: bool = False,
    **kwargs: Any,
) -> NLLReport:
    """Mean test NLL; ``kwargs`` go to ``log_prob`` (e.g. ``k=5000`` for a VAE)."""
    lp = log_probs(model, data, batch_size, progress=progress, **kwargs)
    nats = float(-lp.mean())
    method = (
        "exact"
        if model.exact
        else (model.estimate + (f", k={k}" if (k := kwargs.get("k", _default_k(model))) else ""))
    )
    loss = None
    if not model.exact:
        from genlab.train import validate

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


def auroc(scores_pos: Tensor, scores_neg: Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2."""
    pos = scores_pos.double().flatten()
    neg = scores_neg.double().flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    allv = torch.cat([pos, neg])
    # Average ranks handle ties exactly (Mann-Whitney U statistic).
    _, inverse, counts = torch.unique(allv, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()
    ranks = (last_rank - (counts.double() - 1) / 2)[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


__all__ = ["NLLReport", "Unsupported", "auroc", "bits_per_dim", "log_probs", "nll"]
