"""Measures of a StarGAN run on mnist-attrs' test split: for each translated attribute, the
attribute accuracy of translations to every value (the classifier's prediction equals the
requested value), the digit preservation (the predicted digit equals the source's), and the FID
of all translations against the test images, all with the shipped conditional classifier
(genlab.metrics.conditional.classifier).

    python benchmarks/stargan_eval.py RUN [--limit 1000]
"""

from __future__ import annotations

import argparse

import torch

import genlab
from genlab.data import load as load_data
from genlab.models.stargan import attribute_accuracy, digit_preservation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    from genlab.metrics.conditional import classifier  # the judge shipped with genlab

    model = genlab.load(args.run)
    data = load_data("mnist-attrs", split="test", limit=args.limit)
    x, attrs, digits = data.x, data.fields["attrs"], data.fields["y"]
    judge = classifier()
    translated = []
    for col, name in zip(model.columns, model.config.attributes, strict=True):
        hits, kept = [], []
        for v in range(model.sizes[model.columns.index(col)]):
            target = attrs.clone()
            target[:, col] = v
            y = torch.cat([model.translate(x[i:i + 250], {"attrs": target[i:i + 250]})
                           for i in range(0, len(x), 250)])
            pred = judge.predict(y)
            hits.append(attribute_accuracy(pred[name], target[:, col]))
            kept.append(digit_preservation(pred["digit"], digits))
            translated.append(y)
        print(f"{name}: attribute accuracy {sum(hits) / len(hits):.3f}, "
              f"digit preservation {sum(kept) / len(kept):.3f}")
    from genlab.metrics.samples import fid

    print(f"FID of translations vs test images: {fid(torch.cat(translated), data, judge):.2f}")


if __name__ == "__main__":
    main()
