"""The command line: a thin shell over the API. ``main(argv)`` is testable in-process.

    genlab list
    genlab params --pixels 784
    genlab train nade --data mnist --preset cpu --time-budget 10m --out runs/nade [--resume]
    genlab sample runs/nade -n 64 --out grid.png
    genlab sample runs/nade --complete mnist --mask bottom
    genlab sample runs/t2i --text "a thick red seven"      (or --patches P1.png P2.png)
    genlab translate runs/cyclegan mnist:mnist-colour --to b --out translated/
    genlab eval runs/nade [--metrics nll,fid,kid,pr,cs,parzen,clusters]
    genlab score runs/nade images/ --out scores.csv
    genlab encode runs/vae --data mnist --out feats.npz
    genlab ood runs/nade --data mnist --ood fashion-mnist
    genlab probe runs/vae --data mnist
    genlab features train --data mnist --out runs/features-mnist
    genlab compare runs/* --out report/
    (train, sample, eval, score, encode: --device auto|cpu|cuda|cuda:N|mps; train: --precision)

Errors are one line a person can act on; ``--debug`` (before or after the subcommand) shows
the traceback. Values that make no sense are refused by the flag that took them, and checks
that need no data run before any data is loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genlab import __version__
from genlab.data import binarization_for, describe_sources, sources_help
from genlab.data import load as load_data
from genlab.devices import DEVICES, PRECISIONS, resolve_device
from genlab.metrics.clustering import check_clusters
from genlab.models import MODELS, create, load
from genlab.models.base import (
    MAX_SUBPIXELS,
    GenerativeModel,
    RunError,
    check_fields,
    check_new_run,
    read_config,
    require,
    require_condition,
)
from genlab.train import Interrupted, check_free, parse_interval

# Beyond this, -k only costs time: log_prob draws its importance samples in chunks, so memory
# stays flat, but k = 5000 already takes minutes on 10k MNIST images and 10^6 would take days.
MAX_IMPORTANCE_SAMPLES = 10**6


def _parse_value(text: str) -> Any:
    """'500' -> 500, '1e-3' -> 0.001, 'a,b' -> ['a', 'b'] ... for --set key=value."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(t) for t in text.split(",")]
        return text


# ---- argparse types: a value that makes no sense is refused at its flag, in one line ----------


def _whole(text: str, least: int, must: str) -> int:
    """``text`` as a whole number of at least ``least``, else "must be ``must``"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {must}, got {value}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: counts (-n, --steps, --batch-size, --limit, -k) must be at least 1."""
    return _whole(text, 1, "at least 1")


def _checked_float(text: str, ok: Callable[[float], bool], must: str) -> float:
    """``text`` as a finite float for which ``ok`` holds, else "must be ``must``"."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {must}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: --lr, --clip: a finite number above 0."""
    return _checked_float(text, lambda v: v > 0, "a positive number")


def _non_negative_float(text: str) -> float:
    """argparse type: --weight-decay: a finite number, 0 allowed."""
    return _checked_float(text, lambda v: v >= 0, "a number >= 0")


def _duration(text: str) -> str:
    """argparse type: --time-budget, e.g. 90s, 10m, 1.5h; finite and positive. Returns the text
    itself, which the run's config.json records as given."""
    from genlab.train import parse_duration

    try:
        seconds = parse_duration(text)
    except (ValueError, IndexError):  # IndexError: an empty string
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 90s, 10m or 1.5h, got {text!r}"
        )
    return text.strip()


def _count(text: str) -> int:
    """argparse type: --sample-every, --val-every: a whole number, 0 allowed (0: off)."""
    return _whole(text, 0, "0 (off) or more")


