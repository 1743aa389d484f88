"""``fit``: the one training loop, for every model.

It knows nothing about models beyond the protocol in ``models/base.py``: ``train_step`` calls
``model.on_step(step)`` and, for each player in ``model.players_at(step)``, zeroes that player's
optimizer, takes ``model.loss(batch, player)``, backpropagates, checks, clips, steps and calls
``model.after_step(step, player)``. Around that: step and time budgets, validation by the evaluator
the model's capabilities select (early stopping, best weights), sample grids, ``metrics.jsonl`` and
TensorBoard, a progress bar (plain log lines when not on a terminal), and a run folder that is
locked while a run trains in it, checkpointed every N steps, every few minutes and on
SIGINT/SIGTERM, and resumed exactly. A step whose loss, gradients or updated weights are not finite
is never checkpointed. Launched under ``torchrun``, the same loop trains data-parallel (gradients
averaged with ``all_reduce``, buffers such as BatchNorm statistics synchronised after each step).
The model and every batch sit on the requested device (``genlab.devices``); ``precision="bf16"``
autocasts the training loss on CUDA.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlab.data import Dataset, Loader
from genlab.devices import autocast, check_precision, fork_rng, resolve_device, to_device
from genlab.images import save_grid
from genlab.metrics.likelihood import validate
from genlab.models.base import (
    GenerativeModel,
    RunError,
    atomic_write,
    check_new_run,
    no_space,
    read_config,
)
from genlab.threads import ThreadGovernor

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# Without a terminal the progress is one plain line every PLAIN_EVERY seconds.
PLAIN_EVERY = 10.0
# Checkpoints when ckpt_every is not given: every 500 steps and every 5 minutes.
CKPT_EVERY = "500,5m"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, gradient or weight...)."""


class Interrupted(KeyboardInterrupt):
    """``fit`` was stopped by SIGINT or SIGTERM, after checkpointing its run folder.

    A KeyboardInterrupt, so a script that does not catch it stops as it would on Ctrl-C, and
    ``except Exception`` does not swallow it. ``exit_code`` is 128 + the signal number (130 for
    SIGINT, 143 for SIGTERM); ``resume_hint`` is how to continue (the CLI puts its command line).
    """

    def __init__(
        self,
        signum: int,
        step: int,
        saved_step: int | None,
        folder: Path | None,
        history: History,
    ) -> None:
        super().__init__(signum)
        self.signum, self.step, self.saved_step, self.folder = signum, step, saved_step, folder
        self.history = history
        self.resume_hint = f"fit(..., out={str(folder)!r}, resume=True)"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        what = f"stopped by {signal.Signals(self.signum).name} at step {self.step}"
        if self.folder is None:
            return f"{what}; nothing saved (no run folder: pass out=...)"
        if self.saved_step is None:
            return f"{what}; no checkpoint was written"
        if self.saved_step == self.step:
            saved = "checkpoint saved"
        else:  # a second signal cut the final checkpoint short: the one before stands
            saved = f"last checkpoint at step {self.saved_step}"
        return f"{what}; {saved}; resume with: {self.resume_hint}"


@dataclass
class History:
    """What ``fit`` returns: one record per logged step, plus the final state."""

    records: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    elapsed: float = 0.0
    # why the loop ended: "steps", "time budget", "early stopping", "SIGINT", "SIGTERM"
    stopped: str = ""
    best_val: float | None = None
    since_best: int = 0  # validations since best_val improved (for patience)
    best_state: dict[str, Tensor] | None = field(default=None, repr=False)
    best_step: int | None = None  # the step best_state was taken at (None: not known)

    def observe(self, val: float, model: GenerativeModel, step: int | None = None) -> None:
        """A validation score (lower is better) at ``step``: keep the best weights, count the
        others."""
        if self.best_val is None or val < self.best_val:
            self.best_val, self.since_best, self.best_step = val, 0, step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1


def parse_duration(text: str | float | None) -> float | None:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t[-1] in units else float(t)
    except (ValueError, IndexError):
        raise ValueError(f"cannot read the duration {text!r}: use e.g. 90s, 10m or 1.5h") from None


def parse_interval(value: int | str) -> tuple[int | None, float | None]:
    """How often to checkpoint: 500 (steps), '5m' (a duration) or both, '500,5m'.

    Returns (every this many steps or None, every this many seconds or None).
    """
    every_steps: int | None = None
    every_seconds: float | None = None
    parts = [] if isinstance(value, bool) else str(value).split(",")
    for part in (p.strip().lower() for p in parts):
        if part.isdigit() and int(part) > 0:
            every_steps = int(part)
        elif re.fullmatch(r"\d+(\.\d*)?[smh]", part) and float(part[:-1]) > 0:
            every_seconds = parse_duration(part)
        else:
            parts = []
            break
    if not parts:
        raise ValueError(
            f"cannot read the checkpoint interval {value!r}: give steps (500), "
            "a duration (5m) or both (500,5m)"
        )
    return every_steps, every_seconds


