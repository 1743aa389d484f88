"""Every unconditional model on one scale: train each on MNIST for the same CPU time, then one
``genlab compare`` report of them all (test NLL, FID/KID/precision/recall, OOD AUROC against
Fashion-MNIST, linear probe, samples, curves).

    python benchmarks/compare_runs.py                          # 4 minutes each, 2 at a time
    python benchmarks/compare_runs.py --budget 1m --models nade,gan --report /tmp/r

Each model trains with its ``cpu`` preset on MNIST (the preset's binarization) under
``--time-budget``, one thread, ``--jobs`` runs side by side (so each gets about one core: on a
2-core machine keep ``--jobs 2`` and nothing else running). A run folder that already exists
is reused as it is, so a killed script picks up where it stopped. Then ``genlab compare``
writes ``--report``/index.html and report.md, with ``--limit`` test images for the likelihoods,
the OOD score and the probe's test accuracy, and ``-n`` samples for the sample metrics.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# The models that model MNIST's images on their own (no text, attributes, patches or second
# domain), cheapest baselines first. RNADE is left out: it models dequantized grey values, and
# its likelihood bound with k = 100 draws costs a hundred passes per image (over an hour here).
MODELS = ("independent", "markov", "nade", "made", "pixelcnn", "gated_pixelcnn",
          "row_lstm", "diagonal_bilstm", "vae", "conv_vae", "aae", "gan", "dcgan", "infogan",
          "progan")
# The per-pixel baselines reach their optimum in seconds: their budget, whatever --budget says.
BASELINE_BUDGET = {"independent": "30s", "markov": "30s"}


def genlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "genlab", *args]


def train_all(models: list[str], root: Path, budget: str, jobs: int) -> None:
    """Train the missing runs, ``jobs`` at a time; a failed run stops the script."""
    waiting = [m for m in models if not (root / m / "config.json").exists()]
    running: list[tuple[str, subprocess.Popen, float]] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            m = waiting.pop(0)
            log = (root / f"{m}.log").open("w")
            b = BASELINE_BUDGET.get(m, budget)
            cmd = genlab("train", m, "--data", "mnist", "--time-budget", b, "--threads", "1",
                         "--quiet", "--out", str(root / m))
            running.append((m, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                            time.time()))
            print(f"training {m} ({b}) -> {root / m}", flush=True)
        time.sleep(2)
        for item in list(running):
            m, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                tail = (root / f"{m}.log").read_text().strip().splitlines()[-1:]
                sys.exit(f"training {m} failed ({proc.returncode}): {' '.join(tail)}")
            print(f"trained {m} in {time.time() - start:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    p.add_argument("--budget", default="4m", help="training time per model (default 4m)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained side by side")
    p.add_argument("--runs", default="runs/compare", help="folder of the run folders")
    p.add_argument("--report", default="docs/report", help="folder of the report")
    p.add_argument("--ood", default="fashion-mnist")
    p.add_argument("--limit", default="2000", help="test images scored")
    p.add_argument("-n", default="2000", help="samples for FID, KID, precision/recall")
    args = p.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    train_all(models, root, args.budget, args.jobs)
    cmd = genlab("compare", *(str(root / m) for m in models), "--out", args.report, "--ood",
                 args.ood, "--limit", args.limit, "-n", args.n, "--device", "cpu")
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
