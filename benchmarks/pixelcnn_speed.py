"""PixelCNN and Gated PixelCNN: training throughput against the straightforward PyTorch code, and
cached sampling against the naive sampler, in one run.

    python benchmarks/pixelcnn_speed.py                       # cpu presets, MNIST shape
    python benchmarks/pixelcnn_speed.py --seconds 5 --naive-rows 4 --threads 1

For each model at its `cpu` preset on binary 1x28x28 images:
- training images/s (forward, backward, Adam step at the preset's batch size) of genlab's model
  and of the same architecture written the way a newcomer would: nn.Conv2d layers with full
  k x k kernels (1 x k for the horizontal stack) and the mask multiplied into the weight in
  forward, the usual two-stack code for the gated model. The two alternate in ``--rounds``
  windows (the median window counts), so a shared machine's drifting load hits both alike;
- FLOPs of one training step from torch.utils.flop_counter, GFLOP/s and the share of the fp32
  matmul peak measured in the same run (benchmarks/speed.py's ``matmul_peak``);
- seconds to sample 64 images with the cached sampler and with ``reference_sample`` (one full
  forward pass per sub-pixel). ``--naive-rows R`` times only the first R of 28 rows of the naive
  sampler and scales by 28 / R (every step of it is the same full forward pass); the table says
  so. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from speed import machine_line, make_step, matmul_peak, parse_timing, rate
from torch import Tensor, nn

import genlab

# ---- the newcomer's implementations (binary, one colour channel) ---------------------------------


class FullMaskedConv(nn.Conv2d):
    """k x k (or kh x kw) convolution; the mask is multiplied into the weight on every call."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], mask: Tensor) -> None:
        super().__init__(cin, cout, kernel, padding=(kernel[0] // 2, kernel[1] // 2))
        self.register_buffer("mask", mask.expand_as(self.weight).clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def pixelcnn_mask(k: int, kind: str) -> Tensor:
    m = torch.ones(k, k)
    m[k // 2, k // 2 + (kind == "B"):] = 0
    m[k // 2 + 1:] = 0
    return m


class NewcomerPixelCNN(nn.Module):
    def __init__(self, h: int, blocks: int, kernel: int = 7, block_kernel: int = 3) -> None:
        super().__init__()
        self.conv_in = FullMaskedConv(1, 2 * h, (kernel, kernel), pixelcnn_mask(kernel, "A"))
        self.blocks = nn.ModuleList(nn.ModuleList([
            nn.Conv2d(2 * h, h, 1),
            FullMaskedConv(h, h, (block_kernel, block_kernel), pixelcnn_mask(block_kernel, "B")),
            nn.Conv2d(h, 2 * h, 1)]) for _ in range(blocks))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * h, 2 * h, 1), nn.ReLU(),
                                 nn.Conv2d(2 * h, 1, 1))

    def loss(self, x: Tensor) -> Tensor:
        t = self.conv_in(2 * x - 1)
        for down, mid, up in self.blocks:
            t = t + up(F.relu(mid(F.relu(down(F.relu(t))))))
        logits = self.out(t)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3)).mean()


class NewcomerGatedLayer(nn.Module):
    def __init__(self, cin: int, h: int, k: int, first: bool) -> None:
        super().__init__()
        vmask = torch.ones(k, k)
        vmask[k // 2 + 1:] = 0  # rows below the centre
        hmask = torch.ones(1, k)
        hmask[0, k // 2 + (not first):] = 0  # right of the pixel (and the pixel, first layer)
        self.v = FullMaskedConv(cin, 2 * h, (k, k), vmask)
        self.h = FullMaskedConv(cin, 2 * h, (1, k), hmask)
        self.v2h = nn.Conv2d(2 * h, 2 * h, 1)
        self.res = nn.Conv2d(h, h, 1)
        self.first, self.hid = first, h

    def forward(self, v: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        vp = self.v(v)
        shifted = F.pad(vp, (0, 0, 1, 0))[:, :, :-1]
        hp = self.h(x) + self.v2h(shifted)
        h = self.hid
        v = torch.tanh(vp[:, :h]) * torch.sigmoid(vp[:, h:])
        out = self.res(torch.tanh(hp[:, :h]) * torch.sigmoid(hp[:, h:]))
        return v, out if self.first else x + out


class NewcomerGated(nn.Module):
    def __init__(self, h: int, layers: int, kernel: int = 3, first_kernel: int = 7) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            NewcomerGatedLayer(1 if i == 0 else h, h, first_kernel if i == 0 else kernel, i == 0)
            for i in range(layers))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(h, 2 * h, 1), nn.ReLU(),
                                 nn.Conv2d(2 * h, 1, 1))

    def loss(self, x: Tensor) -> Tensor:
        v = t = 2 * x - 1
        for layer in self.layers:
            v, t = layer(v, t)
        logits = self.out(t)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3)).mean()