# FID validation: samples per validation, and the seed they are drawn with (the same noise each
# time, so a change in the score is the model's, not the draw's).
FID_SAMPLES = 1000
FID_SEED = 12345


@dataclass(frozen=True)
class Evaluator:
    """A validation score ``fit`` tracks for early stopping and best weights (lower is better)."""

    key: str  # its name in metrics.jsonl and TensorBoard
    score: Callable[..., float]  # (model, data, batch_size=..., limit=...) -> float


class _FIDScore:
    """FID of ``n`` samples against (the first ``limit`` images of) the validation data, on
    genlab's feature network. The real side's statistics are computed at the first call and
    kept (one evaluator per fit: once per fit); samples are drawn under a forked RNG with a
    fixed seed, so validating never moves the training RNG stream and resume stays exact."""

    def __init__(self, net: torch.nn.Module, n: int, seed: int = FID_SEED) -> None:
        self.net, self.n, self.seed = net, n, seed
        self._reference: tuple[tuple[int, int | None], Any] | None = None

    def _real(self, model: GenerativeModel, data: Dataset, limit: int | None) -> Any:
        from genlab.data import binarize
        from genlab.metrics.samples import fid_reference

        key = (id(data), limit)
        if self._reference is None or self._reference[0] != key:
            x = data.x[:limit] if limit is not None else data.x
            if model.data_kind == "binary" and not bool(((x == 0) | (x == 1)).all()):
                # Grey images ("dynamic" data) against binary samples: one fixed draw, like
                # the training batches, so FID compares like with like.
                x = binarize(x, "static", torch.Generator().manual_seed(self.seed))
            real = Dataset(x, name=data.name, split=data.split)
            # In memory only: per fit, and no validation split written to the user's cache.
            self._reference = key, fid_reference(real, self.net, cache=False)
        return self._reference[1]

    def __call__(
        self, model: GenerativeModel, data: Dataset, batch_size: int = 256,
        limit: int | None = None,
    ) -> float:  # fmt: skip
        from genlab.metrics.samples import draw, fid_of

        self.net.to(model.device if model.device.type != "mps" else "cpu")  # float64 stats
        metric = self._real(model, data, limit)
        was_training = model.training
        model.eval()
        try:
            with fork_rng(model.device):
                torch.manual_seed(self.seed)
                images = draw(model, self.n, batch_size=max(batch_size, 500), progress=False)
        finally:
            model.train(was_training)
        return fid_of(images, metric, self.net)


def evaluator_for(
    model: GenerativeModel, val_data: Dataset | None = None, *, fid_samples: int = FID_SAMPLES
) -> Evaluator | None:
    """The validation a model's capabilities allow: held-out NLL for likelihood models (their
    loss on the validation data); for models that only sample, FID of ``fid_samples`` samples
    when genlab has a feature network for ``val_data``'s source (``val_data.origin``); else
    none (a hand-built dataset, or data without a shipped feature network)."""
    if model.has("log_prob"):
        return Evaluator("val_loss", validate)
    if not model.has("sample") or val_data is None or fid_samples <= 0:
        return None
    from genlab.metrics.features import feature_net_for

    source = (getattr(val_data, "origin", None) or {}).get("source")
    if source is None:
        return None
    try:
        # Building the network initialises its layers from the global RNG before the shipped
        # weights replace them: fork it, or asking for validation would change the training.
        with torch.random.fork_rng(devices=[]):
            net = feature_net_for(str(source))
    except RunError:  # no feature network for this data: nothing to validate with, silently
        return None
    if tuple(net.shape) != tuple(model.shape):
        return None
    return Evaluator("val_fid", _FIDScore(net, fid_samples))