def _interval(text: str) -> str:
    """argparse type: --ckpt-every: steps, a duration or both (checked, kept as text)."""
    try:
        parse_interval(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _setting(text: str) -> str:
    """argparse type: --set KEY=VALUE (its value is checked against the model in
    :func:`parse_overrides`, once the model is known)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. --set hidden=100), got {text!r}"
        )
    return text


def _pixels(text: str) -> int:
    """argparse type: --pixels, from 1 to the most sub-pixels a genlab model takes."""
    value = _positive_int(text)
    if value > MAX_SUBPIXELS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SUBPIXELS} (the most sub-pixels a genlab model takes), got {value}"
        )
    return value


def _importance_samples(text: str) -> int:
    """argparse type: -k, importance samples per image."""
    value = _positive_int(text)
    if value > MAX_IMPORTANCE_SAMPLES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_IMPORTANCE_SAMPLES} samples per image, got {value} (k costs time, "
            "not memory: k=5000 already takes minutes on 10k images)"
        )
    return value


def parse_overrides(cls: type[GenerativeModel], sets: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` texts -> settings of ``cls.Config``, each checked against its field's
    type: ``hidden=abc`` is "hidden must be an integer, got 'abc'"; an unknown key names the
    valid ones. Values read as JSON (500, 1e-3, true), 'a,b' as a list; text fields take the
    text as given."""
    import typing

    from genlab.models import SettingError, check_settings

    kinds = typing.get_type_hints(cls.Config)
    settings: dict[str, Any] = {}
    for text in sets:
        key, _, raw = _setting(text).partition("=")
        key = key.strip()
        value = raw if kinds.get(key) is str else _parse_value(raw)
        try:
            settings.update(check_settings(cls, {key: value}))
        except SettingError as e:  # name the text the user typed, not its parsed form
            raise SettingError(e.key, e.expected, raw) from None
    return settings


# ---- checks before any data is loaded -----------------------------------------------------------


def _available_memory() -> int | None:
    """Bytes of RAM available to a new allocation, or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(need: int, what: str, flag: str) -> None:
    """Refuse a request whose estimated memory exceeds what the machine has available."""
    have = _available_memory()
    if have is not None and need > have:
        raise MemoryError(
            f"{what} need about {need / 2**30:.1f} GiB but {have / 2**30:.1f} GiB of memory is "
            f"available: lower {flag}"
        )


def _check_train(args: argparse.Namespace) -> None:
    """What `genlab train` can check before loading data: that no run trains in --out now, the
    model name, its --set values, and that --out does not already hold a run."""
    check_free(args.out or f"runs/{args.model}")
    if args.resume:
        return
    cls = MODELS.get(args.model)
    if cls is None:
        raise KeyError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    parse_overrides(cls, args.set)
    args.out = args.out or f"runs/{args.model}"
    check_new_run(args.out)


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


# Training flags --resume takes over (an extended budget, a lower learning rate...); the
# others shape the data, the model or its batches, so resume refuses to change them.
_RESUMABLE = (
    "lr", "clip", "steps", "time_budget", "patience", "val_every", "ckpt_every", "sample_every",
    "sample_n", "schedule", "precision",
)  # fmt: skip


def _train_settings(cls: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Preset training settings, overridden by the flags the user gave."""
    settings = dict(cls.presets.get(args.preset, {}).get("train", {}))
    settings.setdefault("sample_every", 500)
    for key in ("batch_size", "seed", "binarize", "weight_decay", *_RESUMABLE):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.time_budget is not None and args.steps is None:
        settings.pop("steps", None)  # a time budget given alone replaces the preset's steps
    return settings


def _resume_settings(args: argparse.Namespace, out: Path) -> tuple[Any, dict, dict]:
    """The stored run (model, "train" config, fit settings) with the flags --resume may change;
    one line refusing those it may not, unless they repeat the stored value."""
    stored = read_config(out)
    run = stored.get("train", {})
    settings, data = dict(run.get("fit", {})), run.get("data", {})
    fixed = {
        "model": (args.model, stored.get("model")),
        "--data": (args.data, data.get("source")),
        "--preset": (args.preset, run.get("preset")),
        "--binarize": (args.binarize, data.get("binarize")),
        "--batch-size": (args.batch_size, settings.get("batch_size")),
        "--weight-decay": (args.weight_decay, settings.get("weight_decay", 0.0)),
        "--seed": (args.seed, data.get("seed", settings.get("seed"))),
        "--limit": (args.limit, data.get("limit")),
    }
    refused = [
        f"{flag} {new} (the run has {old})"
        for flag, (new, old) in fixed.items()
        if new is not None and new != old
    ]
    config = stored.get("model_config", {})
    typed = dict(kv.partition("=")[::2] for kv in args.set)
    for key, value in parse_overrides(MODELS[stored["model"]], args.set).items():
        # compared as config.json holds it: a tuple (64,) is the list [64] there
        if config.get(key, object()) != json.loads(json.dumps(value)):
            refused.append(f"--set {key}={typed[key]} (the run has {key}={config.get(key)})")
    if refused:
        raise ValueError(
            f"--resume continues {out} as it was built and fed: drop {'; '.join(refused)}, "
            "or train a new run with another --out"
        )
    if "data" not in run:
        raise RunError(
            f"{out} does not record its data (trained from Python on a dataset without an "
            "origin): resume it from Python, with genlab.fit(..., resume=True)"
        )
    for key in _RESUMABLE:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    model = create(stored["model"], shape=tuple(stored["shape"]), **stored["model_config"])
    return model, run, settings


def cmd_train(args: argparse.Namespace) -> None:
    import genlab

    out = Path(args.out or f"runs/{args.model}")
    device = resolve_device(args.device)  # a missing GPU fails before any data is read
    if args.resume:
        model, run, settings = _resume_settings(args, out)
        data_cfg = run["data"]
    else:
        cls = MODELS.get(args.model)
        if cls is None:
            raise KeyError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
        args.preset = args.preset or "cpu"
        # The preset may name the data the model is built for (a translation model's domains).
        args.data = args.data or cls.presets.get(args.preset, {}).get("data") or "mnist"
        settings = _train_settings(cls, args)
        seed = settings.get("seed", 0)
        overrides = parse_overrides(cls, args.set)
        probe = load_data(args.data, "train", seed=seed, limit=8)
        check_fields(cls, probe.fields, args.data)
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = create(args.model, shape=probe.shape, preset=args.preset, **overrides)
        # The built model says what data it takes (e.g. levels=2 binary, levels=256 grey);
        # a preset's binarization is its default, --binarize an explicit request.
        binarize = binarization_for(
            model, args.binarize, default=settings.pop("binarize", "static")
        )
        # The source as the data package resolved it: a relative path is stored absolute, so
        # eval/score/encode find the data from any working directory.
        source = (probe.origin or {}).get("source", args.data)
        data_cfg = {"source": source, "binarize": binarize, "seed": seed, "limit": args.limit}
        run = {"data": data_cfg, "preset": args.preset}
    train, val = (
        load_data(
            data_cfg["source"],
            split,
            binarize=data_cfg["binarize"],
            seed=data_cfg["seed"],
            limit=data_cfg["limit"],
        )
        for split in ("train", "val")
    )
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    precision = settings.get("precision", "fp32")
    print(f"training {model.name} ({n_params:,} parameters) on {train.describe()}, "
          f"on {device}" + (f" ({precision})" if precision != "fp32" else ""), flush=True)
    try:
        history = genlab.fit(
            model,
            train,
            val_data=val,
            out=out,
            resume=args.resume,
            progress=not args.quiet,
            run_config=run,
            device=device,
            threads=args.threads,
            **settings,
        )
    except Interrupted as e:
        e.resume_hint = f"genlab train --resume --out {shlex.quote(str(out))}"
        raise
    msg = f"stopped after {history.step} steps ({history.stopped}, {history.elapsed:.0f} s)"
    if history.best_val is not None:
        msg += (f"; best validation loss {history.best_val:.2f} nats" if model.has("log_prob")
                else f"; best validation FID {history.best_val:.2f}")
    print(msg)
    drawn = any((out / "samples").glob("*.png"))  # none with --sample-every 0
    print(f"run saved in {out}" + (f"; samples in {out / 'samples'}" if drawn else ""))


def cmd_sample(args: argparse.Namespace) -> None:
    from genlab.images import grid_format, save_grid

    name = "samples.png" if args.complete is None else "completions.png"
    out = Path(args.out or Path(args.run) / name)
    grid_format(out)  # an unknown suffix is refused before minutes of sampling
    if args.text or args.patches:
        _sample_conditioned(args, out)
        return
    model = load(args.run, device=args.device)
    torch.manual_seed(args.seed)
    if args.complete is None:
        # The samples (float32) and their grid; the model's own working memory comes on top.
        _check_fits(2 * args.n * model.n_pixels * 4, f"{args.n} samples", "-n")
        x = model.sample(args.n)
        save_grid(x, out)
        print(f"wrote {args.n} samples to {out}")
        return
    import time

    from genlab.completion import region_mask
    from genlab.data import binarize
    from genlab.images import save_completions

    # An image file, a folder, .npz or data set, prepared as the run's data (binarization, shape).
    split = args.split or ("all" if Path(args.complete).exists() else "test")
    x, k = _run_data(args.run, args.complete, split, args.limit).x[: args.limit], args.n_completions
    # Grey inputs for a binary model ("dynamic" data, a run without a data record): one draw,
    # as the run's binarization makes it; other grey levels are rounded to the model's grid.
    levels = 2 if model.data_kind == "binary" else getattr(model, "levels", 256)
    if model.data_kind == "binary" and not bool(((x == 0) | (x == 1)).all()):
        mode = read_config(args.run).get("train", {}).get("data", {}).get("binarize")
        x = binarize(x, mode or "static", torch.Generator().manual_seed(args.seed))
    elif levels > 2:
        x = torch.round(x * (levels - 1)) / (levels - 1)
    _check_fits(2 * len(x) * k * model.n_pixels * 4, f"{len(x) * k} completions",
                "--limit or --n-completions")
    given = region_mask(args.mask, model.shape, len(x), torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    filled = model.sample(len(x) * k, cond={"x": x.repeat_interleave(k, 0),
                                            "mask": given.repeat_interleave(k, 0)},
                          sweeps=args.sweeps, progress=not args.quiet)
    seconds = time.perf_counter() - start
    save_completions(x, given, filled.view(len(x), k, *model.shape).cpu(), out)
    print(f"wrote {k} completions of each of {len(x)} images (hidden: {args.mask}) to {out} "
          f"in {seconds:.2f} s")


def _run_class(run: str) -> type[GenerativeModel]:
    """The model class of a run, from its config alone (checks run before the weights load)."""
    name = read_config(run).get("model")
    if name not in MODELS:
        raise RunError(f"{run}/config.json names no genlab model ({name!r})")
    return MODELS[name]


def _read_patch(path: str, channels: int) -> torch.Tensor:
    """A PNG/JPEG as (C, h, w) float in [0, 1] with the model's number of channels."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255
    t = torch.from_numpy(a)
    return t.permute(2, 0, 1) if t.ndim == 3 else t[None]


def _sample_conditioned(args: argparse.Namespace, out: Path) -> None:
    """`genlab sample RUN --text ...` / `--patches ...`: n samples per condition."""
    from genlab.images import save_grid

    key = "text" if args.text else "patches"
    require_condition(_run_class(args.run), key)  # before the weights load
    model = load(args.run, device=args.device)
    torch.manual_seed(args.seed)
    if key == "text":
        texts = [t for t in args.text for _ in range(args.n)]  # n rows per sentence
        x = model.sample(len(texts), cond={"text": texts})
        what = f"{args.n} samples for each of {len(args.text)} sentences"
    else:
        from genlab.data.patches import patch_cond

        cond = patch_cond([_read_patch(p, model.shape[0]) for p in args.patches], args.n)
        x = model.sample(args.n, cond={k: v.to(model.device) for k, v in cond.items()})
        what = f"{args.n} samples from {len(args.patches)} patches"
    save_grid(x, out, nrow=args.n)
    print(f"wrote {what} to {out}")


def cmd_translate(args: argparse.Namespace) -> None:
    """Translate images (a folder, image file or data source) with a run's ``translate``."""
    from genlab.images import save_grid

    if (args.to is None) == (not args.attrs):
        raise ValueError("say what to translate to: --to a|b, or --attrs NAME=VALUE,...")
    require(_run_class(args.run), "translate")  # before the weights or any data load
    conds: list[tuple[str, dict[str, Any]]] = []
    if args.attrs:
        from genlab.data.attributes import parse_attrs

        for text in args.attrs:
            parse_attrs(text)  # a bad attribute is refused before the model loads
    model = load(args.run, device=args.device)
    split = args.split or ("all" if Path(args.input).exists() else "test")
    data = _run_data(args.run, args.input, split, args.limit, binarize=None)
    # "--to a" translates domain B's images where the source has two domains.
    x = (data.fields["x_b"] if args.to == "a" and "x_b" in data.fields else data.x)
    x = x[: args.limit].to(model.device)
    if args.attrs:
        from genlab.data.attributes import parse_attrs

        conds = [(t, {"attrs": parse_attrs(t, len(x)).to(model.device)}) for t in args.attrs]
    else:
        conds = [(f"to {args.to}", {"to": args.to})]
    torch.manual_seed(args.seed)
    rows = [model.translate(x, cond).detach().float().cpu() for _, cond in conds]
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for r, y in enumerate(rows):
        for i, image in enumerate(y):  # (C, H, W): one PNG at the model's size, no border
            suffix = f"-{r}" if len(rows) > 1 else ""
            a = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(
                folder / f"{i:04d}{suffix}.png")
    save_grid(torch.cat([x.cpu(), *rows]), folder / "grid.png", nrow=len(x))
    print(f"wrote {len(x)} translations ({'; '.join(t for t, _ in conds)}) to {folder}; "
          f"grid.png: inputs on top, one row per target")


_RUNS = object()  # "the run's own binarization"


def _run_data(run: str, source: str | None, split: str, limit: int | None,
              binarize: Any = _RUNS) -> Any:
    """The data a run was trained on (its binarization and seed), or ``source`` likewise;
    ``binarize`` (e.g. None: grey values) overrides the run's binarization."""
    config = read_config(run)
    data_cfg = config.get("train", {}).get("data", {})
    src = source or data_cfg.get("source")
    if src is None:
        raise ValueError(f"{run} does not record its data: pass --data")
    return load_data(
        src,
        split,
        binarize=data_cfg.get("binarize") if binarize is _RUNS else binarize,
        seed=data_cfg.get("seed", 0),
        limit=limit,
        shape=tuple(config["shape"]),
    )


# What `genlab eval` can measure: the likelihood, the quality of the model's samples in the
# feature space of genlab's own classifier (never Inception: it is not downloadable here), or
# for a model that clusters images, its clusters as a classifier (genlab.metrics.clustering).
EVAL_METRICS = ("nll", "fid", "kid", "pr", "cs", "parzen", "clusters")


def _eval_metrics(model: GenerativeModel, text: str | None) -> list[str]:
    """--metrics as a list, checked against what the model can do. The default follows its
    capabilities, never its name: the NLL where it has log_prob, sample quality otherwise."""
    if text is None:
        return ["nll"] if model.has("log_prob") else ["fid", "kid", "pr", "cs"]
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [m for m in names if m not in EVAL_METRICS]
    if unknown or not names:
        raise ValueError(f"unknown --metrics {','.join(unknown) or text!r}; choose from "
                         f"{', '.join(EVAL_METRICS)} (comma-separated)")
    if "nll" in names:
        require(model, "log_prob")
    if "clusters" in names:
        check_clusters(model)
    return names


def cmd_eval(args: argparse.Namespace) -> None:
    from genlab.metrics import nll, sample_quality
    from genlab.metrics.clustering import cluster_report
    from genlab.metrics.features import feature_net_for, load_feature_net

    model = load(args.run, device=args.device)
    metrics = _eval_metrics(model, args.metrics)
    wanted = [m for m in metrics if m not in ("nll", "clusters")]
    net = None
    if wanted:  # the feature network is found before any data or sampling
        source = read_config(args.run).get("train", {}).get("data", {}).get("source")
        if args.features is not None:
            net = load_feature_net(args.features)
        elif args.data or source:
            net = feature_net_for(args.data or source)
        else:
            raise ValueError(f"{args.run} does not record its data: pass --data or --features")
    data = _run_data(args.run, args.data, args.split, args.limit)
    reports: dict[str, Any] = {}
    if "nll" in metrics:
        # Estimated likelihoods use the model's own default sample count unless -k is given.
        kwargs = {} if model.exact or args.k is None else {"k": args.k}
        reports["nll"] = nll(model, data, batch_size=args.batch_size, progress=not args.quiet,
                             **kwargs)
        print(reports["nll"])
    if "clusters" in metrics:  # named after the training split's labels, scored on --split
        train = _run_data(args.run, args.data, "train", args.limit)
        reports["clusters"] = cluster_report(model, train, data, batch_size=args.batch_size)
        print(reports["clusters"])
    if wanted:
        val = _run_data(args.run, args.data, "val", args.limit) if "parzen" in wanted else None
        torch.manual_seed(args.seed)
        quality = sample_quality(model, data, net, n=args.n, metrics=wanted, val=val,
                                 batch_size=args.batch_size, progress=not args.quiet)
        for m in wanted:
            print(quality[m])
        reports.update(quality)
    if args.json:
        doc = {k: (r.__dict__ if k == "nll" else json.loads(r.to_json()))
               for k, r in reports.items()}
        Path(args.json).write_text(json.dumps(doc, indent=2))


# score's CSV columns: one tidy row per image. method and k repeat on every row so that CSVs
# of several runs concatenate (pandas.concat) without losing how each number was computed.
SCORE_COLUMNS = ("image", "log_prob_nats", "bits_per_dim", "anomaly_score", "method", "k")


def _file_order(names: list[str]) -> list[int]:
    """Row order for ``names``: relative paths sorted as the folder lists them (class
    sub-folders, then files), whatever order the data source keeps its images in."""
    from pathlib import PurePosixPath

    return sorted(range(len(names)), key=lambda i: PurePosixPath(names[i]).parts)


def cmd_score(args: argparse.Namespace) -> None:
    from genlab.metrics import bits_per_dim, check_finite, log_probs, method_of

    model = load(args.run, device=args.device)
    require(model, "log_prob")
    data = _run_data(args.run, args.images, "all", None)
    k = None if model.exact else args.k
    lp = log_probs(model, data, **({} if k is None else {"k": k}))
    check_finite(lp, data, allow_impossible=True)  # -inf: an image the model rules out
    method, k = method_of(model, k)
    paths = getattr(data, "paths", None)
    names = list(paths) if paths else [str(i) for i in range(len(lp))]
    order = _file_order(names) if paths else list(range(len(names)))
    out = Path(args.out)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SCORE_COLUMNS)
        for i in order:
            v = float(lp[i])
            writer.writerow([names[i], f"{v:.4f}", f"{bits_per_dim(-v, model.n_pixels):.5f}",
                             f"{-v:.4f}", method, "" if k is None else k])
    print(
        f"scored {len(lp)} images ({data.describe()}); mean log-likelihood "
        f"{float(lp.mean()):.2f} nats ({method}{'' if k is None else f', k={k}'}); wrote {out}"
    )


def _npz_path(path: str) -> Path:
    """Where np.savez writes ``path``: it appends .npz to a name without it."""
    out = Path(path)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def cmd_encode(args: argparse.Namespace) -> None:
    import numpy as np

    from genlab.data import Loader
    from genlab.models.base import atomic_write

    model = load(args.run, device=args.device)
    require(model, "encode")
    data = _run_data(args.run, args.data, args.split, args.limit)
    feats = [model.encode(b["x"].to(model.device)).cpu()
             for b in Loader(data, 500, shuffle=False, drop_last=False)]
    z = torch.cat(feats).numpy()
    arrays = {"z": z}
    if data.y is not None:
        arrays["y"] = data.y.numpy()
    out = _npz_path(args.out)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez adds no suffix to the temporary name
            np.savez(f, **arrays)

    atomic_write(out, write)
    print(f"wrote {z.shape[0]} feature vectors of size {z.shape[1]} to {out}")


def cmd_features(args: argparse.Namespace) -> None:
    from genlab.metrics import features

    if args.action == "export":
        if args.run is None:
            raise ValueError("features export needs the run folder: genlab features export RUN")
        weights, meta = features.export(args.run, args.to or features.WEIGHTS_DIR)
        print(f"wrote {weights} ({weights.stat().st_size / 2**20:.2f} MiB) and {meta}")
        return
    if args.run is not None:
        raise ValueError(f"features train takes no run folder ({args.run!r}): use --out")
    out = Path(args.out or f"runs/features-{features.slug(args.data)}")
    check_free(out)
    check_new_run(out)
    resolve_device(args.device)  # a missing GPU fails before any data is read
    budget = args.time_budget if args.time_budget or args.steps else "4m"
    settings = {k: _parse_value(v) for k, _, v in (kv.partition("=") for kv in args.set)}
    unknown = sorted(set(settings) - features.SETTINGS)
    if unknown:
        raise ValueError(f"a feature network has no setting {', '.join(unknown)}; its settings "
                         f"are: {', '.join(sorted(features.SETTINGS))}")
    given = {"--data": args.data, "--out": str(out), "--time-budget": args.time_budget,
             "--steps": args.steps, "--batch-size": args.batch_size, "--lr": args.lr,
             "--seed": args.seed, "--limit": args.limit}
    command = shlex.join(["genlab", "features", "train",
                          *(str(x) for k, v in given.items() if v is not None for x in (k, v)),
                          *(x for kv in args.set for x in ("--set", kv))])
    result = features.train_feature_net(
        args.data, out, time_budget=budget, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit,
        device=args.device, progress=not args.quiet, threads=args.threads, command=command,
        **settings,
    )
    net = result.net
    print(f"{net.description}: {sum(p.numel() for p in net.parameters()):,} parameters, "
          f"{result.steps} steps in {result.seconds:.0f} s")
    print(f"test accuracy {result.test_accuracy:.2%} (validation {result.val_accuracy:.2%}) on "
          f"{result.record['test_images']} test images (not binarized); run saved in {out}")


def _m_list(text: str) -> tuple[int, ...]:
    """argparse type: --typicality-m 1,5,25: batch sizes, each at least 1."""
    try:
        return tuple(_positive_int(t) for t in text.split(","))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected sizes such as 1,5,25: {e}") from None


def _ood_data(args: argparse.Namespace, model: GenerativeModel) -> tuple[Any, Any, Any]:
    """(in-distribution test, OOD, training images for typicality), all as the run's data is
    prepared (binarization, seed, shape). A corruption is made from the grey test images and
    then binarized as the run's data are."""
    from genlab.data import Dataset, binarize
    from genlab.data.seeds import generator
    from genlab.metrics import CORRUPTIONS, corrupt

    test = _run_data(args.run, args.data, "test", args.limit)
    train = _run_data(args.run, args.data, "train", args.limit or 10_000)
    if args.ood not in CORRUPTIONS:
        split = "all" if Path(args.ood).exists() else "test"
        return test, _run_data(args.run, args.ood, split, args.limit), train
    grey = _run_data(args.run, args.data, "test", args.limit, binarize=None)
    x = corrupt(grey.x, args.ood, seed=args.seed)
    if test.binarize in ("static", "threshold"):
        x = binarize(x, test.binarize, generator(args.seed))
    elif model.data_kind != "binary":  # rounded to the model's grey levels, as sample does
        levels = getattr(model, "levels", 256)
        x = torch.round(x * (levels - 1)) / (levels - 1)
    return test, Dataset(x, None, f"{test.name} ({args.ood})", "test", test.binarize,
                         test.seed), train


def cmd_ood(args: argparse.Namespace) -> None:
    from genlab.metrics import detect, plot_scores

    model = load(args.run, device=args.device)
    background = load(args.background, device=args.device) if args.background else None
    in_data, out_data, train = _ood_data(args, model)
    kwargs = {} if not model.has("log_prob") else {"k": args.k}  # for the estimates only
    report, scores = detect(model, in_data, out_data, train=train, background=background,
                            typicality_m=args.typicality_m, **kwargs)
    print(report)
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ood-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(args.ood).name)
    plot_scores(scores, out / f"{stem}.png", title=f"{report.in_data} vs {report.out_data}")
    (out / f"{stem}.json").write_text(report.to_json())
    print(f"wrote {out / (stem + '.png')} and {stem}.json")


