"""``fit``: the one training loop, for every model.

It knows nothing about models beyond the protocol in ``models/base.py``: per step it calls
``model.on_step(step)`` and, for each player in ``model.players_at(step)``, zeroes that player's
optimizer, takes ``model.loss(batch, player)``, backpropagates, clips and steps. Around that:
a progress bar, step and time budgets, validation, sample grids, ``metrics.jsonl`` and
TensorBoard, atomic checkpoints and exact resume, early stopping, and data parallelism when
launched under ``torchrun`` (gradients averaged across ranks with ``all_reduce``).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlab.data import Dataset, Loader
from genlab.images import save_grid
from genlab.models.base import GenerativeModel, RunError, atomic_write
from genlab.threads import ThreadGovernor


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a run folder that does not match...)."""


@dataclass
class History:
    """What ``fit`` returns: one record per logged step, plus the final state."""

    records: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    elapsed: float = 0.0
    stopped: str = ""  # why the loop ended: "steps", "time budget", "early stopping"
    best_val: float | None = None
    since_best: int = 0  # validations since best_val improved (for patience)
    best_state: dict[str, Tensor] | None = field(default=None, repr=False)


def parse_duration(text: str | float | None) -> float | None:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"cannot read the duration {text!r}: use e.g. 90s, 10m or 1.5h") from None