def train_step(
    model: GenerativeModel,
    optimizers: dict[str, torch.optim.Optimizer],
    batch: dict[str, Tensor],
    step: int,
    *,
    clip: float | None = None,
    world: int = 1,
    precision: str = "fp32",
) -> dict[str, float]:
    """One training step: each player in ``model.players_at(step)`` in turn; returns the logs.

    A player whose loss or gradient norm is not finite is not stepped; one whose weights the
    update made non-finite (Adam can overflow them) is left as it is. Both raise TrainingError
    naming the step and the player, so ``fit`` never checkpoints such a state. ``batch`` is on
    the model's device; ``precision="bf16"`` autocasts the loss.
    """
    model.on_step(step)
    logs: dict[str, float] = {}
    for player in model.players_at(step):
        opt = optimizers[player]
        params = list(model.parameters_for(player))
        opt.zero_grad(set_to_none=True)
        with autocast(model.device, precision):
            loss, extra = model.loss(batch, player)
        loss.backward()
        # Under DDP every rank checks the averaged loss, so all ranks stop at the same step.
        seen = _average_gradients(params, world, loss.detach()) if world > 1 else loss.detach()
        hint = "lower the learning rate (--lr) or set gradient clipping (--clip)"
        if not torch.isfinite(seen):
            raise TrainingError(
                f"the loss of player {player!r} became {float(seen)} at step {step}: {hint}"
            )
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if not torch.isfinite(norm):
            raise TrainingError(
                f"the gradients of player {player!r} became non-finite (norm {float(norm)}) "
                f"at step {step}: {hint}"
            )
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        try:
            opt.step()
        except RuntimeError as e:  # a step size beyond float32 (an absurd lr) fails in Adam
            if "overflow" not in str(e):
                raise
            raise TrainingError(
                f"the update of player {player!r} at step {step} overflowed ({e}): {hint}"
            ) from e
        bad = _non_finite(model, params)
        if bad is not None:
            raise TrainingError(
                f"the update of player {player!r} at step {step} made the weight {bad} "
                f"non-finite: {hint}"
            )
        model.after_step(step, player)
        key = "loss" if player == "model" else f"loss_{player}"
        logs[key] = float(loss.detach())
        logs.update({(k if player == "model" else f"{player}/{k}"): v for k, v in extra.items()})
    return logs


def optimizers_for(model: GenerativeModel, lr: float,
                   weight_decay: float = 0.0) -> dict[str, torch.optim.Optimizer]:
    """One Adam per player over the weights it owns, with the model's settings (e.g. beta1 0.5
    for the games, a player's own learning rate). On CPU and CUDA the fused implementation: one
    pass over each weight for the whole update instead of a dozen elementwise ones, the same
    algorithm (on an MLP GAN about a tenth of the step time on CPU)."""
    fused = model.device.type in ("cpu", "cuda")
    return {
        p: torch.optim.Adam(
            list(model.parameters_for(p)),
            **{"lr": lr, "weight_decay": weight_decay, "fused": fused,
               **model.optimizer_settings(p)},
        )
        for p in model.players
    }


def _non_finite(model: GenerativeModel, params: list[Tensor]) -> str | None:
    """The name of the first of ``params`` holding a NaN or inf, or None (the usual case)."""
    # The 2-norm of all of them is one cheap pass (the max-abs norm is ten times slower on CPU);
    # only when it is not finite are the tensors looked at one by one, to name the culprit.
    if torch.isfinite(torch.nn.utils.get_total_norm([p.detach() for p in params])):
        return None
    wanted = {id(p) for p in params}
    for name, p in model.named_parameters():
        if id(p) in wanted and not bool(torch.isfinite(p).all()):
            return repr(name)
    return None  # finite weights so large that their squares overflow: not our business


