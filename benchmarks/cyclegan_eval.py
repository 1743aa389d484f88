"""The translation measures of a CycleGAN run, both directions, on its data's test split:

    python benchmarks/cyclegan_eval.py RUN [--limit 1000] [--data SOURCE]

label preservation (genlab-digits32-classifier still finds the source digit after the
translation), cycle error (mean |x - G_ba(G_ab(x))| per sub-pixel) and FID in the target domain
(the classifier's 128-d features of translations against real target-domain test images).
"""

from __future__ import annotations

import argparse
import json

import torch

import genlab
from genlab.data import load
from genlab.metrics.conditional import features, predict
from genlab.metrics.translation import frechet_distance, translation_measures
from genlab.models.base import read_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data", help="a two-domain source (default: the run's)")
    p.add_argument("--limit", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(1)
    source = args.data or read_config(args.run)["train"]["data"]["source"]
    data = load(source, "test", limit=args.limit)
    model = genlab.load(args.run)
    torch.manual_seed(0)
    out = translation_measures(model, data.x, data.fields["x_b"], data.y, data.fields["y_b"],
                               predict=lambda t: predict(t)["digit"], features=features)
    # References: FID between the two real domains (what no translation at all scores) and
    # the classifier's accuracy on the untranslated images (the ceiling of preservation).
    out["fid real a vs real b"] = frechet_distance(features(data.x), features(data.fields["x_b"]))
    out["classifier accuracy on a"] = float((predict(data.x)["digit"] == data.y).double().mean())
    out["classifier accuracy on b"] = float(
        (predict(data.fields["x_b"])["digit"] == data.fields["y_b"]).double().mean())
    print(json.dumps({"run": args.run, "data": source, "images": len(data.x), **out}, indent=1))


if __name__ == "__main__":
    main()
