"""MADE speed: genlab's model against the straightforward implementation, side by side.

    python benchmarks/made_speed.py                  # 500 hidden units, batch 100, 2 x 5 s each
    python benchmarks/made_speed.py --hidden 2000 --batch 100 256 --seconds 10 --threads 1

Both have the same architecture on 28x28 binary images (ReLU hidden layer(s), direct
input-output connections) and the same mask. The straightforward one is MADE as commonly
written: nn.Linear layers whose weight is multiplied by a mask buffer in ``forward``, and a
sampler that runs one full forward pass per generated pixel. Training throughput is images/s
of full steps (forward, backward, Adam); FLOPs per step come from torch's FLOP counter, and
the share of the fp32 matmul peak is measured in the same run. genlab is measured with one
mask and with ``--masks`` masks (a new mask every step; sampling from the ensemble).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from speed import best_time, make_step, matmul_peak, parse_timing, rate  # noqa: E402

import genlab  # noqa: E402


class MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: Tensor, bias: bool = True) -> None:
        super().__init__(n_in, n_out, bias)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class PlainMADE(nn.Module):
    """The textbook MADE, with the masks of a genlab model's current mask."""

    def __init__(self, model: genlab.models.GenerativeModel) -> None:
        super().__init__()
        masks = model.masks_of(int(model.mask_index))
        sizes = [model.n_pixels] + [layer.out_features for layer in model.hidden_layers]
        self.hidden = nn.ModuleList(
            MaskedLinear(a, b, m) for a, b, m in zip(sizes, sizes[1:], masks, strict=False))
        self.out = MaskedLinear(sizes[-1], model.n_pixels, masks[len(sizes) - 1])
        self.direct = MaskedLinear(model.n_pixels, model.n_pixels, masks[-1], bias=False)
        self.order = model.order.clone()

    def forward(self, x: Tensor) -> Tensor:  # (B, D) in {0, 1} -> (B, D) logits
        h = inp = x * 2 - 1
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h) + self.direct(inp)

    def loss(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return F.binary_cross_entropy_with_logits(self(x), x, reduction="sum") / len(x)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        x = torch.zeros(n, self.order.numel())
        for i in self.order.tolist():
            x[:, i] = torch.bernoulli(torch.sigmoid(self(x)[:, i]))
        return x.view(n, 1, 28, 28)


def train_speed(loss_fn, params, batch: int, seconds: float, on_step=None,
                settings=None) -> tuple[float, float]:
    """(images/s, FLOPs per step) of full training steps on a fixed random binary batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.15), generator=g)
    step, flops = make_step(loss_fn, params, x, on_step, lr=1e-3, **(settings or {}))
    return rate(step, batch, seconds, min_steps=3), flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[500], help="layer widths")
    parser.add_argument("--batch", type=int, nargs="+", default=[100])
    parser.add_argument("--masks", type=int, default=8, help="masks of the ensemble rows")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per row (best kept)")
    args = parse_timing(parser, seconds=5.0)
    torch.manual_seed(0)
    ours = genlab.create("made", shape=(1, 28, 28), hidden=tuple(args.hidden), masks=1)
    plain = PlainMADE(ours)
    ensemble = genlab.create("made", shape=(1, 28, 28), hidden=tuple(args.hidden),
                             masks=args.masks, order_agnostic=True)
    peak = matmul_peak()
    print(f"MADE {args.hidden} hidden, direct connections, 28x28 binary; {platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, float32; "
          f"fp32 matmul peak (2048^3) {peak:.0f} GFLOP/s\n")
    print("| implementation | batch | train img/s | GFLOP/step | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("straightforward (mask multiplied in forward, Adam)", plain.loss,
         list(plain.parameters()), None, {}),
        ("genlab, 1 mask", lambda x: ours.loss({"x": x}, "model")[0], list(ours.parameters()),
         None, ours.optimizer_settings("model")),
        (f"genlab, {args.masks} masks (next mask every step)",
         lambda x: ensemble.loss({"x": x}, "model")[0], list(ensemble.parameters()),
         ensemble.on_step, ensemble.optimizer_settings("model")),
    ]
    for batch in args.batch:
        # Rounds alternate the implementations and keep each one's best: a neighbour's burst
        # on a shared machine then cannot favour whichever happened to run in a quiet moment.
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for label, loss_fn, params, on_step, settings in rows:
                r = train_speed(loss_fn, params, batch, args.seconds, on_step, settings)
                best[label] = max(best.get(label, r), r)
        for label, (ips, flops) in best.items():
            gflops = flops * ips / batch / 1e9
            print(f"| {label} | {batch} | {ips:.0f} | {flops / 1e9:.3f} | {gflops:.1f} | "
                  f"{100 * gflops / peak:.0f}% |", flush=True)
    ours.eval()
    ensemble.eval()
    slow = best_time(lambda: plain.sample(64), repeats=1)
    fast = best_time(lambda: ours.sample(64))
    mixed = best_time(lambda: ensemble.sample(64))
    print("\n| sampler (64 images) | seconds |\n|---|---|")
    print(f"| straightforward: one full forward pass per pixel | {slow:.3f} |")
    print(f"| genlab, incremental, 1 mask | {fast:.3f} ({slow / fast:.0f}x faster) |")
    print(f"| genlab, incremental, ensemble of {args.masks} masks (a mask per image) | "
          f"{mixed:.3f} |")
    print(f"\npeak re-measured at the end: {matmul_peak():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
