"""Unsupervised classification: how well discovered clusters (InfoGAN's categorical code, the
adversarial autoencoder's clusters, a mixture's component...) match the labels once each
cluster is named after one class. The clusters carry no names; three ways to give them one:

- **Hungarian**: the best one-to-one matching of clusters to classes (the number of images
  whose cluster is matched to their own class is maximal), found exactly by the Hungarian
  method (Kuhn 1955, Munkres 1957) in O(n^2 m) on the scored images themselves. It needs as
  many clusters as classes to be fair: an unmatched cluster's images all count as wrong.
- **head** (Makhzani et al. 2015, the adversarial autoencoder's rule): each cluster i takes
  the label of the example x_n of a labelled set that maximises q(y_i | x_n), its "head";
  any number of clusters, several may share a class.
- **majority**: each cluster takes the most common label among the labelled examples it
  claims (argmax q(y | x)): one example's luck does not name it, so it is the more robust.

The head and majority labels come from one split (training) and are scored on another (test).
A model clusters when it has ``cluster(x) -> (B, K)`` probabilities and ``n_clusters`` K >= 2
(:func:`check_clusters`); :func:`cluster_report` gives every error for such a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


def assignment(cost: list[list[float]]) -> list[int]:
    """The column of each row that minimises the total ``cost`` of a one-to-one matching of
    rows to columns (n rows <= m columns): the Hungarian method with row and column potentials
    ``u``, ``v``, adding one row at a time along a shortest augmenting path."""
    n = len(cost)
    m = len(cost[0]) if n else 0
    if n > m:
        raise ValueError(f"assignment needs at most as many rows as columns, got {n}x{m}")
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)  # index 0 is the virtual start
    row_of = [0] * (m + 1)  # row_of[j]: 1-based row matched to column j (0: free)
    way = [0] * (m + 1)  # the previous column on the augmenting path
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        slack, used = [inf] * (m + 1), [False] * (m + 1)
        while True:  # grow a tree of tight edges until it reaches a free column
            used[j0] = True
            i0, delta, j1 = row_of[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    reduced = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < slack[j]:
                        slack[j], way[j] = reduced, j0
                    if slack[j] < delta:
                        delta, j1 = slack[j], j
            for j in range(m + 1):  # shift potentials: one more edge becomes tight
                if used[j]:
                    u[row_of[j]] += delta
                    v[j] -= delta
                else:
                    slack[j] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0:  # flip the path: every column on it takes the row before it
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    column = [-1] * n
    for j in range(1, m + 1):
        if row_of[j]:
            column[row_of[j] - 1] = j - 1
    return column


def confusion(clusters: Tensor, labels: Tensor, n_clusters: int, n_classes: int) -> Tensor:
    """(n_clusters, n_classes) counts of images per (cluster, class)."""
    idx = clusters.long().flatten() * n_classes + labels.long().flatten()
    return torch.bincount(idx, minlength=n_clusters * n_classes).view(n_clusters, n_classes)


def clustering_error(clusters: Tensor, labels: Tensor, n_clusters: int | None = None,
                     n_classes: int | None = None) -> float:
    """Share of images misclassified when each cluster is named after the class of the best
    one-to-one matching (unmatched clusters count as wrong): 0 for a relabelled perfect
    clustering, about 1 - 1/K for clusters drawn at random."""
    if clusters.shape != labels.shape or clusters.numel() == 0:
        raise ValueError(f"need one cluster per label, got {tuple(clusters.shape)} clusters "
                         f"and {tuple(labels.shape)} labels")
    k = n_clusters or int(clusters.max()) + 1
    c = n_classes or int(labels.max()) + 1
    counts = confusion(clusters.cpu(), labels.cpu(), k, c).tolist()
    if k > c:  # match classes to clusters instead: the matching is the same
        counts = [list(col) for col in zip(*counts, strict=True)]
    picked = assignment([[-float(x) for x in row] for row in counts])
    matched = sum(row[j] for row, j in zip(counts, picked, strict=True))
    return 1.0 - matched / clusters.numel()


# ---- naming clusters from a labelled set: pure functions of the probabilities q(y | x) ----------


def _check(probs: Tensor, labels: Tensor) -> None:
    if probs.dim() != 2 or labels.shape != probs.shape[:1] or probs.shape[0] == 0:
        raise ValueError(f"need probabilities (N, K) and N labels, got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")


def head_labels(probs: Tensor, labels: Tensor) -> Tensor:
    """(K,) the label of each cluster by the paper's rule: that of the example n maximising
    q(y_i | x_n) over ``probs`` (N, K) (the first such example on ties)."""
    _check(probs, labels)
    return labels.long()[probs.argmax(0)]


def majority_labels(probs: Tensor, labels: Tensor, n_classes: int | None = None) -> Tensor:
    """(K,) the most common label among the examples each cluster claims (argmax of ``probs``
    (N, K)); the smaller label on ties; a cluster that claims none keeps its head's label."""
    _check(probs, labels)
    k, c = probs.shape[1], n_classes or int(labels.max()) + 1
    counts = confusion(probs.argmax(1), labels, k, c)  # (K, C)
    return torch.where(counts.sum(1) > 0, counts.argmax(1), head_labels(probs, labels))


