"""Measures of a StarGAN run on mnist-attrs' test split: for each translated attribute, the
attribute accuracy of translations to every value (the classifier's prediction equals the
requested value), the digit preservation (the predicted digit equals the source's), and the FID
of all translations against the test images, all with the shipped conditional classifier
(genlab.metrics.conditional, genlab-digits32-classifier). Beside each, what the identity (no
translation at all) scores: the floor of attribute accuracy, the ceiling of preservation.

    python benchmarks/stargan_eval.py RUN [--limit 1000]
"""

from __future__ import annotations

import argparse
import json

import torch

import genlab
from genlab.data import load as load_data
from genlab.metrics.conditional import features, predict
from genlab.metrics.translation import frechet_distance
from genlab.models.stargan import attribute_accuracy, digit_preservation


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = genlab.load(args.run).eval()
    data = load_data("mnist-attrs", split="test", limit=args.limit)
    x, attrs, digits = data.x, data.fields["attrs"], data.y
    real = predict(x)
    out: dict[str, float] = {"classifier digit accuracy on real": digit_preservation(
        real["digit"], digits)}
    translated = []
    for col, name in zip(model.columns, model.config.attributes, strict=True):
        hits, kept, floor = [], [], []
        for v in range(model.sizes[model.columns.index(col)]):
            target = attrs.clone()
            target[:, col] = v
            y = torch.cat([model.translate(x[i:i + 250], {"attrs": target[i:i + 250]})
                           for i in range(0, len(x), 250)])
            pred = predict(y)
            hits.append(attribute_accuracy(pred[name], target[:, col]))
            kept.append(digit_preservation(pred["digit"], digits))
            floor.append(attribute_accuracy(real[name], target[:, col]))
            translated.append(y)
        out[f"{name} attribute accuracy"] = sum(hits) / len(hits)
        out[f"{name} attribute accuracy of the identity"] = sum(floor) / len(floor)
        out[f"{name} digit preservation"] = sum(kept) / len(kept)
    out["fid translations vs test"] = frechet_distance(features(torch.cat(translated)),
                                                       features(x))
    print(json.dumps({"run": args.run, "images": len(x), **out}, indent=1))


if __name__ == "__main__":
    main()
