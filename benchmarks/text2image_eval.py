"""Measures of a text2image run on the mnist-captions test split.

    python benchmarks/text2image_eval.py RUN [--n 1000]

One sample per test caption (the first ``n``; a quarter of them are held-out (digit, colour)
pairs, ``captions.HELDOUT``), read by the shipped conditional classifier
(``genlab.metrics.conditional.classifier()``): the accuracy at recognising the captioned digit,
colour and (where the caption names it) thickness, on held-out and on seen captions; the
classifier's own accuracy on the real test images for the same rows, as the ceiling; and the
FID in the classifier's feature space between the samples and the real test images. Last, how
well the run's own discriminator reads the digit: the share of real test images it scores
higher with their caption than with the caption's digit changed (``change_digit``; 0.5: it
does not look at the digit).
"""

from __future__ import annotations

import argparse
import time

import torch

import genlab
from genlab.data import load
from genlab.data.captions import tokenize
from genlab.metrics.translation import frechet_distance
from genlab.models.text2image import caption_accuracy, caption_targets, change_digit


def batched(fn, x: torch.Tensor, size: int = 250):
    outs = [fn(x[i:i + size]) for i in range(0, len(x), size)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from genlab.metrics.conditional import features, predict

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = genlab.load(args.run).eval()
    data = load("mnist-captions", split="test")
    data = data.select(torch.arange(min(args.n, len(data))))
    texts = list(data.caption)
    with torch.no_grad():
        x = batched(lambda i: model.sample(len(i), cond={"text": [texts[j] for j in i]}),
                    torch.arange(len(texts)))
        want = caption_targets(data)
        got = caption_accuracy(predict(x), want, data.heldout)
        ceiling = caption_accuracy(predict(data.x), want, data.heldout)
        fid = frechet_distance(features(data.x), features(x))
        ids = tokenize(texts).to(model.device)
        edited, named = change_digit(ids, torch.Generator().manual_seed(args.seed))
        fmap = batched(lambda i: model.discriminator.image_map(data.x[i].to(model.device) * 2 - 1),
                       torch.arange(len(texts)))
        right = model.discriminator.judge(fmap, model.text_encoder(ids))
        wrong = model.discriminator.judge(fmap, model.text_encoder(edited))
        reads = float((right > wrong)[named].float().mean())
    print(f"text2image {args.run}: {len(x)} samples, one per mnist-captions test caption "
          f"({int(data.heldout.sum())} held-out)")
    for key in got:
        print(f"  {key:20s} {got[key]:.3f}   (real images: {ceiling[key]:.3f})")
    print(f"  FID (classifier features, vs test images) {fid:.2f}")
    print(f"  D reads the digit (right > digit-changed caption, real images) {reads:.3f}")
    print(f"  {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
