"""Per-pixel baselines on static-binarized MNIST: closed-form maximum likelihood (Laplace
smoothing) and the same models trained by gradient descent through `genlab.fit`.

    python benchmarks/baselines.py [--steps 3000]

Prints the test-split NLL (nats per image) of each, to compare with ANCHORS.md
(independent 205.5, Markov AR(1) raster 145.9: computed likewise, 50k train -> 10k test).
"""

from __future__ import annotations

import argparse

import genlab
from genlab.data import load
from genlab.metrics import nll


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="gradient steps for the fitted rows")
    args = p.parse_args()
    train = load("mnist", "train", binarize="static")
    test = load("mnist", "test", binarize="static")
    print(f"train: {train.describe()}\ntest:  {test.describe()}\n")
    print("| model | estimation | test NLL (nats) | bits/dim |")
    print("|---|---|---|---|")
    for name in ("independent", "markov"):
        m = genlab.create(name, shape=train.shape)
        m.estimate(train.x, smoothing=1.0)
        r = nll(m, test)
        print(f"| {name} | closed form, Laplace smoothing | {r.nats:.2f} | {r.bits_per_dim:.4f} |")
        m = genlab.create(name, shape=train.shape, preset="cpu")
        settings = dict(genlab.MODELS[name].presets["cpu"].get("train", {}))
        settings.pop("binarize", None)
        settings["steps"] = args.steps
        genlab.fit(m, train, progress=False, **settings)
        r = nll(m, test)
        print(f"| {name} | Adam, {args.steps} steps (`genlab.fit`) | {r.nats:.2f} | "
              f"{r.bits_per_dim:.4f} |", flush=True)


if __name__ == "__main__":
    main()
