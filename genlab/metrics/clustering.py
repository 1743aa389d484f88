"""Unsupervised classification: how well discovered clusters (InfoGAN's categorical code, a
mixture's component...) match the labels once each cluster is named after one class.

The clusters carry no names, so the error is taken after the best one-to-one matching of
clusters to classes (the number of images whose cluster is matched to their own class is
maximal), found exactly by the Hungarian method (Kuhn 1955, Munkres 1957), in O(n^2 m).
"""

from __future__ import annotations

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
