"""NADE training throughput: genlab's fused kernel against the straightforward PyTorch loop.

    python benchmarks/nade_speed.py                  # batch 128 and 512, 5 s each
    python benchmarks/nade_speed.py --batch 64 --seconds 10 --threads 1

Both models have 500 hidden units on 28x28 binary images. One training step is forward,
backward and an Adam step on a fixed random binary batch; throughput is images per second of
such steps. The loop is NADE as a newcomer writes it (as in pytorch-generative): one Python
iteration per pixel, autograd through all of them. Also prints the time to sample 64 images.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from speed import best_time, make_step, parse_timing, rate
from torch import Tensor, nn

import genlab


class LoopNADE(nn.Module):
    """The textbook loop: per pixel h = sigmoid(a), p = sigmoid(h V_d + b_d), a += x_d W_d."""

    def __init__(self, d: int = 784, hidden: int = 500) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(hidden, d) * 0.01)
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(d, hidden) * 0.01)
        self.b = nn.Parameter(torch.zeros(d))

    def loss(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (B, D)
        a = self.c.expand(x.shape[0], -1)
        probs = []
        for i in range(x.shape[1]):
            h = torch.sigmoid(a)
            probs.append(torch.sigmoid(h @ self.V[i:i + 1].t() + self.b[i:i + 1]))
            a = x[:, i:i + 1] @ self.W[:, i:i + 1].t() + a
        p = torch.cat(probs, 1)
        return F.binary_cross_entropy(p, x, reduction="none").sum(1).mean()


def throughput(loss_fn, params, batch: int, seconds: float) -> float:
    """Images per second of full training steps (forward, backward, Adam)."""
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.15), generator=g)
    step, _ = make_step(loss_fn, params, x, lr=1e-3)
    return rate(step, batch, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    args = parse_timing(parser, seconds=5.0)
    torch.manual_seed(0)
    fast = genlab.create("nade", shape=(1, 28, 28), hidden=500)
    loop = LoopNADE()

    def fast_loss(x: Tensor) -> Tensor:
        return fast.loss({"x": x}, "model")[0]

    print(f"NADE, 500 hidden units, 28x28, {torch.get_num_threads()} threads, float32")
    print(f"{'batch':>6} {'loop img/s':>11} {'genlab img/s':>13} {'speed-up':>9}")
    for batch in args.batch:
        slow = throughput(loop.loss, loop.parameters(), batch, args.seconds)
        quick = throughput(fast_loss, fast.parameters(), batch, args.seconds)
        print(f"{batch:>6} {slow:>11.0f} {quick:>13.0f} {quick / slow:>8.1f}x")
    print(f"sampling 64 images: {best_time(lambda: fast.sample(64), repeats=5) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
