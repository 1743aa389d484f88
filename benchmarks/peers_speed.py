"""Training images/s of each adversarial/latent model beside a straightforward PyTorch
implementation of the same architecture (``benchmarks/peers/<model>.py``), side by side.

    python benchmarks/peers_speed.py              # every model with a peer, batch 64
    python benchmarks/peers_speed.py dcgan aae --seconds 5

Each peer module gives ``GENLAB = (model name, settings)`` (genlab's model with the peer's
architecture), ``SHAPE`` and ``reference_step(batch_size)``, one training iteration of the
plain implementation (every optimizer) on a random batch. genlab's side is one step of every
player through the protocol, as ``fit`` runs it. The two alternate in ``--rounds`` rounds (A
then B, each for ``--seconds``) and the median of each is reported, so drift of the machine hits
both alike. The share of the fp32 matmul peak is genlab's FLOPs per step (torch's FLOP counter:
matmuls and convolutions) over its step time.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import statistics
import sys
from pathlib import Path

from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from speed import batch_for, machine_line, matmul_peak, parse_timing, rate, train_step  # noqa: E402

import genlab  # noqa: E402
from genlab.train import optimizers_for  # noqa: E402


def genlab_step(name: str, settings: dict, shape: tuple[int, int, int], batch_size: int):
    """One training step of genlab's model (all players at steps 0, 1, 2...) and its FLOPs."""
    model = genlab.create(name, shape=shape, **settings)
    model.train()
    batch = batch_for(model, batch_size)
    opts = optimizers_for(model, 1e-4)  # what fit steps with
    count = 0

    def step() -> None:
        nonlocal count
        train_step(model, opts, batch, count)
        count += 1

    try:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    except RuntimeError:  # the counter cannot follow autograd.grad (gradient penalties)
        flops = None
        step()
    step()
    return step, flops


def main() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(peers.__path__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=names, help=f"default: {' '.join(names)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = parse_timing(p, seconds=4.0)
    peak = matmul_peak()
    print(machine_line(peak))
    print(f"batch {args.batch_size}, {args.rounds} alternating rounds of {args.seconds:g} s\n")
    print("| model | genlab img/s | plain PyTorch img/s | genlab / plain | GFLOP/step "
          "| share of peak |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        peer = importlib.import_module(f"peers.{name}")
        model_name, settings = peer.GENLAB
        ours, flops = genlab_step(model_name, settings, tuple(peer.SHAPE), args.batch_size)
        theirs = peer.reference_step(args.batch_size)
        theirs()  # warm-up
        a, b = [], []
        for _ in range(args.rounds):
            a.append(rate(ours, args.batch_size, args.seconds))
            b.append(rate(theirs, args.batch_size, args.seconds))
        ra, rb = statistics.median(a), statistics.median(b)
        if flops is None:
            share = gflop = "– (FLOP counter fails on the gradient penalty)"
        else:
            gflop = f"{flops / 1e9:.3f}"
            share = f"{100 * flops / 1e9 * ra / args.batch_size / peak:.1f}%"
        print(f"| {name} | {ra:.0f} | {rb:.0f} | {ra / rb:.2f} | {gflop} | {share} |",
              flush=True)


if __name__ == "__main__":
    main()
