"""Can text2image's discriminator learn to read the digit? D alone, no generator.

Trains only D's side of text2image (the text encoder and D's image network, the `cpu`
preset's sizes) on real mnist-captions training images, with the GAN-CLS loss for real
images: right caption positive, wrong caption negative, where a share of the wrong captions
is the right one with only its digit changed (``change_digit``). Every ``--every`` steps it
reports, on 500 test images, how often D scores the right caption above the digit-edited one
(chance 0.5). Beside it, the same image network with a 10-way linear head trained as a digit
classifier (cross-entropy on the labels) shows how fast those layers can learn the digit when
told it directly. ``--contrastive`` replaces the binary loss by a contrastive one on the
projection head (D's pooled features against every caption of the batch, cross-entropy both
ways): the batch's other captions as negatives. ``--ten-way`` replaces it by a 10-way
softmax over the caption rewritten with each digit (the true one the target; held-out
(digit, colour) pairs left out): a classifier's signal in the text's own terms.

    python benchmarks/text2image_matching.py [--steps 1000] [--lr 2e-4] [--share 1.0]
                                             [--projection] [--contrastive | --ten-way]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from genlab.data import load
from genlab.data.captions import tokenize
from genlab.models.text2image import (
    Text2Image,
    Text2ImageConfig,
    change_digit,
    every_digit,
    shifted,
)
from genlab.nn import ConvDiscriminator

PRESET = {"width": 32, "words": 64, "text": 128, "proj": 64}  # text2image's cpu preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--share", type=float, default=1.0,
                        help="share of wrong captions that are digit-edited (the rest shifted)")
    parser.add_argument("--projection", action="store_true")
    parser.add_argument("--contrastive", action="store_true")
    parser.add_argument("--ten-way", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    train, test = load("mnist-captions", split="train"), load("mnist-captions", split="test")
    ids = tokenize(list(train.caption))  # (N, L)
    test_x, test_ids = test.x[:500] * 2 - 1, tokenize(list(test.caption[:500]))
    edited_test, named_test = change_digit(test_ids, torch.Generator().manual_seed(1))

    projection = args.projection or args.contrastive
    model = Text2Image((3, 32, 32), Text2ImageConfig(**PRESET, projection=projection))
    d, text = model.discriminator, model.text_encoder
    if args.contrastive:  # the joint path is not trained then: judge by the projection alone
        torch.nn.init.zeros_(d.joint[-1].weight)
        torch.nn.init.zeros_(d.joint[-1].bias)
    classifier = ConvDiscriminator((3, 32, 32), PRESET["width"], outputs=10)
    betas = (0.5, 0.999)  # the adversarial players' Adam
    opt_d = torch.optim.Adam([*text.parameters(), *d.parameters()], args.lr, betas=betas)
    opt_c = torch.optim.Adam(classifier.parameters(), args.lr, betas=betas)
    b = args.batch_size
    loss_name = ("ten-way" if args.ten_way else "contrastive" if args.contrastive
                 else f"GAN-CLS, digit-edited share {args.share}")
    print(f"D alone on mnist-captions, batch {b}, lr {args.lr}, {loss_name}, "
          f"projection {projection}")
    print("step   D: right > digit-edited (test)   classifier: digit accuracy (test)")
    for step in range(1, args.steps + 1):
        i = torch.randint(0, len(train), (b,))
        x, t_ids = train.x[i] * 2 - 1, ids[i]
        t = text(t_ids)  # (B, text)
        fmap = d.image_map(x)  # (B, F, 4, 4)
        if args.ten_way:  # (B, 10) scores of the caption with each digit
            versions, allowed, digit, _ = every_digit(t_ids)  # every caption names a digit
            scores = torch.stack([d.judge(fmap, text(v)) for v in versions], 1)  # (B, 10)
            loss = F.cross_entropy(scores.masked_fill(~allowed, float("-inf")), digit)
        elif args.contrastive:  # (B images, B texts) inner products; the diagonal is right
            scores = fmap[:, :d.project.out_features].sum((2, 3)) @ d.project(t).T
            right = torch.arange(b)
            loss = F.cross_entropy(scores, right) + F.cross_entropy(scores.T, right)
        else:
            edited, named = change_digit(t_ids)
            use = named & (torch.rand(b) < args.share)
            t_wrong = torch.where(use[:, None], text(edited), t[shifted(b)])
            loss = (F.softplus(-d.judge(fmap, t)).mean()
                    + F.softplus(d.judge(fmap, t_wrong)).mean())
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        loss_c = F.cross_entropy(classifier(x), train.y[i])
        opt_c.zero_grad()
        loss_c.backward()
        opt_c.step()
        if step % args.every == 0:
            model.eval()
            classifier.eval()
            with torch.no_grad():
                fm = d.image_map(test_x)
                right = d.judge(fm, text(test_ids))
                wrong = d.judge(fm, text(edited_test))
                reads = float((right > wrong)[named_test].float().mean())
                acc = float((classifier(test_x).argmax(1) == test.y[:500]).float().mean())
            model.train()
            classifier.train()
            print(f"{step:5d}   {reads:.3f}                            {acc:.3f}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
