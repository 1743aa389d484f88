"""PixelRNN training throughput and sampling time: genlab's Row LSTM and Diagonal BiLSTM
against the straightforward implementation of the same architecture.

    python benchmarks/pixelrnn_speed.py                     # cpu presets, 1 thread, 10 s each
    python benchmarks/pixelrnn_speed.py --hidden 16 --layers 7 --batch 16 --seconds 20

The straightforward version is what a newcomer writes from the paper: NCHW tensors, nn.Conv1d /
nn.Conv2d layers with the masks multiplied in on every forward, a Python loop over rows
(Row LSTM) or over the columns of the skewed map (Diagonal BiLSTM) that computes both the
input-to-state and the state-to-state convolution of that row or column, skewing by a loop of
row copies, autograd for the backward pass, and the naive sampler (one full forward pass per
sub-pixel). Same layers, widths and parameter count as genlab's model.

Measured per model, on random binary 28x28 batches: images/s of a full training step (forward,
backward, Adam); the FLOPs of one step (torch's FLOP counter: matmuls and convolutions) and
the share of the fp32 matmul peak (benchmarks/speed.py's ``matmul_peak``, measured in the same
run) that our step reaches; the time to sample 64 images. The naive sampler needs C*H*W = 784
forward passes, so its time is that many times one measured forward pass of 64 images (an
estimate, marked "est."). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import genlab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import machine_line, make_step, matmul_peak, parse_timing, rate  # noqa: E402

# ---- the straightforward implementation ----------------------------------------------------------

def _lstm(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    o, f, i, g = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class NaiveRowLSTM(nn.Module):
    """Row LSTM layer: per row, a masked 1D input-to-state conv and a 1D state-to-state conv."""

    def __init__(self, h: int, kernel: int = 3) -> None:
        super().__init__()
        self.h = h
        self.i_s = nn.Conv1d(2 * h, 4 * h, kernel, padding=kernel // 2)
        self.s_s = nn.Conv1d(h, 4 * h, 3, padding=1, bias=False)
        self.out = nn.Conv2d(h, 2 * h, 1)
        mask = torch.ones(1, 1, kernel)
        mask[..., kernel // 2 + 1:] = 0  # nothing to the right of the pixel
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:  # (B, 2h, H, W)
        b, _, height, width = x.shape
        h = c = x.new_zeros(b, self.h, width)
        rows = []
        for i in range(height):
            gates = F.conv1d(x[:, :, i], self.i_s.weight * self.mask, self.i_s.bias,
                             padding=self.i_s.padding) + self.s_s(h)
            h, c = _lstm(gates, c)
            rows.append(h)
        return x + self.out(torch.stack(rows, 2))


def skew(x: Tensor) -> Tensor:
    b, ch, height, width = x.shape
    out = x.new_zeros(b, ch, height, width + height - 1)
    for i in range(height):
        out[:, :, i, i:i + width] = x[:, :, i]
    return out


def unskew(x: Tensor, width: int) -> Tensor:
    return torch.stack([x[:, :, i, i:i + width] for i in range(x.shape[2])], 2)


class NaiveDiagonalLSTM(nn.Module):
    """One direction: skew, then per column a 1x1 input-to-state and a 2x1 state-to-state conv."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.h = h
        self.i_s = nn.Conv1d(2 * h, 4 * h, 1)
        self.s_s = nn.Conv1d(h, 4 * h, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, 2h, H, W) -> (B, h, H, W)
        s = skew(x)
        h = c = x.new_zeros(s.shape[0], self.h, s.shape[2])
        cols = []
        for d in range(s.shape[3]):
            gates = self.i_s(s[:, :, :, d]) + self.s_s(F.pad(h, (1, 0)))  # above and left
            h, c = _lstm(gates, c)
            cols.append(h)
        return unskew(torch.stack(cols, 3), x.shape[3])