def fit(
    model: GenerativeModel,
    data: Dataset,
    *,
    steps: int | None = None,
    time_budget: str | float | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    clip: float | None = None,
    seed: int = 0,
    val_data: Dataset | None = None,
    val_every: int = 500,
    val_limit: int | None = 2000,
    fid_samples: int = FID_SAMPLES,
    patience: int | None = None,
    restore_best: bool = True,
    sample_every: int | None = None,
    sample_n: int | None = None,
    ckpt_every: int | str = CKPT_EVERY,
    log_every: int = 50,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    threads: int | None = None,
) -> History:
    """Train ``model`` on ``data`` until ``steps`` or ``time_budget`` runs out (whichever first).

    ``schedule`` is "constant", "cosine" (decays to 0 over the step or time budget) or "linear"
    (constant for the first half, then linearly to 0). ``weight_decay``: an L2 penalty
    (weight_decay / 2) |theta|^2 on every player's weights, as Adam's ``weight_decay`` adds it
    (e.g. the background model of the likelihood-ratio OOD score, Ren et al. 2019).
    ``val_data`` is scored by :func:`evaluator_for` every ``val_every`` steps (0: never, and
    ``patience`` then has nothing to count): held-out NLL for
    likelihood models ("val_loss"), FID of ``fid_samples`` samples for samplers whose data has
    a feature network ("val_fid"); ``patience``: stop after that many validations without
    improvement.
    ``restore_best``: with validation, end with (and save) the weights that validated best;
    ``trainer.pt`` still holds the last state, so ``resume`` continues from there.
    ``sample_every``: a grid of ``sample_n`` images (default: the model's ``sample_n_default``,
    else 64) every that many steps and at the end; None: only at the end; 0: never.
    ``out``: run folder (config.json, model.safetensors, trainer.pt, metrics.jsonl, TensorBoard
    events, samples/step-N.png), locked while training. ``ckpt_every``: checkpoint every N
    steps (500), every so long ("5m") or both ("500,5m", the default); also on SIGINT/SIGTERM,
    after which fit raises :class:`Interrupted`. ``resume=True`` continues a stopped or killed
    run exactly where its last checkpoint left it; the settings that can change (lr, clip,
    budgets, intervals...) take the new values, recorded in config.json. ``run_config`` (data
    and training settings) is stored in config.json; without a "data" entry the data's
    ``origin`` (set by ``genlab.data.load``) is, so ``genlab eval RUN`` works on the run.
    ``device``: "auto" (CUDA if there is a GPU, else CPU), "cpu", "cuda", "cuda:N" or "mps"; the
    model is moved there and stays there. ``precision``: "fp32", or "bf16" (CUDA only) for
    bfloat16 autocast around the training loss; validation and log_prob stay in full precision.
    ``threads``: torch threads; by default the idle cores, re-measured (genlab.threads).
    """
    budget = parse_duration(time_budget)
    if steps is None and budget is None:
        raise ValueError("give a step budget (steps=...) or a time budget (time_budget='10m')")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"unknown schedule {schedule!r}: use constant, cosine or linear")
    if sample_every is not None and sample_every < 0:
        raise ValueError(f"sample_every must be 0 (no grids) or more, got {sample_every}")
    if val_every < 0:
        raise ValueError(f"val_every must be 0 (no validation) or more, got {val_every}")
    ckpt_steps, ckpt_seconds = parse_interval(ckpt_every)
    settings = {  # what config.json records as "fit", so the run can be resumed or redone
        "steps": steps, "time_budget": time_budget, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "schedule": schedule, "clip": clip, "seed": seed,
        "val_every": val_every, "val_limit": val_limit, "fid_samples": fid_samples,
        "patience": patience,
        "restore_best": restore_best, "sample_every": sample_every, "sample_n": sample_n,
        "ckpt_every": ckpt_every, "log_every": log_every, "precision": precision,
    }  # fmt: skip
    grid_n = sample_n or getattr(model, "sample_n_default", 64)
    folder = Path(out) if out is not None else None
    if resume and folder is None:
        raise ValueError("resume needs the run folder (out=...)")
    if resume and not (folder / "trainer.pt").exists():
        raise RunError(f"nothing to resume in {folder}: trainer.pt is missing")
    device = resolve_device(device)
    check_precision(precision, device)
    model.to(device)
    rank, world = _distributed_setup(model, device)
    torch.manual_seed(seed)
    random.seed(seed)
    loader = Loader(data, batch_size, seed=seed, rank=rank, world_size=world)
    optimizers = optimizers_for(model, lr, weight_decay)
    # The learning rates fit was asked for; resume must not keep the checkpoint's.
    base_lrs = {p: [g["lr"] for g in o.param_groups] for p, o in optimizers.items()}
    evaluator = (
        evaluator_for(model, val_data, fid_samples=fid_samples)
        if val_data is not None and val_every else None
    )
    history = History()
    run = None
    if folder is not None and rank == 0:
        run = _RunFolder(folder, ckpt_steps, ckpt_seconds)
    bar: _Progress | None = None
    governor = ThreadGovernor(threads)
    try:
        if run is not None:
            run.lock()  # before anything reads or writes the folder
        if resume:
            _restore(folder, model, optimizers, history)
        elif folder is not None:
            check_new_run(folder)
        train_config = _train_config(folder, resume, run_config, settings, data, history.step)
        if world > 1:  # every rank has checked the folder before rank 0 writes into it
            import torch.distributed as dist

            dist.barrier()
        if run is not None:
            run.start(model, optimizers, history, train_config, fresh=not resume)

        def interrupted(signum: int) -> Interrupted:
            saved = run.saved_step if run is not None else None
            return Interrupted(signum, history.step, saved, folder, history)

        bar = _Progress(progress and rank == 0, steps, budget, history, batch_size * world)
        t_start = time.perf_counter() - history.elapsed
        model.train()
        with _StopSignals(interrupted) as stop:
            while True:
                governor.tick()
                step = history.step
                history.elapsed = time.perf_counter() - t_start
                reason = _stop_reason(step, steps, history.elapsed, budget, stop, world, model)
                if reason is not None:
                    history.stopped = reason
                    break
                factor = _lr_factor(schedule, step, steps, history.elapsed, budget)
                for p, opt in optimizers.items():
                    for g, base in zip(opt.param_groups, base_lrs[p], strict=True):
                        g["lr"] = base * factor
                batch = to_device(loader.batch(step), device)
                logs = train_step(
                    model, optimizers, batch, step, clip=clip, world=world, precision=precision
                )
                if world > 1:
                    _sync_buffers(model)
                history.step = step = step + 1
                elapsed = time.perf_counter() - t_start
                bar.update(step, elapsed, logs)
                # After a signal only what the resumed run would not redo happens here: logs and
                # validation (its best weights are state); grids and checkpoints wait. Under DDP
                # the ranks agree on stopping at the next step, so they all do the same.
                stopping = stop.signum is not None and world == 1

                record: dict[str, Any] | None = None
                if step % log_every == 0:
                    record = {"step": step, "time": round(elapsed, 3), **logs}
                if evaluator is not None and step % val_every == 0:
                    val = evaluator.score(
                        model, val_data, batch_size=max(batch_size, 256), limit=val_limit
                    )
                    history.observe(val, model, step)
                    record = {**(record or {"step": step}), evaluator.key: val}
                    bar.note(f"step {step}: {evaluator.key} {val:.4g}")
                if record is not None:
                    history.records.append(record)
                    if run is not None:
                        run.log(record)
                if run is not None and not stopping:
                    if sample_every and step % sample_every == 0:
                        run.grid(model, step, grid_n, bar)
                    if run.checkpoint_due(step):
                        history.elapsed = elapsed
                        run.checkpoint(model, optimizers, history, train_config)
                if patience is not None and history.since_best >= patience:
                    history.stopped = "early stopping"
                    break

            history.elapsed = time.perf_counter() - t_start
            if stop.signum is not None:
                history.stopped = signal.Signals(stop.signum).name
            if run is not None:
                run.checkpoint(model, optimizers, history, train_config)
            stop.immediate = True  # the run is saved: a signal from here on stops at once
            # (Not after a resume with validation turned off: the last weights are asked for.)
            restored = restore_best and evaluator is not None and history.best_state is not None
            if restored:
                # trainer.pt keeps the last state for --resume; the model and its saved weights
                # are the ones that did best on validation data (what early stopping is for).
                model.load_state_dict(history.best_state)
                if run is not None:
                    key = evaluator.key if evaluator is not None else "val_loss"
                    run.save_weights(model, history, train_config, key)
            if run is not None and sample_every != 0 and stop.signum is None:
                # The last grid shows the saved model: redrawn if the best weights replaced
                # the last step's, and not drawn twice when they are the same.
                if (restored and history.best_step != history.step) or (
                        run.last_grid != history.step):
                    run.grid(model, history.step, grid_n, bar)
                run.pictures(model, val_data if val_data is not None else data)
            bar.close(history)
            if world > 1:
                # Rank 0 writes files after the last step; ranks that exit or tear down the
                # process group before it is done make gloo abort it.
                import torch.distributed as dist

                dist.barrier()
            model.eval()
            if stop.signum is not None:
                raise interrupted(stop.signum)
    except TrainingError as e:
        if run is not None and run.saved_step is not None:
            e.args = (f"{e}; {folder} keeps the last good checkpoint (step {run.saved_step})",)
        raise
    finally:
        governor.close()
        if bar is not None:
            bar.close(history)
        if run is not None:
            run.close()
    return history


