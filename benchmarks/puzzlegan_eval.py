"""The measures of a PuzzleGAN run on the mnist-patches test split:

    python benchmarks/puzzlegan_eval.py RUN [--limit 1000]

One completion per test image from its 1-3 key patches (``complete(patches, valid)``):

- mask IoU against the true boxes (threshold 0.5, mean over the used slots), overall and by
  the number of patches given; for reference, the IoU of putting every patch in the image's
  centre box, what a model that learnt nothing about where parts go would score;
- L1 on the patch regions (generated vs source inside the true boxes, [0, 1] units);
- digit agreement: the share of completions in which genlab-digits32-classifier reads the
  digit it reads in the source image (and the completions' accuracy against the true labels,
  beside the classifier's own accuracy on the source images, the ceiling);
- FID between the completions and the test images in the classifier's 128-d features; for
  reference, the FID of the model's samples without any patch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import genlab
from genlab.data import load
from genlab.data.patches import PATCH
from genlab.metrics.conditional import features, predict
from genlab.metrics.translation import frechet_distance
from genlab.models.puzzlegan import mask_iou, puzzle_measures


def centre_boxes(truth: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) masks all set to the PATCH x PATCH box at the image's centre."""
    n, k, h, w = truth.shape
    out = torch.zeros(n, k, h, w)
    t, left = (h - PATCH) // 2, (w - PATCH) // 2
    out[:, :, t:t + PATCH, left:left + PATCH] = 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load("mnist-patches", "test", limit=args.limit)
    f = data.fields
    truth, valid = f["masks"], f["patch_valid"].bool()
    model = genlab.load(args.run).eval()
    torch.manual_seed(args.seed)
    images, masks = [], []
    for i in range(0, len(data.x), 250):
        x, m = model.complete(f["patches"][i : i + 250], valid[i : i + 250])
        images.append(x.float().cpu())
        masks.append(m.float().cpu())
    generated, predicted = torch.cat(images), torch.cat(masks)
    free = torch.cat([model.sample(min(250, len(data.x) - i)).float().cpu()
                      for i in range(0, len(data.x), 250)])
    digit_gen, digit_src = predict(generated)["digit"], predict(data.x)["digit"]
    out = puzzle_measures(generated, predicted, data.x, truth, valid, digit_gen, digit_src)
    count = valid.sum(1)
    for c in (1, 2, 3):
        rows = count == c
        if bool(rows.any()):
            out[f"mask_iou {c} patches"] = mask_iou(predicted[rows], truth[rows], valid[rows])
    out["mask_iou centre box (reference)"] = mask_iou(centre_boxes(truth), truth, valid)
    out["digit accuracy of completions"] = float((digit_gen == data.y).double().mean())
    out["classifier accuracy on sources"] = float((digit_src == data.y).double().mean())
    real = features(data.x)
    out["fid completions vs test"] = frechet_distance(real, features(generated))
    out["fid samples without patches vs test"] = frechet_distance(real, features(free))
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"run": args.run, "images": len(data.x), **out}, indent=1))


if __name__ == "__main__":
    main()
