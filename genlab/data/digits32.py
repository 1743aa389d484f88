"""``digits32``: every 3x32x32 digit rendering genlab makes, in one labelled source, to train
the classifier that judges the conditional models (``genlab.metrics.features``, shipped as
genlab-digits32-classifier).

Per split, four equal parts: MNIST drawn with attributes (``mnist-attrs``: digit and the six
attribute labels), white digits on coloured backgrounds (``mnist-colour``), typeset digits
(``typeset``) and plain MNIST repeated over RGB. The classifier reads the digit in any of them
(what label preservation asks of a translation into each domain) and the attributes where it
learned them; the ``attrs`` of the parts that have none are IGNORE (-100, the value
``F.cross_entropy`` skips).
"""

from __future__ import annotations

import torch

from genlab.data.attributes import ATTRIBUTE_NAMES, attributed_source
from genlab.data.dataset import Dataset, concat_fields
from genlab.data.domains import SPLIT_SIZES, domain
from genlab.data.source import Source, bounds

IGNORE = -100
DOMAIN_PARTS = ("mnist-colour", "typeset", "mnist")


def digits32_source(seed: int, limit: int | None) -> Source:
    from genlab.data.mnist import mnist_source

    attributed = attributed_source(mnist_source(), "mnist-attrs", seed, limit)
    pieces = []
    for split, size in SPLIT_SIZES.items():
        n = min(size, limit or size)
        rows = attributed.splits[split]  # a slice or an index tensor: both index tensors
        xs, ys = [attributed.data.x[rows]], [attributed.data.y[rows]]
        attrs = [attributed.data.fields["attrs"][rows]]
        for name in DOMAIN_PARTS:
            x, y = domain(name, split, n, seed, second=name == "mnist-colour")
            xs.append(x)
            ys.append(y)
            attrs.append(torch.full((len(x), len(ATTRIBUTE_NAMES)), IGNORE, dtype=torch.long))
        pieces.append({"x": torch.cat(xs), "y": torch.cat(ys), "attrs": torch.cat(attrs)})
    whole = concat_fields(pieces)
    data = Dataset(whole.pop("x"), whole.pop("y"), "digits32",
                   classes=[str(i) for i in range(10)], fields=whole)
    return Source(data=data, splits=bounds(*(len(p["x"]) for p in pieces)))