def _stop_reason(
    step: int,
    steps: int | None,
    elapsed: float,
    budget: float | None,
    stop: _StopSignals,
    world: int,
    model: GenerativeModel,
) -> str | None:
    """Why the loop ends before ``step``, or None. Under DDP the ranks agree (their clocks and
    signals differ), since one rank leaving the loop alone would hang the others."""
    if steps is not None and step >= steps:
        return "steps"
    code = stop.signum or (1 if budget is not None and elapsed >= budget else 0)
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([code], device=model.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag)
        if code > 1 and stop.signum is None:
            stop.signum = code
    if code == 0:
        return None
    return "time budget" if code == 1 else signal.Signals(code).name


def _lr_factor(
    schedule: str, step: int, steps: int | None, elapsed: float, budget: float | None
) -> float:
    """The learning rate over its base value: a pure function of progress, so resume is exact."""
    if schedule == "constant":
        return 1.0
    frac = max(step / steps if steps else 0.0, elapsed / budget if budget else 0.0)
    if schedule == "linear":  # constant for the first half, then linearly to 0 (CycleGAN)
        return min(1.0, 2 * (1 - min(frac, 1.0)))
    return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))  # cosine, to 0 at the end


# ---- signals -------------------------------------------------------------------------------


class _StopSignals:
    """SIGINT and SIGTERM only note the signal: the loop finishes its step, checkpoints and
    stops. A second signal, or one once the final checkpoint is written (``immediate``), raises
    at once; an interrupted write leaves the checkpoint before it intact. The previous handlers
    come back on exit; a signal the caller ignores (SIG_IGN) stays ignored."""

    def __init__(self, interrupted: Callable[[int], Interrupted]) -> None:
        self.signum: int | None = None
        self.immediate = False
        self._interrupted = interrupted
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # only there can Python
            for s in STOP_SIGNALS:
                old = signal.getsignal(s)
                if old != signal.SIG_IGN:
                    self._previous[s] = old
                    signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None or self.immediate:
            raise self._interrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, old in self._previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


# ---- the run folder ------------------------------------------------------------------------


