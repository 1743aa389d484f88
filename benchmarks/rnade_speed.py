"""RNADE speed: genlab's blockwise kernel against the straightforward per-pixel PyTorch loop.

    python benchmarks/rnade_speed.py                       # batch 64 and 128, 5 s each
    python benchmarks/rnade_speed.py --batch 64 --seconds 10 --hidden 500 --components 10

Both models: 28x28 8-bit images, dequantized, sigmoid hidden units with the rho_d rescaling,
K-component Gaussian mixture conditionals. One training step is forward, backward and an Adam
step on a fixed random batch; throughput is images per second of such steps. The loop is RNADE
as a newcomer writes it: one Python iteration per pixel, autograd through all of them, with the
per-pixel weights taken by ``unbind`` (indexing ``V[i]`` instead makes every pixel's backward
write a zero gradient of all of V: about 3 images/s); its sampler is the same loop. Also
prints the time to sample 64 images, the FLOPs of our training step (torch's FLOP counter: its
matmuls) and their share of the fp32 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from speed import best_time, make_step, matmul_peak, parse_timing, rate
from torch import Tensor, nn

import genlab


class LoopRNADE(nn.Module):
    """The textbook loop: per pixel h = sigmoid(rho_d a), mixture = h V_d + b_d, a += y_d W_d."""

    def __init__(self, d: int = 784, hidden: int = 500, components: int = 10) -> None:
        super().__init__()
        self.k = components
        self.W = nn.Parameter(torch.randn(hidden, d) * 0.01)
        self.c = nn.Parameter(torch.zeros(hidden))
        self.rho = nn.Parameter(torch.ones(d))
        self.V = nn.Parameter(torch.randn(d, hidden, 3 * components) * 0.01)
        self.b = nn.Parameter(torch.zeros(d, 3 * components))

    def loss(self, x: Tensor) -> Tensor:
        y = (torch.round(x.flatten(1) * 255) + torch.rand_like(x.flatten(1))) / 256  # (B, D)
        a = self.c.expand(y.shape[0], -1)
        total = 0.0
        Ws, rhos, Vs, bs = self.W.unbind(1), self.rho.unbind(0), self.V.unbind(0), self.b.unbind(0)
        for i in range(y.shape[1]):
            h = torch.sigmoid(rhos[i] * a)
            logits, mu, s = (h @ Vs[i] + bs[i]).chunk(3, dim=1)
            sigma = torch.exp(s) + 1e-4
            comp = torch.distributions.Normal(mu, sigma).log_prob(y[:, i:i + 1])
            total = total + torch.logsumexp(F.log_softmax(logits, 1) + comp, 1)
            a = a + y[:, i:i + 1] * Ws[i]
        return -(total - y.shape[1] * math.log(256)).mean()

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        a = self.c.expand(n, -1)
        out = []
        for i in range(self.V.shape[0]):
            h = torch.sigmoid(self.rho[i] * a)
            logits, mu, s = (h @ self.V[i] + self.b[i]).chunk(3, dim=1)
            comp = torch.multinomial(torch.softmax(logits, 1), 1)
            y = mu.gather(1, comp) + (torch.exp(s.gather(1, comp)) + 1e-4) * torch.randn(n, 1)
            out.append(y)
            a = a + y * self.W[:, i]
        y = torch.cat(out, 1)
        return (torch.floor(y * 256).clamp(0, 255) / 255).view(n, 1, 28, 28)


def throughput(loss_fn, params, batch: int, seconds: float) -> tuple[float, float]:
    """(images per second, FLOPs per step) of full training steps (forward, backward, Adam)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 1, 28, 28), generator=g).float() / 255
    step, flops = make_step(loss_fn, params, x, lr=1e-3)
    return rate(step, batch, seconds), flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--components", type=int, default=10)
    args = parse_timing(parser, seconds=5.0)
    torch.manual_seed(0)
    fast = genlab.create("rnade", shape=(1, 28, 28), hidden=args.hidden,
                         components=args.components)
    loop = LoopRNADE(784, args.hidden, args.components)

    def fast_loss(x: Tensor) -> Tensor:
        return fast.loss({"x": x}, "model")[0]

    peak = matmul_peak()
    print(f"RNADE, H={args.hidden}, K={args.components}, 28x28, {torch.get_num_threads()} "
          f"threads, float32; fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"{'batch':>6} {'loop img/s':>11} {'genlab img/s':>13} {'speed-up':>9} "
          f"{'GFLOP/step':>11} {'GFLOP/s':>8} {'of peak':>8}")
    for batch in args.batch:
        slow, _ = throughput(loop.loss, loop.parameters(), batch, args.seconds)
        quick, flops = throughput(fast_loss, fast.parameters(), batch, args.seconds)
        gflop = flops / 1e9
        achieved = gflop * quick / batch  # GFLOP/s
        print(f"{batch:>6} {slow:>11.0f} {quick:>13.0f} {quick / slow:>8.1f}x "
              f"{gflop:>11.2f} {achieved:>8.1f} {100 * achieved / peak:>7.1f}%")
    fast.eval()
    ours, theirs = best_time(lambda: fast.sample(64)), best_time(lambda: loop.sample(64))
    print(f"sampling 64 images: loop {theirs * 1e3:.0f} ms, genlab {ours * 1e3:.0f} ms "
          f"({theirs / ours:.1f}x)")
    print(f"peak re-measured at the end: {matmul_peak():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
