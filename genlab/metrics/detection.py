"""Anomaly detection: how well a score separates in-distribution from out-of-distribution images."""

from __future__ import annotations

import torch
from torch import Tensor


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