class _RunFolder:
    """Everything ``fit`` writes into a run folder (rank 0 only): a lock held while training,
    config.json and weights, metrics.jsonl, TensorBoard, sample grids and checkpoints."""

    def __init__(self, folder: Path, every_steps: int | None, every_seconds: float | None):
        self.folder = folder
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.saved_step: int | None = None  # step of the last checkpoint written
        self.last_grid: int | None = None
        self._last_write = time.monotonic()
        self._lock_fd: int | None = None
        self._writer: Any = None

    def lock(self) -> None:
        """An exclusive flock on ``.lock``: a second run in the folder is refused; the kernel
        drops the lock of a killed run, so a stale one is simply taken over."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        _flock(fd, self.folder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start(
        self,
        model: GenerativeModel,
        optimizers: dict[str, torch.optim.Optimizer],
        history: History,
        train_config: dict[str, Any],
        fresh: bool,
    ) -> None:
        """Clear what a killed run left behind, then write the starting state."""
        samples = self.folder / "samples"
        samples.mkdir(exist_ok=True)
        for tmp in [*self.folder.glob(".*.tmp"), *samples.glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)  # half-written files of a killed run (we hold the lock)
        step = history.step
        for png in samples.glob("step-*.png"):  # grids of steps the resumed run will redo
            if png.stem[5:].isdigit() and int(png.stem[5:]) > step:
                png.unlink()
        _truncate_metrics(self.folder / "metrics.jsonl", step)
        if fresh:  # a run stopped before its first periodic checkpoint can still be resumed
            self.checkpoint(model, optimizers, history, train_config)
        else:
            model.save(self.folder, extra={"train": train_config, "step": step})
            self.saved_step = step
        # Events after the checkpoint are hidden, so a resumed run shows no stale curve.
        self._writer = _tensorboard(self.folder, purge_step=step + 1 if step else None)

    def log(self, record: dict[str, Any]) -> None:
        path = self.folder / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if no_space(e):
                raise RunError(f"no space left on device writing {path}") from None
            raise
        if self._writer is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, int | float):
                    self._writer.add_scalar(k, v, record["step"])

    def grid(self, model: GenerativeModel, step: int, n: int, bar: _Progress) -> None:
        if not model.has("sample"):  # a translation-only model: its pictures() show it
            return
        bar.note(f"sampling {n} images", status=True)
        # Sampling must not disturb the training RNG stream, or resume would not be exact.
        with fork_rng(model.device):
            torch.manual_seed(step)
            model.eval()
            x = model.sample(n)
            model.train()
        save_grid(x, self.folder / "samples" / f"step-{step}.png")
        self.last_grid = step
        bar.note("", status=True)

    def pictures(self, model: GenerativeModel, data: Dataset) -> None:
        """The model's own figures of the finished run (``model.pictures``), beside its grids."""
        with fork_rng(model.device):
            torch.manual_seed(0)
            model.eval()
            model.pictures(self.folder, data)
            model.train()

    def checkpoint_due(self, step: int) -> bool:
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        by_time = (
            self.every_seconds is not None
            and time.monotonic() - self._last_write >= self.every_seconds
        )
        return by_steps or by_time

    def checkpoint(
        self,
        model: GenerativeModel,
        optimizers: dict[str, torch.optim.Optimizer],
        history: History,
        train_config: dict[str, Any],
    ) -> None:
        """trainer.pt holds everything resume needs (weights included) in one atomic file, so a
        kill between two writes can never pair weights of one step with optimizer state of
        another."""
        state = {
            "step": history.step,
            "elapsed": history.elapsed,
            "best_val": history.best_val,
            "since_best": history.since_best,
            "best_state": history.best_state or {},
            "best_step": history.best_step,
            "model": model.state_dict(),
            "optimizers": {p: o.state_dict() for p, o in optimizers.items()},
            "rng_torch": torch.get_rng_state(),
            # Models draw their noise on their own device: CUDA has its own generator to restore.
            "rng_cuda": (
                torch.cuda.get_rng_state(model.device) if model.device.type == "cuda" else None
            ),
            "rng_python": list(random.getstate()[1]),
            "rng_python_pos": random.getstate()[2],
        }

        def write(path: Path) -> None:
            # Through a Python file, so a full disk surfaces as OSError ENOSPC (torch.save on a
            # path reports only "unexpected pos").
            with open(path, "wb") as f:
                torch.save(state, f)

        # config.json first: whenever trainer.pt exists, --resume can read how to rebuild.
        model.save(self.folder, extra={"train": train_config, "step": history.step})
        atomic_write(self.folder / "trainer.pt", write)
        self.saved_step = history.step
        self._last_write = time.monotonic()

    def save_weights(
        self,
        model: GenerativeModel,
        history: History,
        train_config: dict[str, Any],
        key: str = "val_loss",
    ) -> None:
        # best_val_loss or best_val_fid: the key says what the number is.
        extra = {"train": train_config, "step": history.step, f"best_{key}": history.best_val}
        model.save(self.folder, extra=extra)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def check_free(folder: str | os.PathLike) -> None:
    """The RunError ``fit`` would raise if a run trains in ``folder`` now (the CLI asks before
    it loads any data); a probe only: fit takes the lock itself."""
    path = Path(folder) / ".lock"
    if fcntl is None or not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    _flock(fd, Path(folder))
    os.close(fd)  # releases it again


