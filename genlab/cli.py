"""The command line: a thin shell over the API. ``main(argv)`` is testable in-process.

    genlab list
    genlab params --pixels 784
    genlab train nade --data mnist --preset cpu --time-budget 10m --out runs/nade [--resume]
    genlab sample runs/nade -n 64 --out grid.png
    genlab eval runs/nade
    genlab score runs/nade images/ --out scores.csv
    genlab encode runs/vae --data mnist --out feats.npz

Errors are one line a person can act on; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from genlab.data import load as load_data
from genlab.models import MODELS, create, load
from genlab.models.base import read_config


def _parse_value(text: str) -> Any:
    """'500' -> 500, '1e-3' -> 0.001, 'a,b' -> ['a', 'b'] ... for --set key=value."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(t) for t in text.split(",")]
        return text


def _positive_int(text: str) -> int:
    """argparse type: counts (-n, --steps, --batch-size, --limit, -k) must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_list(args: argparse.Namespace) -> None:
    w = max(map(len, MODELS))
    print(f"{'model':<{w}} {'log_prob':<9} {'capabilities':<26} paper")
    for name, cls in MODELS.items():
        # An estimate is a bound or importance-weighted value (VAE, RNADE's dequantization).
        kind = "exact" if cls.exact else ("estimate" if cls.has("log_prob") else "none")
        print(f"{name:<{w}} {kind:<9} {', '.join(cls.capabilities()):<26} {cls.paper}")


def cmd_params(args: argparse.Namespace) -> None:
    from genlab.models.baselines import format_param_table

    print(format_param_table(args.pixels))


def _train_settings(cls: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Preset training settings, overridden by the flags the user gave."""
    settings = dict(cls.presets.get(args.preset, {}).get("train", {}))
    for key in (
        "batch_size",
        "lr",
        "steps",
        "clip",
        "seed",
        "schedule",
        "binarize",
        "patience",
        "val_every",
    ):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.time_budget is not None:
        settings["time_budget"] = args.time_budget
        if args.steps is None:
            settings.pop("steps", None)  # a time budget given alone replaces the preset's steps
    return settings


def cmd_train(args: argparse.Namespace) -> None:
    import genlab

    out = Path(args.out or f"runs/{args.model}")
    if args.resume:
        stored = read_config(out)
        model = create(stored["model"], shape=tuple(stored["shape"]), **stored["model_config"])
        run = stored["train"]
        settings = run["fit"]
        for key in ("steps", "time_budget"):  # the budget may be extended on resume
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        data_cfg = run["data"]
    else:
        cls = MODELS.get(args.model)
        if cls is None:
            raise KeyError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
        settings = _train_settings(cls, args)
        seed = settings.get("seed", 0)
        overrides = dict(kv.split("=", 1) for kv in args.set)
        probe = load_data(args.data, "train", seed=seed, limit=8)
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = create(
            args.model,
            shape=probe.shape,
            preset=args.preset,
            **{k: _parse_value(v) for k, v in overrides.items()},
        )
        # The built model says what data it takes (e.g. levels=2 binary, levels=256 grey).
        binarize = settings.pop("binarize", "static" if model.data_kind == "binary" else None)
        if model.data_kind != "binary":
            if args.binarize is not None:
                raise ValueError(f"{model.name} with these settings models grey levels, "
                                 f"not binary images: drop --binarize {args.binarize}")
            binarize = None
        data_cfg = {"source": args.data, "binarize": binarize, "seed": seed, "limit": args.limit}
        run = {"data": data_cfg, "fit": settings, "preset": args.preset}
    train = load_data(
        data_cfg["source"],
        "train",
        binarize=data_cfg["binarize"],
        seed=data_cfg["seed"],
        limit=data_cfg["limit"],
    )
    val = load_data(
        data_cfg["source"],
        "val",
        binarize=data_cfg["binarize"],
        seed=data_cfg["seed"],
        limit=data_cfg["limit"],
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {model.name} ({n_params:,} parameters) on {train.describe()}")
    history = genlab.fit(
        model,
        train,
        val_data=val,
        out=out,
        resume=args.resume,
        progress=not args.quiet,
        run_config=run,
        sample_every=args.sample_every,
        threads=args.threads,
        **settings,
    )
    msg = f"stopped after {history.step} steps ({history.stopped}, {history.elapsed:.0f} s)"
    if history.best_val is not None:
        msg += f"; best validation loss {history.best_val:.2f} nats"
    print(msg)
    print(f"run saved in {out}; samples in {out / 'samples'}")


def cmd_sample(args: argparse.Namespace) -> None:
    from genlab.images import save_grid

    model = load(args.run)
    torch.manual_seed(args.seed)
    x = model.sample(args.n)
    out = Path(args.out or Path(args.run) / "samples.png")
    save_grid(x, out)
    print(f"wrote {args.n} samples to {out}")


def _run_data(run: str, source: str | None, split: str, limit: int | None) -> Any:
    """The data a run was trained on (its binarization and seed), or ``source`` likewise."""
    config = read_config(run)
    data_cfg = config.get("train", {}).get("data", {})
    src = source or data_cfg.get("source")
    if src is None:
        raise ValueError(f"{run} does not record its data: pass --data")
    return load_data(
        src,
        split,
        binarize=data_cfg.get("binarize"),
        seed=data_cfg.get("seed", 0),
        limit=limit,
        shape=tuple(config["shape"]),
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from genlab.metrics import nll

    model = load(args.run)
    data = _run_data(args.run, args.data, args.split, args.limit)
    # Estimated likelihoods use the model's own default sample count unless -k is given.
    kwargs = {} if model.exact or args.k is None else {"k": args.k}
    report = nll(model, data, batch_size=args.batch_size, progress=not args.quiet, **kwargs)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.__dict__, indent=2))