def cmd_compare(args: argparse.Namespace) -> None:
    from genlab.metrics.report import compare, parse_metrics

    index = compare(args.runs, args.out, metrics=parse_metrics(args.metrics, args.ood),
                    n=args.n, limit=args.limit, k=args.k, device=args.device,
                    progress=not args.quiet, ood=args.ood)
    print(f"wrote {index} and {index.with_name('report.md')}")


def cmd_probe(args: argparse.Namespace) -> None:
    from genlab.metrics import probe

    model = load(args.run, device=args.device)
    require(model, "encode")
    train, val, test = (_run_data(args.run, args.data, split, args.limit)
                        for split in ("train", "val", "test"))
    report = probe(model, train, val, test, controls=not args.no_controls, seed=args.seed)
    print(report)
    if args.json:
        Path(args.json).write_text(report.to_json())


def _add_device(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--device",
        default="auto",
        help=f"{', '.join(DEVICES)} (default auto: CUDA if torch sees a GPU, else CPU)",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too (argparse would print the whole usage block first)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _subcommand(sub: Any, name: str, help: str, example: str, common: argparse.ArgumentParser,
                more: str = "") -> argparse.ArgumentParser:
    """A sub-parser whose --help ends with one example and which takes --debug too."""
    epilog = f"example:\n  {example}" + (f"\n\n{more}" if more else "")
    return sub.add_parser(
        name, help=help, description=help, parents=[common],
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genlab", description="Train, sample, score and compare generative models "
                "of images. `genlab COMMAND --help` shows each command with an example.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version",
                   version=f"genlab {__version__} (torch {torch.__version__})")
    # --debug after the subcommand too; SUPPRESS keeps a sub-parser from resetting the top one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, example: str, more: str = "") -> argparse.ArgumentParser:
        return _subcommand(sub, name, help, example, common, more)

    add("list", "models, what each supports, its paper", "genlab list").set_defaults(fn=cmd_list)

    s = add("params", "parameter counts of the per-pixel baselines", "genlab params --pixels 784")
    s.add_argument("--pixels", type=_pixels, default=784)
    s.set_defaults(fn=cmd_params)

    s = add("train", "train a model; writes a run folder",
            "genlab train nade --data mnist --preset cpu --time-budget 10m --out runs/nade",
            more=f"data sources (--data):\n{describe_sources()}")
    s.add_argument("model", nargs="?", default=None, help=f"one of: {', '.join(MODELS)}")
    s.add_argument("--data", help=sources_help() + " (default mnist)")
    s.add_argument("--preset", choices=("cpu", "paper"), help="default cpu")
    s.add_argument("--out", help="run folder (default runs/MODEL)")
    s.add_argument("--steps", type=_positive_int)
    s.add_argument("--time-budget", type=_duration, help="e.g. 90s, 10m, 1h")
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--lr", type=_positive_float)
    s.add_argument("--weight-decay", type=_non_negative_float,
                   help="L2 penalty on the weights (Adam's weight_decay; default 0)")
    s.add_argument("--clip", type=_positive_float, help="clip the gradient norm to this")
    s.add_argument("--schedule", choices=("constant", "cosine", "linear"))
    s.add_argument("--seed", type=int)
    s.add_argument("--binarize", choices=("static", "dynamic", "threshold"))
    s.add_argument(
        "--patience",
        type=_positive_int,
        help="stop after N validations without improvement; the best weights are kept",
    )
    s.add_argument("--val-every", type=_count,
                   help="validate every N steps (default 500); 0: never (the last weights kept)")
    s.add_argument("--limit", type=_positive_int, help="use only the first N images of each split")
    s.add_argument(
        "--sample-every",
        type=_count,
        help="a sample grid every N steps and at the end (default 500); 0: no grids",
    )
    s.add_argument(
        "--sample-n", type=_positive_int, help="images per grid (default: the model's, mostly 64)"
    )
    s.add_argument(
        "--ckpt-every",
        type=_interval,
        help="checkpoint every N steps (500), every so long (5m) or both (default 500,5m)",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        type=_setting,
        metavar="KEY=VALUE",
        help="model setting, e.g. --set hidden=100",
    )
    s.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="bf16: bfloat16 autocast of the training loss, CUDA only (default fp32)",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out; budgets, --lr, --clip and intervals may change",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=_positive_int,
                   help="torch threads (default: the cores other processes leave idle)")
    _add_device(s)
    s.set_defaults(fn=cmd_train, check=_check_train)

    s = add("sample", "write a grid of samples (.png, .jpg or .webp), or of completions",
            "genlab sample runs/nade -n 64 --out grid.png",
            more="completion: genlab sample runs/nade --complete mnist --mask bottom")
    s.add_argument("run")
    s.add_argument("-n", type=_positive_int, default=64)
    s.add_argument("--out", help="default RUN/samples.png, or RUN/completions.png")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--complete", metavar="IMAGES",
        help="complete these images instead: an image file, a folder, .npz or data set name",
    )
    s.add_argument(
        "--mask", default="bottom",
        help="the part to hide and redraw: bottom, top, left, right, random:P or a mask "
        "image (white = hidden); default bottom",
    )
    s.add_argument("--n-completions", type=_positive_int, default=4, help="per image (4)")
    s.add_argument(
        "--sweeps", type=int,
        help="MCMC sweeps for masks the model cannot complete exactly (default: the model's)",
    )
    s.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="of a data set (default test; all for a folder)")
    s.add_argument("--limit", type=_positive_int, default=8, help="images to complete (8)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--text", action="append", metavar="SENTENCE",
                   help="sample conditioned on this sentence (n per sentence; repeatable)")
    s.add_argument("--patches", nargs="+", metavar="PNG",
                   help="sample conditioned on 1-3 key patch images")
    _add_device(s)
    s.set_defaults(fn=cmd_sample)

    s = add("translate", "translate images to the other domain or to attributes",
            "genlab translate runs/cyclegan mnist:mnist-colour --to b --out translated/",
            more='attributes: genlab translate runs/stargan mnist-attrs '
                 '--attrs "colour=red,rotation=30" --out translated/')
    s.add_argument("run")
    s.add_argument("input", help="images: " + sources_help())
    s.add_argument("--to", choices=("a", "b"), help="the target domain")
    s.add_argument("--attrs", action="append", metavar="NAME=VALUE,...",
                   help="target attributes (repeatable: one output row each), e.g. "
                   "colour=red,rotation=30")
    s.add_argument("--out", required=True, help="folder for one PNG per input and grid.png")
    s.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="of a data set (default test; all for a folder)")
    s.add_argument("--limit", type=_positive_int, default=8, help="images to translate (8)")
    s.add_argument("--seed", type=int, default=0)
    _add_device(s)
    s.set_defaults(fn=cmd_translate)

    s = add("eval", "test NLL in nats and bits/dim, or the quality of the samples (FID, KID, "
            "precision/recall, classifier score) on genlab's feature network",
            "genlab eval runs/nade --metrics nll,fid -n 2000")
    s.add_argument("run")
    s.add_argument(
        "--metrics", help="comma-separated, from " + ", ".join(EVAL_METRICS)
        + " (default: nll for models with log_prob, else fid,kid,pr,cs; clusters: the "
        "errors of a model's clusters named after the training split's labels)")
    s.add_argument("-n", type=_positive_int, default=10_000,
                   help="samples for the sample-quality metrics (default 10000)")
    s.add_argument("--features", help="feature network: mnist, fashion-mnist or a run folder "
                   "made by `genlab features train` (default: the one for the run's data)")
    s.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    s.add_argument("--data", help="default: the data the run was trained on")
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--limit", type=_positive_int,
                   help="the first N images of the split (and, for clusters, of train)")
    s.add_argument(
        "-k", type=_importance_samples, default=None,
        help="samples for estimated likelihoods (default: the model's; VAE 5000, RNADE 1)",
    )
    s.add_argument("--batch-size", type=_positive_int, default=500)
    s.add_argument("--json", help="also write the report as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(s)
    s.set_defaults(fn=cmd_eval)

    s = add("score", "per-image log-likelihood / anomaly score as CSV, in file order; columns "
            + ", ".join(SCORE_COLUMNS), "genlab score runs/nade images/ --out scores.csv")
    s.add_argument("run")
    s.add_argument("images", help=sources_help())
    s.add_argument("--out", default="scores.csv")
    s.add_argument(
        "-k", type=_importance_samples, default=1000,
        help="samples for estimated likelihoods (latent models, RNADE); default 1000",
    )
    _add_device(s)
    s.set_defaults(fn=cmd_score)

    s = add("encode", "features of a dataset as .npz (z, y)",
            "genlab encode runs/vae --data mnist --out feats.npz")
    s.add_argument("run")
    s.add_argument("--data")
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--limit", type=_positive_int)
    s.add_argument("--out", default="features.npz", help="a .npz file (.npz is appended)")
    _add_device(s)
    s.set_defaults(fn=cmd_encode)

    s = add("features", "train genlab's own feature network (a classifier) for FID and its "
            "relatives, or export one for shipping",
            "genlab features train --data mnist --time-budget 5m --out runs/features-mnist",
            more="export: genlab features export runs/features-mnist  "
            "(into genlab/metrics/weights/)")
    s.add_argument("action", choices=("train", "export"))
    s.add_argument("run", nargs="?", help="export: the run folder to export")
    s.add_argument("--data", default="mnist", help="labelled data: " + sources_help())
    s.add_argument("--out", help="run folder (default runs/features-DATA)")
    s.add_argument("--to", help="export: folder to write into (default the package's weights)")
    s.add_argument("--time-budget", type=_duration, help="e.g. 5m (default 4m)")
    s.add_argument("--steps", type=_positive_int)
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--lr", type=_positive_float, default=3e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=_positive_int, help="use only the first N images of each split")
    s.add_argument("--set", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                   help="network setting: channels, dim, dropout, max_shift, binarize_fraction")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=_positive_int,
                   help="torch threads (default: the cores other processes leave idle)")
    _add_device(s)
    s.set_defaults(fn=cmd_features)


    s = add("ood", "out-of-distribution detection: AUROC, AUPR and FPR@95 of every score the "
            "model supports, and a histogram of the scores",
            "genlab ood runs/nade --data mnist --ood fashion-mnist --limit 2000",
            more="scores: log-likelihood (bits/dim ranks the same), typicality on batches of M "
            "(Nalisnick et al. 2019b),\nlikelihood ratio with --background (Ren et al. 2019; "
            "train it on --data perturb:0.2:SOURCE),\ninput complexity (the likelihood ratio "
            "against the PNG compressor, Serrà et al. 2020),\nthe discriminator's logit for GANs")
    s.add_argument("run")
    s.add_argument("--data", help="in-distribution data (default: the run's), its test split")
    s.add_argument("--ood", required=True,
                   help=f"{sources_help()}; or a corruption of the test split: noise, "
                   "constant, flip (upside down), invert")
    s.add_argument("--background", metavar="RUN",
                   help="a model trained on perturbed inputs: adds the likelihood ratio")
    s.add_argument("--typicality-m", type=_m_list, default=(1, 5, 25),
                   help="batch sizes of the typicality test (default 1,5,25)")
    s.add_argument("--limit", type=_positive_int,
                   help="images of each test set (and training images for H; default 10000)")
    s.add_argument("-k", type=_importance_samples, default=1000,
                   help="samples for estimated likelihoods (VAE: IWAE); default 1000")
    s.add_argument("--seed", type=int, default=0, help="of the corruptions")
    s.add_argument("--out", help="folder for ood-OOD.png and .json (default the run folder)")
    _add_device(s)
    s.set_defaults(fn=cmd_ood)
    s = add("probe", "linear probe (logistic regression) and 10-NN accuracy of encode features, "
            "beside raw pixels and the same encoder with random weights",
            "genlab probe runs/vae --data mnist --limit 10000")
    s.add_argument("run")
    s.add_argument("--data", help="labelled data (default: the run's)")
    s.add_argument("--limit", type=_positive_int, help="images of each split")
    s.add_argument("--no-controls", action="store_true",
                   help="skip the raw-pixel and random-weight controls")
    s.add_argument("--seed", type=int, default=0, help="of the random-weight encoder")
    s.add_argument("--json", help="also write the report as JSON")
    _add_device(s)
    s.set_defaults(fn=cmd_probe)

    s = add("compare", "a static HTML (and Markdown) report of several runs: data, size, "
            "training, test NLL, FID/KID/precision/recall, OOD AUROC, probe accuracy, sample "
            "grid, loss curve",
            "genlab compare runs/nade runs/gan --out report/ --ood fashion-mnist")
    s.add_argument("runs", nargs="+", metavar="RUN")
    s.add_argument("--out", required=True, help="folder for index.html, report.md and images")
    s.add_argument("--metrics", help="comma-separated, from nll, fid (FID, KID and "
                   "precision/recall from one draw of samples), ood, probe; default all (ood "
                   "with --ood)")
    s.add_argument("--ood", help="OOD source for the AUROC column (a data source, e.g. "
                   "fashion-mnist, or a folder); scored as each run's data is prepared")
    s.add_argument("-n", type=_positive_int, default=2000,
                   help="samples for the sample-quality metrics (default 2000)")
    s.add_argument("--limit", type=_positive_int, help="score only N test images (default all)")
    s.add_argument("-k", type=_importance_samples, default=100,
                   help="samples for estimated likelihoods (default 100, labelled in the report)")
    s.add_argument("--quiet", action="store_true",
                   help="only a line per run, no progress of the metrics")
    _add_device(s)
    s.set_defaults(fn=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.model is None and not args.resume:
        parser.error("train needs a model name (or --resume --out RUN)")
    try:
        if getattr(args, "check", None) is not None:
            args.check(args)
        args.fn(args)
    except KeyboardInterrupt as e:
        # fit's Interrupted says at which step it stopped and how to resume; 130 or 143.
        print(f"genlab: {str(e) or 'interrupted (a run folder resumes with --resume)'}",
              file=sys.stderr)
        return getattr(e, "exit_code", 130)
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