def fit(
    model: GenerativeModel,
    data: Dataset,
    *,
    steps: int | None = None,
    time_budget: str | float | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    schedule: str = "constant",
    clip: float | None = None,
    seed: int = 0,
    val_data: Dataset | None = None,
    val_every: int = 500,
    val_limit: int | None = 2000,
    patience: int | None = None,
    restore_best: bool = True,
    sample_every: int | None = None,
    ckpt_every: int = 500,
    log_every: int = 50,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
    threads: int | None = None,
) -> History:
    """Train ``model`` on ``data`` until ``steps`` or ``time_budget`` runs out (whichever first).

    ``schedule`` is "constant" or "cosine" (decays to 0 over the step or time budget).
    ``patience``: stop after that many validations without improvement (needs ``val_data``).
    ``restore_best``: with ``val_data``, end with (and save) the weights that validated best;
    ``trainer.pt`` still holds the last state, so ``resume`` continues from there.
    ``out``: run folder (config.json, model.safetensors, trainer.pt, metrics.jsonl, TensorBoard
    events, samples/step-N.png). ``resume=True`` continues a killed run exactly where its last
    checkpoint left it. ``run_config`` (data and training settings) is stored in config.json.
    ``threads``: torch threads; by default the idle cores, re-measured (genlab.threads).
    """
    budget = parse_duration(time_budget)
    if steps is None and budget is None:
        raise ValueError("give a step budget (steps=...) or a time budget (time_budget='10m')")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}: use constant or cosine")
    rank, world = _distributed_setup(model)
    folder = Path(out) if out is not None else None
    torch.manual_seed(seed)
    random.seed(seed)
    loader = Loader(data, batch_size, seed=seed, rank=rank, world_size=world)

    optimizers = {
        p: torch.optim.Adam(
            list(model.parameters_for(p)), **{"lr": lr, **model.optimizer_settings(p)}
        )
        for p in model.players
    }
    base_lrs = {p: [g["lr"] for g in o.param_groups] for p, o in optimizers.items()}
    history = History()
    if resume:
        if folder is None:
            raise ValueError("resume needs the run folder (out=...)")
        _restore(folder, model, optimizers, history)
    elif folder is not None and (folder / "trainer.pt").exists():
        raise RunError(
            f"{folder} already holds a run: resume it (--resume) or choose another --out"
        )

    writer = None
    if folder is not None and rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "samples").mkdir(exist_ok=True)
        model.save(folder, extra={"train": run_config or {}})
        _truncate_metrics(folder / "metrics.jsonl", history.step)
        writer = _tensorboard(folder)

    bar = _progress_bar(progress and rank == 0, steps, history.step)
    t_start = time.perf_counter() - history.elapsed
    seen_at, seen_t = history.step, time.perf_counter()
    governor = ThreadGovernor(threads)
    model.train()
    try:
        while True:
            governor.tick()
            step = history.step
            history.elapsed = time.perf_counter() - t_start
            if steps is not None and step >= steps:
                history.stopped = "steps"
                break
            if budget is not None and history.elapsed >= budget:
                history.stopped = "time budget"
                break
            if schedule == "cosine":
                frac = max(
                    step / steps if steps else 0.0, history.elapsed / budget if budget else 0.0
                )
                for p, opt in optimizers.items():
                    for g, base in zip(opt.param_groups, base_lrs[p], strict=True):
                        g["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

            batch = loader.batch(step)
            model.on_step(step)
            logs: dict[str, float] = {}
            for player in model.players_at(step):
                opt = optimizers[player]
                opt.zero_grad(set_to_none=True)
                loss, extra = model.loss(batch, player)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss of player {player!r} became {float(loss.detach())} "
                        f"at step {step}: "
                        "lower the learning rate (--lr) or set gradient clipping (--clip)"
                    )
                loss.backward()
                if world > 1:
                    _average_gradients(model.parameters_for(player), world)
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(list(model.parameters_for(player)), clip)
                opt.step()
                key = "loss" if player == "model" else f"loss_{player}"
                logs[key] = float(loss.detach())
                logs.update(
                    {(k if player == "model" else f"{player}/{k}"): v for k, v in extra.items()}
                )
            history.step = step = step + 1

            if bar is not None:
                now = time.perf_counter()
                rate = (step - seen_at) * batch_size * world / max(now - seen_t, 1e-9)
                bar.update(1)
                if step % 10 == 0 or step == 1:
                    post = {k: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss")}
                    post["img/s"] = f"{rate:.0f}"
                    if budget is not None:
                        post["left"] = f"{max(budget - (now - t_start), 0):.0f}s"
                    bar.set_postfix(post, refresh=False)
                    seen_at, seen_t = step, now

            record: dict[str, Any] | None = None
            if step % log_every == 0:
                record = {"step": step, "time": round(time.perf_counter() - t_start, 3), **logs}
            if val_data is not None and model.has("log_prob") and step % val_every == 0:
                val = validate(model, val_data, batch_size=max(batch_size, 256), limit=val_limit)
                record = {**(record or {"step": step}), "val_loss": val}
                if history.best_val is None or val < history.best_val:
                    history.best_val, history.since_best = val, 0
                    history.best_state = {
                        k: v.detach().clone() for k, v in model.state_dict().items()
                    }
                else:
                    history.since_best += 1
            if record is not None:
                history.records.append(record)
                if rank == 0 and folder is not None:
                    _log(folder, writer, record)
            if rank == 0 and folder is not None:
                if sample_every and step % sample_every == 0:
                    _write_samples(model, folder, step)
                if step % ckpt_every == 0:
                    history.elapsed = time.perf_counter() - t_start
                    _checkpoint(folder, model, optimizers, history, run_config)
            if patience is not None and history.since_best >= patience:
                history.stopped = "early stopping"
                break
    finally:
        governor.close()
        if bar is not None:
            bar.close()
    history.elapsed = time.perf_counter() - t_start
    if rank == 0 and folder is not None:
        _checkpoint(folder, model, optimizers, history, run_config)
    if restore_best and history.best_state is not None:
        # trainer.pt keeps the last state for --resume; the model and its saved weights are the
        # ones that did best on validation data (what early stopping is for).
        model.load_state_dict(history.best_state)
        if rank == 0 and folder is not None:
            model.save(
                folder,
                extra={
                    "train": run_config or {},
                    "step": history.step,
                    "best_val_loss": history.best_val,
                },
            )
    if rank == 0 and folder is not None:
        _write_samples(model, folder, history.step)
        if writer is not None:
            writer.close()
    if world > 1:
        # Rank 0 writes files after the last step; ranks that exit or tear down the process
        # group before it is done make gloo abort it.
        import torch.distributed as dist

        dist.barrier()
    model.eval()
    return history


@torch.no_grad()
def validate(
    model: GenerativeModel, data: Dataset, batch_size: int = 256, limit: int | None = None
) -> float:
    """Mean of the model's own loss over (the first ``limit`` images of) ``data``.

    For likelihood models the loss *is* the negative log-likelihood in nats; for a VAE it is
    its negative training bound (ELBO or IWAE), an upper bound. Uses the first player's loss.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # A fixed generator keeps dynamic binarization of validation data identical across calls.
    for batch in Loader(data, batch_size, shuffle=False, drop_last=False, seed=12345):
        if limit is not None and count >= limit:
            break
        loss, _ = model.loss(batch, model.players[0])
        b = len(batch["x"])
        total += float(loss) * b
        count += b
    model.train(was_training)
    return total / max(count, 1)


# ---- checkpoints ---------------------------------------------------------------------------


def _checkpoint(
    folder: Path,
    model: GenerativeModel,
    optimizers: dict[str, torch.optim.Optimizer],
    history: History,
    run_config: dict[str, Any] | None,
) -> None:
    """trainer.pt holds everything resume needs (weights included) in one atomic file, so a
    kill between two writes can never pair weights of one step with optimizer state of another."""
    state = {
        "step": history.step,
        "elapsed": history.elapsed,
        "best_val": history.best_val,
        "since_best": history.since_best,
        "best_state": history.best_state or {},
        "model": model.state_dict(),
        "optimizers": {p: o.state_dict() for p, o in optimizers.items()},
        "rng_torch": torch.get_rng_state(),
        "rng_python": list(random.getstate()[1]),
        "rng_python_pos": random.getstate()[2],
    }
    atomic_write(folder / "trainer.pt", lambda p: torch.save(state, p))
    model.save(folder, extra={"train": run_config or {}, "step": history.step})


def _restore(
    folder: Path,
    model: GenerativeModel,
    optimizers: dict[str, torch.optim.Optimizer],
    history: History,
) -> None:
    path = folder / "trainer.pt"
    if not path.exists():
        raise RunError(f"nothing to resume in {folder}: trainer.pt is missing")
    try:
        state = torch.load(path, weights_only=True)
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
    torch.set_rng_state(state["rng_torch"])
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


def _log(folder: Path, writer: Any, record: dict[str, Any]) -> None:
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k not in ("step", "time") and isinstance(v, int | float):
                writer.add_scalar(k, v, record["step"])


def _write_samples(model: GenerativeModel, folder: Path, step: int) -> None:
    # Sampling must not disturb the training RNG stream, or resume would not be exact.
    with torch.random.fork_rng():
        torch.manual_seed(step)
        model.eval()
        x = model.sample(64)
        model.train()
    save_grid(x, folder / "samples" / f"step-{step}.png")


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional at run time
        return None
    return SummaryWriter(log_dir=str(folder))


def _progress_bar(enabled: bool, steps: int | None, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=initial, unit="step", dynamic_ncols=True, leave=True)


# ---- data parallelism ------------------------------------------------------------------------


def _distributed_setup(model: GenerativeModel) -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1): join the process group and start from rank 0's weights."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
    return dist.get_rank(), dist.get_world_size()


def _average_gradients(params: Any, world: int) -> None:
    # What DDP does, without wrapping: models are driven through loss(), not forward().
    import torch.distributed as dist

    grads: list[Tensor] = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
