"""Training throughput, sampling time and share of the matmul peak, for every model.

    python benchmarks/speed.py                 # all models, their `cpu` presets, MNIST shape
    python benchmarks/speed.py nade vae --seconds 10

For each model: images/s of a full training step (every player: forward, backward, Adam
step) on random binary 28x28 batches at the preset's batch size; the time to sample 64
images; the FLOPs of one training step counted by torch's FLOP counter (matmuls and
convolutions, the work the peak refers to) and the share of the fp32 matmul peak measured in
the same run. Prints a Markdown table to paste into RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import genlab


def matmul_peak(n: int = 2048, seconds: float = 3.0) -> float:
    """Measured fp32 GFLOP/s of an n x n matmul: the ceiling a training step is compared with."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def parse_timing(parser: argparse.ArgumentParser, seconds: float,
                 threads: int | None = None) -> argparse.Namespace:
    """Add the options every speed script shares (--seconds, --threads), parse the command
    line and apply the thread count."""
    parser.add_argument("--seconds", type=float, default=seconds,
                        help=f"timing window per measurement (default {seconds:g})")
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch threads (default: {threads or 'all cores'})")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def machine_line(peak: float) -> str:
    """What the numbers below were measured on, for the top of a script's output."""
    return (f"machine: {platform.machine()}, {torch.get_num_threads()} thread(s), "
            f"torch {torch.__version__}; fp32 matmul peak (2048^3) {peak:.0f} GFLOP/s")


def make_step(loss_fn, params, x: torch.Tensor, on_step=None, lr: float = 1e-4,
              **adam) -> tuple:
    """A closure running one training step (forward, backward, Adam) on the batch ``x``, and
    the FLOPs of one step counted by torch's FLOP counter; one more step warms up.
    ``on_step(i)`` runs before the i-th step (e.g. MADE's mask change)."""
    opt = torch.optim.Adam(params, lr=lr, **adam)
    count = 0

    def step() -> None:
        nonlocal count
        if on_step is not None:
            on_step(count)
        count += 1
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()  # warm-up: allocations, thread pools
    return step, counter.get_total_flops()


def rate(step, batch: int, seconds: float, min_steps: int = 2) -> float:
    """Images per second of ``step`` over at least ``seconds`` and ``min_steps`` steps."""
    n, start = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - start < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - start)


def best_time(fn, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls of ``fn()``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def batch_for(model: genlab.models.GenerativeModel, n: int) -> dict[str, torch.Tensor]:
    x = torch.rand(n, *model.shape)
    if model.data_kind == "binary":
        x = torch.bernoulli(x)
    else:  # grey data arrives as 8-bit values / 255
        x = torch.round(x * 255) / 255
    batch = {"x": x, "y": torch.randint(0, 10, (n,))}
    if "text" in model.needs:  # random caption token ids (text2image)
        from genlab.data.captions import MAX_WORDS, VOCAB

        batch["text"] = torch.randint(2, len(VOCAB), (n, MAX_WORDS))
    if "x_b" in model.needs:  # a second domain (cyclegan)
        batch["x_b"] = torch.round(torch.rand(n, *model.shape) * 255) / 255
    if "attrs" in model.needs:  # attribute rows (stargan)
        from genlab.data.attributes import ATTRIBUTES

        batch["attrs"] = torch.stack([torch.randint(0, len(v), (n,))
                                      for v in ATTRIBUTES.values()], 1)
    if "patches" in model.needs:  # key patches cut around bright pixels (puzzlegan)
        from genlab.data.patches import MAX_PATCHES, boxes_for, crop

        boxes, counts = boxes_for(x.mean(1), torch.Generator().manual_seed(0))
        batch["patches"], batch["masks"] = crop(x, boxes, counts)
        batch["patch_valid"] = torch.arange(MAX_PATCHES)[None, :] < counts[:, None]
    return batch


def train_step(model, optimizers, batch, step: int) -> None:
    model.on_step(step)
    for player in model.players_at(step):
        optimizers[player].zero_grad(set_to_none=True)
        loss, _ = model.loss(batch, player)
        loss.backward()
        optimizers[player].step()


def measure(name: str, seconds: float, batch_size: int | None) -> dict[str, float]:
    cls = genlab.MODELS[name]
    model = genlab.create(name, shape=(1, 28, 28), preset="cpu")
    bs = batch_size or cls.presets["cpu"].get("train", {}).get("batch_size", 64)
    batch = batch_for(model, bs)
    opts = {p: torch.optim.Adam(model.parameters_for(p), lr=1e-4) for p in model.players}
    with FlopCounterMode(display=False) as counter:
        train_step(model, opts, batch, 0)
    flops = counter.get_total_flops()
    for step in range(1, 3):  # warm-up
        train_step(model, opts, batch, step)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        train_step(model, opts, batch, 3 + n)
        n += 1
    step_time = (time.perf_counter() - t0) / n
    model.eval()
    with torch.no_grad():
        model.sample(64)
        t = time.perf_counter()
        reps = 3
        for _ in range(reps):
            model.sample(64)
        sample_time = (time.perf_counter() - t) / reps
    return {
        "batch": bs,
        "img_s": bs / step_time,
        "sample64": sample_time,
        "gflop_step": flops / 1e9,
        "gflops": flops / step_time / 1e9,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=list(genlab.MODELS))
    p.add_argument("--batch-size", type=int, help="override the presets' batch size")
    args = parse_timing(p, seconds=8.0)
    peak = matmul_peak()
    print(machine_line(peak))
    print()
    print("| model | batch | train img/s | sample 64 (s) | GFLOP/step | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        try:
            r = measure(name, args.seconds, args.batch_size)
        except ValueError as e:  # e.g. the full joint table cannot exist at 28x28
            print(f"| {name} | – | – | – | – | – | – ({str(e).split(';')[0]}) |", flush=True)
            continue
        print(
            f"| {name} | {r['batch']} | {r['img_s']:.0f} | {r['sample64']:.3f} | "
            f"{r['gflop_step']:.3f} | {r['gflops']:.1f} | {100 * r['gflops'] / peak:.1f}% |",
            flush=True,
        )
    print(f"\npeak re-measured at the end: {matmul_peak():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
