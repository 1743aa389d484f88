"""What judges the conditional models: genlab-digits32-classifier, a feature network trained
(``genlab features train --data digits32``) on every 3x32x32 digit rendering genlab makes —
MNIST with attributes, white digits on colour, typeset digits, MNIST in RGB — with a head for
the digit and one per rendered attribute (colour, background, thickness, rotation, scale,
inversion; ``genlab.data.attributes``). Its test accuracies are in its shipped JSON
(``classifier().recorded``): the measures below are only as good as they are.

- ``predict(x)``: {"digit": (B,), "colour": (B,), ...} argmax indices, in batches;
- ``agreement(pred, want)``: the share of rows where a prediction equals what was asked for
  (label preservation, attribute accuracy, the captioned digit), rows with ``want`` = -100
  left out;
- ``classifier().features`` (128-d) is the feature space of FID on these sources:
  ``genlab eval RUN`` picks it for any run trained on one of them.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from genlab.metrics.features import FeatureNet, load_feature_net

NAME = "genlab-digits32-classifier"


@functools.lru_cache(maxsize=2)
def classifier(device: str = "cpu") -> FeatureNet:
    """The shipped classifier, in eval mode (kept: loading it takes a moment)."""
    return load_feature_net("digits32", device)


@torch.no_grad()
def features(x: Tensor, batch_size: int = 500, device: str = "cpu") -> Tensor:
    """Images (B, 3, 32, 32) in [0, 1] -> the classifier's features (B, dim), float32 on the
    CPU, in batches: what the FIDs of the conditional models compare."""
    net = classifier(device)
    return torch.cat([net.features(x[i : i + batch_size].to(net.device)).float().cpu()
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(x: Tensor, batch_size: int = 500, device: str = "cpu") -> dict[str, Tensor]:
    """Images (B, 3, 32, 32) in [0, 1] -> {"digit": (B,), attribute name: (B,)} indices."""
    net = classifier(device)
    parts: list[dict[str, Tensor]] = []
    for i in range(0, len(x), batch_size):
        out = net.predict(x[i : i + batch_size].to(net.device))
        out["digit"] = out.pop("class")
        parts.append({k: v.cpu() for k, v in out.items()})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def agreement(pred: Tensor, want: Tensor) -> float:
    """Share of rows with ``pred == want`` among those whose ``want`` is not -100."""
    known = want != -100
    if not bool(known.any()):
        raise ValueError("agreement of nothing: every target is -100")
    return float((pred[known] == want[known]).float().mean())


__all__ = ["NAME", "agreement", "classifier", "predict"]