def _flock(fd: int, folder: Path) -> None:
    """Lock ``fd`` or close it and refuse, naming the pid that holds the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunError(
            f"{folder} is in use by another run (pid {owner}): wait for it to end, stop it, "
            "or choose another --out"
        ) from None


def _train_config(
    folder: Path | None,
    resume: bool,
    run_config: dict[str, Any] | None,
    settings: dict[str, Any],
    data: Dataset,
    step: int,
) -> dict[str, Any]:
    """config.json's "train": data (the caller's, else the dataset's origin), fit's settings
    and, on resume, the settings that changed at which step."""
    config = dict(run_config or {})
    origin = getattr(data, "origin", None)
    if "data" not in config and origin is not None:
        config["data"] = dict(origin)
    if resume:
        stored = read_config(folder).get("train", {})
        config = {**stored, **config}
        before = stored.get("fit", {})
        for key in ("batch_size", "seed"):  # the batches of the steps to come depend on them
            if key in before and before[key] != settings[key]:
                raise RunError(
                    f"{folder} was trained with {key}={before[key]!r}, not {settings[key]!r}: "
                    f"resume with {key}={before[key]!r} or start a new run"
                )
        changed = {k: [before[k], v] for k, v in settings.items() if before.get(k, v) != v}
        if changed:
            config["resumes"] = [*stored.get("resumes", []), {"step": step, "changed": changed}]
    config["fit"] = settings
    return config


def _restore(
    folder: Path,
    model: GenerativeModel,
    optimizers: dict[str, torch.optim.Optimizer],
    history: History,
) -> None:
    path = folder / "trainer.pt"
    try:
        # Tensors come back on the CPU (a run trained on a GPU resumes anywhere); loading copies
        # them onto the model's and the optimizers' device.
        state = torch.load(path, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        for p, o in optimizers.items():
            o.load_state_dict(state["optimizers"][p])
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise RunError(
            f"cannot resume from {path}: the checkpoint is corrupt or from another "
            f"model ({type(e).__name__})"
        ) from None
    history.step = int(state["step"])
    history.elapsed = float(state["elapsed"])
    history.best_val = state["best_val"]
    history.since_best = int(state["since_best"])
    history.best_state = state["best_state"] or None
    history.best_step = state.get("best_step")  # absent from checkpoints of earlier versions
    torch.set_rng_state(state["rng_torch"])
    if state.get("rng_cuda") is not None and model.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], model.device)
    random.setstate((3, tuple(state["rng_python"]), state["rng_python_pos"]))
    history.records = _read_metrics(folder / "metrics.jsonl", history.step)


def _read_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Records up to ``step``; a line cut short by a kill is dropped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            records.append(rec)
    return records


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records a killed run wrote after its last checkpoint: resume will redo those steps."""
    if path.exists():
        keep = "".join(json.dumps(r) + "\n" for r in _read_metrics(path, step))
        atomic_write(path, lambda p: p.write_text(keep))