def labelled_error(probs: Tensor, labels: Tensor, names: Tensor) -> float:
    """Share of the examples whose most probable cluster in ``probs`` (N, K) is named
    (``names`` (K,)) after another class than their label."""
    _check(probs, labels)
    return float((names[probs.argmax(1)] != labels.long()).double().mean())


# ---- a model's clusters, named on one split and scored on another -------------------------------


def check_clusters(model: Any) -> int:
    """The number of clusters K >= 2 of a ``model`` that clusters images; ``Unsupported`` for
    a model without ``cluster``, ValueError for one whose run has no clusters."""
    from genlab.models import MODELS
    from genlab.models.base import Unsupported

    if not callable(getattr(model, "cluster", None)):
        have = sorted(name for name, cls in MODELS.items() if hasattr(cls, "cluster"))
        raise Unsupported(f"{model.name} has no cluster(); models that do: {', '.join(have)}")
    k = int(model.n_clusters)
    if k < 2:
        raise ValueError(f"this {model.name} has no clusters ({k}): train one with "
                         f"--set {model.cluster_setting}=K, K >= 2")
    return k


@dataclass
class ClusteringReport:
    """A model's clusters as a classifier: the scored split's error under each naming."""

    model: str
    clusters: int  # K
    classes: int
    named_on: str  # the labelled split the head and majority names come from
    n_named: int
    scored_on: str
    n_scored: int
    head: float  # the paper's rule
    majority: float
    hungarian: float | None  # only when K equals the number of classes
    used: int  # clusters that claim at least one scored image

    def __str__(self) -> str:
        lines = [f"clusters of {self.model} ({self.clusters} clusters, {self.used} used; "
                 f"{self.classes} classes): error on {self.n_scored:,} images of "
                 f"{self.scored_on}, clusters named after {self.n_named:,} images of "
                 f"{self.named_on}",
                 f"  head rule (paper): {100 * self.head:6.2f}%  (each cluster takes the label "
                 "of the image it is surest of)",
                 f"  majority:          {100 * self.majority:6.2f}%  (the commonest label of "
                 "the images it claims)"]
        if self.hungarian is not None:
            lines.append(f"  Hungarian:         {100 * self.hungarian:6.2f}%  (the best "
                         "one-to-one matching, on the scored images themselves)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def cluster_probabilities(model: Any, data: Any, batch_size: int = 500) -> Tensor:
    """``model.cluster`` of every image of ``data`` (N, K) on the CPU, in the data's order."""
    from genlab.metrics.probe import features

    check_clusters(model)
    return features(model, data, batch_size, method="cluster")


def _labels_of(data: Any) -> Tensor:
    if getattr(data, "y", None) is None:
        raise ValueError(f"naming clusters needs labels: {data.describe()} has none")
    return data.y.long()


def cluster_report(model: Any, named: Any, scored: Any, batch_size: int = 500
                   ) -> ClusteringReport:
    """The errors on ``scored`` (a labelled Dataset, e.g. test) of ``model``'s clusters named
    after the labels of ``named`` (e.g. training) by the head and majority rules, and for K
    equal to the number of classes, after the best one-to-one matching on ``scored``."""
    from genlab.metrics.samples import describe_real

    k = check_clusters(model)
    y_named, y_scored = _labels_of(named), _labels_of(scored)
    c = int(max(y_named.max(), y_scored.max())) + 1
    p_named = cluster_probabilities(model, named, batch_size)  # (N, K)
    p_scored = cluster_probabilities(model, scored, batch_size)  # (M, K)
    hard = p_scored.argmax(1)  # (M,)
    return ClusteringReport(
        model=model.name, clusters=k, classes=c, named_on=describe_real(named),
        n_named=len(y_named), scored_on=describe_real(scored), n_scored=len(y_scored),
        head=labelled_error(p_scored, y_scored, head_labels(p_named, y_named)),
        majority=labelled_error(p_scored, y_scored, majority_labels(p_named, y_named, c)),
        hungarian=clustering_error(hard, y_scored, k, c) if k == c else None,
        used=int(hard.unique().numel()))