def cmd_score(args: argparse.Namespace) -> None:
    from genlab.metrics import bits_per_dim, log_probs

    model = load(args.run)
    data = _run_data(args.run, args.images, "all", None)
    lp = log_probs(model, data, **({} if model.exact else {"k": args.k}))
    out = Path(args.out)
    names = data.paths if getattr(data, "paths", None) else [str(i) for i in range(len(lp))]
    rows = ["image,log_prob_nats,bits_per_dim,anomaly_score"]
    for name, v in zip(names, lp.tolist(), strict=True):
        rows.append(f"{name},{v:.4f},{bits_per_dim(-v, model.n_pixels):.5f},{-v:.4f}")
    out.write_text("\n".join(rows) + "\n")
    print(
        f"scored {len(lp)} images ({data.describe()}); mean log-likelihood "
        f"{float(lp.mean()):.2f} nats; wrote {out}"
    )


def cmd_encode(args: argparse.Namespace) -> None:
    import numpy as np

    from genlab.data import Loader

    model = load(args.run)
    data = _run_data(args.run, args.data, args.split, args.limit)
    with torch.no_grad():
        feats = [model.encode(b["x"]) for b in Loader(data, 500, shuffle=False, drop_last=False)]
    z = torch.cat(feats).numpy()
    arrays = {"z": z}
    if data.y is not None:
        arrays["y"] = data.y.numpy()
    np.savez(args.out, **arrays)
    print(f"wrote {z.shape[0]} feature vectors of size {z.shape[1]} to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genlab", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="models, what each supports, its paper").set_defaults(fn=cmd_list)

    s = sub.add_parser("params", help="parameter counts of the per-pixel baselines")
    s.add_argument("--pixels", type=_positive_int, default=784)
    s.set_defaults(fn=cmd_params)

    s = sub.add_parser("train", help="train a model; writes a run folder")
    s.add_argument("model", nargs="?", default=None, help=f"one of: {', '.join(MODELS)}")
    s.add_argument(
        "--data",
        default="mnist",
        help="mnist, fashion-mnist, an IDX folder, a .npz file or an image folder",
    )
    s.add_argument("--preset", default="cpu", choices=("cpu", "paper"))
    s.add_argument("--out", help="run folder (default runs/MODEL)")
    s.add_argument("--steps", type=_positive_int)
    s.add_argument("--time-budget", help="e.g. 90s, 10m, 1h")
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--lr", type=float)
    s.add_argument("--clip", type=float)
    s.add_argument("--schedule", choices=("constant", "cosine"))
    s.add_argument("--seed", type=int)
    s.add_argument("--binarize", choices=("static", "dynamic", "threshold"))
    s.add_argument(
        "--patience",
        type=int,
        help="stop after N validations without improvement; the best weights are kept",
    )
    s.add_argument("--val-every", type=_positive_int, help="validate every N steps (default 500)")
    s.add_argument("--limit", type=_positive_int, help="use only the first N images of each split")
    s.add_argument("--sample-every", type=_positive_int, default=500)
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model setting, e.g. --set hidden=100",
    )
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=_positive_int,
                   help="torch threads (default: the cores other processes leave idle)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="write a grid of samples")
    s.add_argument("run")
    s.add_argument("-n", type=_positive_int, default=64)
    s.add_argument("--out")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("eval", help="test NLL in nats and bits/dim")
    s.add_argument("run")
    s.add_argument("--data", help="default: the data the run was trained on")
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--limit", type=_positive_int)
    s.add_argument(
        "-k", type=_positive_int, default=None,
        help="samples for estimated likelihoods (default: the model's; VAE 5000, RNADE 1)",
    )
    s.add_argument("--batch-size", type=_positive_int, default=500)
    s.add_argument("--json", help="also write the report as JSON")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("score", help="per-image log-likelihood / anomaly score as CSV")
    s.add_argument("run")
    s.add_argument("images", help="an image folder, .npz, IDX folder or dataset name")
    s.add_argument("--out", default="scores.csv")
    s.add_argument(
        "-k", type=_positive_int, default=1000, help="importance samples for latent models"
    )
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("encode", help="features of a dataset as .npz (z, y)")
    s.add_argument("run")
    s.add_argument("--data")
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--limit", type=_positive_int)
    s.add_argument("--out", default="features.npz")
    s.set_defaults(fn=cmd_encode)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.model is None and not args.resume:
        parser.error("train needs a model name (or --resume --out RUN)")
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("genlab: interrupted (a run folder resumes with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # one actionable line, not a traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            msg = msg.strip("'\"")
        print(f"genlab: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