class NaiveDiagonalBiLSTM(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.forward_dir, self.backward_dir = NaiveDiagonalLSTM(h), NaiveDiagonalLSTM(h)
        self.out = nn.Conv2d(h, 2 * h, 1)

    def forward(self, x: Tensor) -> Tensor:
        left = self.forward_dir(x)
        right = self.backward_dir(x.flip(3)).flip(3)
        right = F.pad(right, (0, 0, 1, 0))[:, :, :-1]  # shift down one row
        return x + self.out(left + right)


class NaivePixelRNN(nn.Module):
    def __init__(self, kind: str, h: int, layers: int, out_h: int, kernel: int = 3) -> None:
        super().__init__()
        self.input = nn.Conv2d(1, 2 * h, 7, padding=3)
        mask = torch.ones(1, 1, 7, 7)
        mask[:, :, 3, 3:] = 0  # mask A
        mask[:, :, 4:] = 0
        self.register_buffer("mask", mask)
        make = (lambda: NaiveRowLSTM(h, kernel)) if kind == "row_lstm" else (
            lambda: NaiveDiagonalBiLSTM(h))
        self.layers = nn.Sequential(*[make() for _ in range(layers)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * h, out_h, 1), nn.ReLU(),
                                  nn.Conv2d(out_h, 1, 1))

    def logits(self, x: Tensor) -> Tensor:
        f = F.conv2d(2 * x - 1, self.input.weight * self.mask, self.input.bias, padding=3)
        return self.head(self.layers(f))

    def loss(self, x: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(x), x, reduction="none").sum(
            (1, 2, 3)).mean()


# ---- measurements ------------------------------------------------------------------------------

def train_speed(loss_fn, params, x: Tensor, seconds: float) -> tuple[float, float]:
    """(images/s, FLOPs per step) of forward + backward + Adam on batch x."""
    step, flops = make_step(loss_fn, params, x)
    return rate(step, len(x), seconds), flops


def forward_time(fn, x: Tensor, repeats: int = 3) -> float:
    with torch.no_grad():
        fn(x)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["row_lstm", "diagonal_bilstm"])
    p.add_argument("--hidden", type=int, help="h (default: the cpu preset's)")
    p.add_argument("--layers", type=int, help="LSTM layers (default: the cpu preset's)")
    p.add_argument("--batch", type=int, help="batch size (default: the cpu preset's)")
    args = parse_timing(p, seconds=10.0, threads=1)
    peak = matmul_peak()
    print(machine_line(peak) + "\n")
    print("| model | h | layers | batch | params | train img/s: ours | straightforward | "
          "speed-up | GFLOP/step (ours) | share of peak | sample 64: ours (s) | "
          "straightforward (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        cls = genlab.MODELS[name]
        preset = cls.presets["cpu"]
        settings = dict(preset["model"])
        for key in ("hidden", "layers"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        batch = args.batch or preset["train"]["batch_size"]
        torch.manual_seed(0)
        ours = genlab.create(name, shape=(1, 28, 28), **settings)
        naive = NaivePixelRNN(name, ours.config.hidden, ours.config.layers,
                              ours.config.out_hidden, getattr(ours.config, "kernel", 3))
        n_ours = sum(q.numel() for q in ours.parameters())
        n_naive = sum(q.numel() for q in naive.parameters())
        x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.15),
                            generator=torch.Generator().manual_seed(0))
        fast, flops = train_speed(lambda v, m=ours: m.loss({"x": v}, "model")[0],
                                  ours.parameters(), x, args.seconds)
        slow, _ = train_speed(naive.loss, naive.parameters(), x, args.seconds)
        ours.eval()
        with torch.no_grad():
            ours.sample(64)
            start = time.perf_counter()
            ours.sample(64)
            sample_ours = time.perf_counter() - start
        x64 = torch.bernoulli(torch.full((64, 1, 28, 28), 0.15))
        sample_naive = 784 * forward_time(naive.logits, x64)
        gflops = flops / 1e9 * fast / batch
        params = f"{n_ours:,}" + ("" if n_ours == n_naive else f" / {n_naive:,}")
        print(f"| {name} | {ours.config.hidden} | {ours.config.layers} | {batch} | {params} | "
              f"{fast:.0f} | {slow:.0f} | {fast / slow:.1f}x | {flops / 1e9:.2f} | "
              f"{100 * gflops / peak:.1f}% | {sample_ours:.2f} | {sample_naive:.0f} (est.) |",
              flush=True)
    print(f"\npeak re-measured at the end: {matmul_peak():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
