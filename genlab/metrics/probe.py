"""Linear probes: how much label information a model's ``encode`` features hold, linearly.

The probe is multinomial logistic regression on standardized features of the training split
(full-batch L-BFGS), its weight decay chosen on the validation split from a small grid, its
accuracy reported on the test split. Beside it, as in the representation-learning literature,
the same probe on two controls, so that a number can be read at all: the raw pixels (about 92%
on MNIST, 84% on Fashion-MNIST) and the same encoder with random weights (a freshly initialised
model of the same config: what the architecture gives before any training). Each row also has
the k-nearest-neighbour accuracy (k = 10, cosine similarity on the same standardized features),
which needs no training at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.data import Dataset, Loader

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)


def standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Features (N, d) centred and scaled by the training split's mean and std; constant
    features (e.g. MNIST's border pixels) become 0 rather than dividing by zero."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple((z - mean) / std for z in (train, *others))


def fit_logistic(z: Tensor, y: Tensor, n_classes: int, weight_decay: float,
                 max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, full batch by L-BFGS: weights (d, K), biases (K,)
    minimising mean cross-entropy + weight_decay / 2 * ||W||^2 (biases not decayed)."""
    z = z.double()
    w = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + weight_decay / 2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may run under no_grad (the CLI, eval code)
        opt.step(closure)
    return w.detach(), b.detach()


def accuracy(z: Tensor, y: Tensor, w: Tensor, b: Tensor) -> float:
    return float(((z.double() @ w + b).argmax(1) == y).double().mean())


def linear_probe(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                 test: tuple[Tensor, Tensor], decays: Sequence[float] = WEIGHT_DECAYS
                 ) -> tuple[float, float]:
    """(test accuracy, chosen weight decay): features (N, d) and labels (N,) per split,
    standardized on the training split, the decay with the best validation accuracy (the
    smallest on ties)."""
    (z_tr, y_tr), (z_va, y_va), (z_te, y_te) = train, val, test
    z_tr, z_va, z_te = standardize(z_tr, z_va, z_te)
    k = int(max(y_tr.max(), y_va.max(), y_te.max())) + 1
    best = max((accuracy(z_va, y_va, *fit_logistic(z_tr, y_tr, k, d)), -d) for d in decays)
    decay = -best[1]
    return accuracy(z_te, y_te, *fit_logistic(z_tr, y_tr, k, decay)), decay


def knn_accuracy(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor,
                 k: int = 10, chunk: int = 1000) -> float:
    """Accuracy of a k-nearest-neighbour vote by cosine similarity; a tied vote goes to the
    class whose tied neighbours are the more similar in sum."""
    if k > len(z_train):
        raise ValueError(f"k={k} neighbours but only {len(z_train)} training points")
    a, b = F.normalize(z_train.float(), dim=1), F.normalize(z_test.float(), dim=1)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    correct = 0
    for s in range(0, len(b), chunk):  # (chunk, N) similarities at a time
        sim, idx = (b[s:s + chunk] @ a.t()).topk(k, dim=1)  # (c, k)
        votes = torch.zeros(len(idx), n_classes, dtype=torch.float64)
        # one vote per neighbour, plus a tie-breaking share of its similarity (< 1 in sum)
        votes.scatter_add_(1, y_train[idx], 1 + sim.double() / (2 * k))
        correct += int((votes.argmax(1) == y_test[s:s + chunk]).sum())
    return correct / len(b)


@torch.no_grad()
def features(model: Any, data: Dataset, batch_size: int = 500, method: str = "encode") -> Tensor:
    """``model.encode`` (or another ``method`` of images, e.g. ``cluster``) of every image
    (N, d) on the CPU, in the data's order."""
    model.eval()
    apply = getattr(model, method)
    return torch.cat([apply(b["x"].to(model.device)).cpu().float()
                      for b in Loader(data, batch_size, shuffle=False, drop_last=False,
                                      seed=12345)])


@dataclass
class ProbeResult:
    features: str  # e.g. "nade encode", "raw pixels", "nade encode, random weights"
    dim: int
    accuracy: float  # linear probe, test split
    weight_decay: float  # chosen on the validation split
    knn_accuracy: float  # k = 10, cosine


@dataclass
class ProbeReport:
    model: str
    data: str  # Dataset.describe() of the test split
    n_train: int
    rows: list[ProbeResult] = field(default_factory=list)

    def __str__(self) -> str:
        w = max(len(r.features) for r in self.rows)
        lines = [f"linear probe of {self.model} on {self.data} (trained on {self.n_train} "
                 "images, weight decay chosen on val)",
                 f"{'features':<{w}}  {'dim':>5}  linear   10-NN   weight decay"]
        lines += [f"{r.features:<{w}}  {r.dim:>5}  {100 * r.accuracy:5.2f}%  "
                  f"{100 * r.knn_accuracy:5.2f}%  {r.weight_decay:g}" for r in self.rows]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _labels(data: Dataset) -> Tensor:
    if data.y is None:
        raise ValueError(f"a probe needs labels: {data.describe()} has none")
    return data.y.long()


def probe(model: Any, train: Dataset, val: Dataset, test: Dataset, controls: bool = True,
          decays: Sequence[float] = WEIGHT_DECAYS, seed: int = 0) -> ProbeReport:
    """The linear probe and 10-NN accuracy of ``model.encode`` features, and with
    ``controls`` the same for the raw pixels and for the encoder with random weights
    (``type(model)(shape, config)`` initialised from ``seed``)."""
    from genlab.models.base import require

    require(model, "encode")
    labels = [_labels(d) for d in (train, val, test)]
    sets: list[tuple[str, list[Tensor]]] = [
        (f"{model.name} encode", [features(model, d) for d in (train, val, test)])]
    if controls:
        sets.append(("raw pixels", [d.x.flatten(1) for d in (train, val, test)]))
        torch.manual_seed(seed)
        fresh = type(model)(model.shape, model.config).to(model.device)
        sets.append((f"{model.name} encode, random weights",
                     [features(fresh, d) for d in (train, val, test)]))
    rows = []
    for name, (z_tr, z_va, z_te) in sets:
        splits = list(zip((z_tr, z_va, z_te), labels, strict=True))
        acc, decay = linear_probe(*splits, decays=decays)
        s_tr, s_te = standardize(z_tr, z_te)
        knn = knn_accuracy(s_tr, labels[0], s_te, labels[2])
        rows.append(ProbeResult(name, z_tr.shape[1], acc, decay, knn))
    return ProbeReport(model.name, test.describe(), len(train), rows)