# ---- measurements ----------------------------------------------------------------------------


def interleaved_rates(steps: dict, batch: int, seconds: float, rounds: int) -> dict:
    """Images/s of each step closure: ``rounds`` alternating windows of seconds / rounds each,
    so drifting load on a shared machine hits all of them alike; the median window counts."""
    rates: dict = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            rates[k].append(rate(step, batch, seconds / rounds, min_steps=1))
    return {k: sorted(v)[len(v) // 2] for k, v in rates.items()}


def naive_sample_time(model: genlab.models.GenerativeModel, n: int, rows: int) -> float:
    """Seconds for reference_sample(n), timed over the first ``rows`` rows and scaled."""
    c, h, w = model.shape
    if rows >= h:
        start = time.perf_counter()
        model.reference_sample(n)
        return time.perf_counter() - start
    cut = c * rows * w  # the first rows' sub-pixels, in raster order
    order = model.order
    model.order = order[:cut]
    try:
        start = time.perf_counter()
        model.reference_sample(n)
        elapsed = time.perf_counter() - start
    finally:
        model.order = order
    return elapsed * h / rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["pixelcnn", "gated_pixelcnn"])
    p.add_argument("--rounds", type=int, default=5, help="alternating windows per comparison")
    p.add_argument("--batch-size", type=int, help="override the presets' batch size")
    p.add_argument("--naive-rows", type=int, default=28,
                   help="time this many rows of the naive sampler and scale to 28 (default all)")
    args = parse_timing(p, seconds=20.0)
    peak = matmul_peak()
    print(machine_line(peak) + "\n")
    rows, samples = [], []
    for name in args.models:
        torch.manual_seed(0)
        ours = genlab.create(name, shape=(1, 28, 28), preset="cpu")
        cfg = ours.config
        if name == "pixelcnn":
            theirs = NewcomerPixelCNN(cfg.channels, cfg.blocks, cfg.kernel, cfg.block_kernel)
        else:
            theirs = NewcomerGated(cfg.channels, cfg.layers, cfg.kernel, cfg.first_kernel)
        bs = args.batch_size or genlab.MODELS[name].presets["cpu"]["train"]["batch_size"]
        x = torch.bernoulli(torch.full((bs, 1, 28, 28), 0.13))

        def our_loss(v: Tensor, m=ours) -> Tensor:
            return m.loss({"x": v}, "model")[0]

        our_step, our_flops = make_step(our_loss, list(ours.parameters()), x)
        their_step, their_flops = make_step(theirs.loss, list(theirs.parameters()), x)
        rates = interleaved_rates({"genlab": our_step, "newcomer": their_step}, bs,
                                  2 * args.seconds, args.rounds)
        for label, flops in (("genlab", our_flops), ("newcomer", their_flops)):
            rate = rates[label]
            rows.append([name, label, bs, rate, flops / bs / 1e9, rate * flops / bs / 1e9])
            print(f"{name} {label}: {rate:.0f} img/s", flush=True)
        ours.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            ours.sample(64)
            start = time.perf_counter()
            ours.sample(64)
            fast = time.perf_counter() - start
            print(f"{name}: cached sampler {fast:.2f} s", flush=True)
            naive = naive_sample_time(ours, 64, args.naive_rows)
            print(f"{name}: naive sampler {naive:.1f} s", flush=True)
        samples.append([name, fast, naive])
    print("\n| model | code | batch | train img/s | GFLOP/img (step) | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|---|")
    for name, label, bs, rate, gf, gfs in rows:
        print(f"| {name} | {label} | {bs} | {rate:.0f} | {gf:.3f} | {gfs:.1f} | "
              f"{100 * gfs / peak:.1f}% |")
    scaled = "" if args.naive_rows >= 28 else f" ({args.naive_rows} of 28 rows timed, scaled)"
    print(f"\n| model | sample 64, cached (s) | sample 64, naive (s){scaled} | speed-up |")
    print("|---|---|---|---|")
    for name, fast, naive in samples:
        print(f"| {name} | {fast:.2f} | {naive:.1f} | {naive / fast:.0f}x |")
    print(f"\npeak re-measured at the end: {matmul_peak():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