def _tensorboard(folder: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional at run time
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


# ---- progress ------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _Progress:
    """On a terminal (or in a notebook) a tqdm bar, counting seconds under a time budget and
    steps otherwise; elsewhere (a log file, a pipe, CI) one plain line every PLAIN_EVERY
    seconds instead of a flood of carriage-return frames."""

    def __init__(
        self,
        enabled: bool,
        steps: int | None,
        budget: float | None,
        history: History,
        images_per_step: int,
    ) -> None:
        self.steps, self.budget = steps, budget
        self.images_per_step = images_per_step
        self.stream = sys.stderr
        self._seen = (history.step, time.perf_counter())  # rate window: step, clock
        self._rate = 0.0
        self._last_line = -math.inf
        self._last_logs: dict[str, float] = {}
        self.bar: Any = None
        self.closed = not enabled
        interactive = getattr(self.stream, "isatty", lambda: False)() or "ipykernel" in sys.modules
        if enabled and interactive:
            from tqdm.auto import tqdm

            if budget is not None:
                self.bar = tqdm(
                    total=budget, initial=min(history.elapsed, budget), unit="s",
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{remaining} left{postfix}]",
                    dynamic_ncols=True, leave=True, file=self.stream,
                )  # fmt: skip
            else:
                self.bar = tqdm(
                    total=steps, initial=history.step, unit="step",
                    dynamic_ncols=True, leave=True, file=self.stream,
                )  # fmt: skip

    def _measure(self, step: int) -> None:
        now = time.perf_counter()
        if now - self._seen[1] >= 0.5 or self._rate == 0.0:
            self._rate = (step - self._seen[0]) / max(now - self._seen[1], 1e-9)
            self._seen = (step, now)

    def _left(self, step: int, elapsed: float) -> float | None:
        lefts = []
        if self.budget is not None:
            lefts.append(max(self.budget - elapsed, 0.0))
        if self.steps is not None and self._rate > 0:
            lefts.append(max(self.steps - step, 0) / self._rate)
        return min(lefts) if lefts else None

    def update(self, step: int, elapsed: float, logs: dict[str, float]) -> None:
        if self.closed:
            return
        self._measure(step)
        self._last_logs = logs
        if self.bar is not None:
            # A time bar advances by the seconds gone, a step bar by one step.
            gone = min(elapsed, self.budget) - self.bar.n if self.budget is not None else 1
            self.bar.update(gone)
            if step % 10 == 0 or step == 1:
                post = {k: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss")}
                post["img/s"] = f"{self._rate * self.images_per_step:.0f}"
                if self.budget is not None:
                    post = {"step": str(step), **post}
                self.bar.set_postfix(post, refresh=False)
        elif time.perf_counter() - self._last_line >= PLAIN_EVERY:
            self._line(step, elapsed, logs)

    def _line(self, step: int, elapsed: float, logs: dict[str, float], end: str = "") -> None:
        parts = [f"step {step}" + (f"/{self.steps}" if self.steps is not None else "")]
        parts += [f"{k} {v:.4g}" for k, v in logs.items() if k.startswith("loss")]
        parts.append(f"{self._rate * self.images_per_step:,.0f} img/s")
        left = self._left(step, elapsed)
        parts.append(f"elapsed {_clock(elapsed)}" + (f", left {_clock(left)}" if left else ""))
        print("  ".join(parts) + end, file=self.stream, flush=True)
        self._last_line = time.perf_counter()

    def note(self, text: str, status: bool = False) -> None:
        """A passing event: a status the bar shows while it lasts (``status``), or a result
        ("step 500: val_loss 95.3") that plain output prints as a line of its own."""
        if self.closed:
            return
        if self.bar is not None and status:
            self.bar.set_description_str(text, refresh=True)
        elif self.bar is not None:
            self.bar.write(text, file=self.stream)  # above the bar
        elif text:
            print(text, file=self.stream, flush=True)

    def close(self, history: History) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        else:
            end = f"  ({history.stopped})" if history.stopped else ""
            self._line(history.step, history.elapsed, self._last_logs, end)


# ---- data parallelism ------------------------------------------------------------------------


def _distributed_setup(model: GenerativeModel, device: torch.device) -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1): join the process group and start from rank 0's weights.

    NCCL when the model is on a GPU (each rank on its own, see ``resolve_device``), else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
    return dist.get_rank(), dist.get_world_size()


def _average_gradients(params: Any, world: int, loss: Tensor) -> Tensor:
    """Average the gradients over the ranks (what DDP does, without wrapping: models are driven
    through loss(), not forward()); the loss rides along, and its average is returned."""
    import torch.distributed as dist

    grads: list[Tensor] = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1)])
    dist.all_reduce(flat)
    flat /= world
    _unflatten(flat, grads)
    return flat[-1]


def _sync_buffers(model: GenerativeModel) -> None:
    """Make every rank's buffers equal after a step: each rank updated running statistics
    (BatchNorm means and variances, running averages) from its own share of the batch, so
    floating buffers are averaged; counters and flags (num_batches_tracked...) are integers
    that an average could not represent, and all ranks count alike, so rank 0's are kept.
    Buffers left out of the state dict (masks, index tables) are derived from the config, equal
    on every rank by construction, and never change: they are not sent."""
    import torch.distributed as dist

    saved = model.state_dict(keep_vars=True)
    floats: dict[torch.dtype, list[Tensor]] = {}
    others: list[Tensor] = []
    for name, b in model.named_buffers():
        if name in saved:
            (floats.setdefault(b.dtype, []) if b.is_floating_point() else others).append(b)
    world = dist.get_world_size()
    for group in floats.values():  # one all_reduce per dtype, not one per buffer
        flat = torch.cat([b.reshape(-1) for b in group])
        dist.all_reduce(flat)
        flat /= world
        _unflatten(flat, group)
    if others:  # int64 holds every integer and bool buffer exactly
        flat = torch.cat([b.reshape(-1).to(torch.int64) for b in others])
        dist.broadcast(flat, src=0)
        _unflatten(flat, others)


def _unflatten(flat: Tensor, tensors: list[Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
