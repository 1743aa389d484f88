"""Run folders under stress: signals, kills, a second run, non-finite steps, a full disk,
resuming with other flags, file permissions, TensorBoard on resume, runs trained from Python."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Crash, crash_at, tiny
from safetensors.torch import load_file
from torch import nn

import genlab
from genlab.cli import main
from genlab.data import load, synthetic
from genlab.models.base import GenerativeModel, RunError, atomic_write
from genlab.train import (
    Interrupted,
    TrainingError,
    evaluator_for,
    fit,
    parse_interval,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# `python -m genlab.cli`, except that SIGINT is handled even where the test runner was started
# with it ignored (a background job of a shell script), since fit leaves ignored signals alone.
CLI = [
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from genlab.cli import main; sys.exit(main(sys.argv[1:]))",
]
# A NADE on bars that trains in a few seconds and checkpoints at steps 0 and 500.
TRAIN = [
    "train", "nade", "--data", "synthetic:bars", "--steps", "1000", "--batch-size", "16",
    "--set", "hidden=32", "--sample-every", "0", "--seed", "3",
]  # fmt: skip


def bars(n: int = 64):
    return synthetic("bars", n=n, shape=(1, 4, 4), seed=0)


def checkpoint_step(run: Path) -> int | None:
    """The step of run/trainer.pt, or None while there is none (it is replaced atomically)."""
    try:
        return torch.load(run / "trainer.pt", weights_only=True)["step"]
    except FileNotFoundError:
        return None


def last_logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}")]
    return max(steps, default=0)


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what} (exit code {proc.poll()})")


def same_weights(a: Path, b: Path) -> None:
    wa, wb = genlab.load(a).state_dict(), genlab.load(b).state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a.name} and {b.name}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """TRAIN run once without interruption: what every interrupted run must end equal to."""
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(CLI + TRAIN + ["--quiet", "--out", str(out)], check=True, env=ENV,
                   capture_output=True)  # fmt: skip
    return out


# ---- signals and kills ---------------------------------------------------------------------


def test_sigint_then_sigterm_each_checkpoint_and_resume_exactly(tmp_path, full_run):
    """Ctrl-C, --resume, SIGTERM, --resume: the same weights as one uninterrupted run."""
    run = tmp_path / "run"
    command = CLI + TRAIN + ["--out", str(run)]
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        start = checkpoint_step(run) or 0
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_until(lambda s=start: last_logged_step(run) > s, proc, "training to go on")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        last = err.strip().splitlines()[-1]
        m = re.fullmatch(
            rf"genlab: stopped by {signum.name} at step (\d+); checkpoint saved; "
            rf"resume with: genlab train --resume --out {re.escape(str(run))}",
            last,
        )
        assert proc.returncode == code and m, (proc.returncode, err)
        stopped = int(m[1])
        assert start < stopped < 1000 and checkpoint_step(run) == stopped
        assert json.loads((run / "config.json").read_text())["step"] == stopped
        command = CLI + ["train", "--resume", "--out", str(run)]
    done = subprocess.run(command + ["--quiet"], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    same_weights(full_run, run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after resume"


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, full_run):
    """A real SIGKILL of `genlab train` just after its step-500 checkpoint, then --resume."""
    run = tmp_path / "killed"
    proc = subprocess.Popen(CLI + TRAIN + ["--quiet", "--out", str(run)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_until(lambda: (checkpoint_step(run) or 0) > 0, proc, "the step-500 checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_step(run)
    resumed = subprocess.run(CLI + ["train", "--resume", "--out", str(run), "--quiet"], env=ENV,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert killed_at == 500
    same_weights(full_run, run)


def test_a_signal_in_python_stops_after_the_step_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    model = tiny("nade")
    real = model.on_step

    def on_step(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        real(step)

    model.on_step = on_step
    with pytest.raises(Interrupted) as e:
        fit(model, bars(), steps=50, batch_size=8, out=tmp_path / "run", progress=False)
    assert e.value.exit_code == 143 and e.value.step == 4 and e.value.saved_step == 4
    assert e.value.history.stopped == "SIGTERM" and checkpoint_step(tmp_path / "run") == 4
    assert str(e.value).startswith("stopped by SIGTERM at step 4; checkpoint saved; resume with:")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_signal_stops_at_once_and_keeps_the_checkpoint_before(tmp_path):
    model = tiny("nade")
    real = model.on_step

    def on_step(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # noted: the step goes on
            os.kill(os.getpid(), signal.SIGINT)  # raises here
        real(step)

    model.on_step = on_step
    with pytest.raises(Interrupted, match="at step 3; last checkpoint at step 0") as e:
        fit(model, bars(), steps=50, batch_size=8, out=tmp_path / "run", progress=False)
    assert e.value.exit_code == 130 and checkpoint_step(tmp_path / "run") == 0
    assert isinstance(e.value, KeyboardInterrupt)  # a script that does not catch it stops


def _ddp_budget_worker(rank: int, world: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    # a minute, not gloo's half hour: ranks that disagree on the last step fail, not hang
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    data = synthetic("bars", n=64, shape=(1, 4, 4), seed=2)
    steps = []
    for budget, resume in ((0.3, False), (0.6, True)):
        h = fit(tiny("nade"), data, time_budget=budget, batch_size=4, val_data=data,
                val_every=7, out=out, resume=resume, progress=False)  # fmt: skip
        steps.append(h.step)
    Path(out, f"rank{rank}.json").write_text(json.dumps(steps))
    dist.barrier()
    dist.destroy_process_group()


def test_data_parallel_ranks_agree_when_the_time_budget_ends_and_resume(tmp_path):
    """Each rank's clock reaches the budget at another step: they must stop at the same one."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    mp.spawn(_ddp_budget_worker, args=(2, port, str(out)), nprocs=2, join=True)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and 0 < r0[0] < r0[1] and checkpoint_step(out) == r0[1]


# ---- the lock ------------------------------------------------------------------------------


def test_a_second_run_in_the_folder_is_refused_and_a_killed_ones_lock_taken_over(
    tmp_path, capsys
):
    run = tmp_path / "run"
    first = subprocess.Popen(CLI + [*TRAIN, "--steps", "1000000", "--quiet", "--out", str(run)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: last_logged_step(run) > 0, first, "the first run to train")
        for argv in (["train", "--resume", "--out", str(run)], [*TRAIN, "--out", str(run)]):
            assert main([*argv, "--quiet"]) == 1
            out, err = capsys.readouterr()
            assert err.count("\n") == 1 and out == "", (out, err)  # refused before any loading
            assert f"{run} is in use by another run (pid {first.pid})" in err
    finally:
        first.send_signal(signal.SIGKILL)  # its lock dies with it
        first.wait()
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--quiet"]) == 0
    assert (run / ".lock").read_text().strip() == str(os.getpid())


# ---- non-finite steps ----------------------------------------------------------------------


class Runaway(GenerativeModel):
    """One weight w, loss -w: a constant gradient, so Adam moves w up by lr at every step. From
    3.05e38 with lr=1e37 float32 overflows at step 3. ``inf_grad_at``: that step's gradient is
    inf while its loss stays finite."""

    name = "runaway"

    def __init__(self, w: float = 3.05e38, inf_grad_at: int | None = None) -> None:
        super().__init__((1, 4, 4), None)
        self.w = nn.Parameter(torch.tensor(w))
        self.inf_grad_at, self.step = inf_grad_at, 0

    def on_step(self, step: int) -> None:
        self.step = step

    def loss(self, batch, player):
        loss = -self.w
        if self.step == self.inf_grad_at:  # d/dw sqrt(w - w) at 0 is inf; the value is 0
            loss = loss + 1e-30 * torch.sqrt(self.w - self.w.detach())
        return loss, {}

    def sample(self, n, cond=None):
        return torch.zeros(n, *self.shape)


def test_an_update_that_overflows_the_weights_is_never_checkpointed(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        fit(Runaway(), bars(), steps=10, lr=1e37, batch_size=8, ckpt_every=2, out=run,
            progress=False)  # fmt: skip
    assert "player 'model' at step 3 made the weight 'w' non-finite" in str(e.value)
    assert f"{run} keeps the last good checkpoint (step 2)" in str(e.value)
    saved = torch.load(run / "trainer.pt", weights_only=True)
    assert saved["step"] == 2 and torch.isfinite(saved["model"]["w"])
    assert torch.isfinite(load_file(run / "model.safetensors")["w"])


def test_an_update_beyond_float32_names_the_step_and_player():
    # foreach Adam raises on a step size beyond float32; the fused one writes inf, caught next
    with pytest.raises(TrainingError, match="update of player 'model' at step 0 (overflowed|"
                                            "made the weight 'w' non-finite)"):
        fit(Runaway(w=0.0), bars(), steps=10, lr=1e38, batch_size=8, progress=False)


def test_a_non_finite_gradient_is_not_applied(tmp_path):
    model = Runaway(w=0.0, inf_grad_at=2)
    with pytest.raises(TrainingError, match=r"gradients of player 'model' became non-finite "
                       r"\(norm inf\) at step 2"):  # fmt: skip
        fit(model, bars(), steps=10, lr=1.0, batch_size=8, out=tmp_path / "run", progress=False)
    # two updates of lr each were taken, the third was not
    assert model.w.item() == pytest.approx(2.0, rel=1e-6)
    assert checkpoint_step(tmp_path / "run") == 0


# ---- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_leaves_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["train", "nade", "--data", "synthetic:bars", "--steps", "30", "--set", "hidden=4",
            "--ckpt-every", "10", "--sample-every", "0", "--quiet", "--out", str(run)]  # fmt: skip
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj.get("step", 0) >= 20:  # the disk fills up between the checkpoints 10 and 20
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"genlab: error: no space left on device writing {run / 'trainer.pt'}\n"
    assert checkpoint_step(run) == 10 and not list(run.glob(".*.tmp"))


def test_atomic_write_says_when_the_disk_is_full(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")

    def rust_writer(p):  # safetensors reports it as text
        p.write_text("partial")
        raise RuntimeError("Error while serializing: No space left on device (os error 28)")

    with pytest.raises(RunError, match=f"^no space left on device writing {target}$"):
        atomic_write(target, rust_writer)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


# ---- resuming with other flags ---------------------------------------------------------------


def test_resume_takes_the_flags_it_can_and_refuses_the_others(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "nade", "--data", "synthetic:bars", "--set", "hidden=4", "--batch-size",
            "16", "--sample-every", "0", "--quiet", "--out", str(run)]  # fmt: skip
    assert main([*base, "--steps", "3"]) == 0
    resume = ["train", "--resume", "--out", str(run), "--quiet"]
    for flags, named in (
        (["--batch-size", "8"], "--batch-size 8 (the run has 16)"),
        (["--set", "hidden=5"], "--set hidden=5 (the run has hidden=4)"),
        (["--data", "synthetic:blobs"], "--data synthetic:blobs (the run has synthetic:bars)"),
        (["--seed", "1", "--limit", "5"], "--seed 1 (the run has 0); --limit 5"),
        (["--binarize", "dynamic"], "--binarize dynamic (the run has static)"),
        (["--preset", "paper"], "--preset paper (the run has cpu)"),
        (["--weight-decay", "0.1"], "--weight-decay 0.1 (the run has 0.0)"),
    ):
        assert main([*resume, *flags, "--steps", "6"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and "another --out" in err, err
    assert main(["train", "made", "--resume", "--out", str(run), "--quiet"]) == 1
    assert "model made (the run has nade)" in capsys.readouterr().err
    # the stored values may be repeated (the first command line with --resume added)
    assert main([*base, "--resume", "--steps", "6", "--lr", "0.01", "--clip", "1"]) == 0
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["fit"]["lr"] == 0.01 and config["fit"]["steps"] == 6
    assert config["resumes"][-1]["step"] == 3
    assert config["resumes"][-1]["changed"]["lr"] == [5e-3, 0.01]
    saved = torch.load(run / "trainer.pt", weights_only=True)
    assert saved["step"] == 6
    assert saved["optimizers"]["model"]["param_groups"][0]["lr"] < 0.01  # cosine, from 0.01
    # a setting config.json holds in another form (the tuple (8,) as [8]) is the same setting
    vae = ["train", "vae", "--data", "synthetic:bars", "--set", "hidden=8", "--set", "latent=2",
           "--sample-every", "0", "--quiet", "--out", str(tmp_path / "vae")]  # fmt: skip
    assert main([*vae, "--steps", "2"]) == 0
    assert main([*vae, "--steps", "4", "--resume"]) == 0, capsys.readouterr().err


def test_resume_from_python_refuses_other_batches(tmp_path):
    fit(tiny("nade"), bars(), steps=2, batch_size=8, out=tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="trained with batch_size=8, not 16"):
        fit(tiny("nade"), bars(), steps=4, batch_size=16, out=tmp_path / "run", resume=True,
            progress=False)  # fmt: skip


# ---- files in the run folder -----------------------------------------------------------------


def test_files_get_the_umask_and_stale_temporaries_go(tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o027)
    try:
        fit(tiny("nade"), bars(), val_data=bars(16), steps=4, batch_size=8, out=run,
            sample_every=2, log_every=2, progress=False)  # fmt: skip
        (run / ".trainer.pt.x1y2.tmp").write_bytes(b"half a file")
        (run / "samples" / ".step-9.png.abc.tmp").write_bytes(b"half a file")
        fit(tiny("nade"), bars(), val_data=bars(16), steps=6, batch_size=8, out=run,
            sample_every=2, log_every=2, resume=True, progress=False)  # fmt: skip
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "model.safetensors", "trainer.pt",
                                       "metrics.jsonl", "step-6.png"}  # fmt: skip
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, f"{p.name}: {oct(p.stat().st_mode)}"
    assert not list(run.rglob("*.tmp"))


def test_tensorboard_shows_no_stale_curve_after_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = dict(steps=30, batch_size=8, ckpt_every=10, log_every=1, progress=False)
    crashed = crash_at(tiny("nade"), 17)
    with pytest.raises(Crash):
        fit(crashed, bars(), out=tmp_path / "run", **kw)
    # Event files are named by the second, the pid, then a per-process counter compared as
    # text ("...10" sorts before "...9"): a resume in the same second of the same process
    # (only ever in a test) could be read first. A new second orders them by time.
    time.sleep(1.05)
    fit(tiny("nade"), bars(), out=tmp_path / "run", resume=True, **kw)
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    assert steps == list(range(1, 31)), steps


# ---- runs trained from Python -----------------------------------------------------------------


def test_a_run_trained_from_python_as_the_readme_shows_evaluates_from_the_cli(tmp_path, capsys):
    train, val = (load("synthetic:bars", split, limit=64) for split in ("train", "val"))
    for d in (train, val):  # what genlab.data.load records (set here in case it does not yet)
        if getattr(d, "origin", None) is None:
            d.origin = {"source": "synthetic:bars", "split": d.split, "binarize": None,
                        "seed": 0, "limit": 64}  # fmt: skip
    m = genlab.create("nade", shape=train.shape, hidden=8)
    genlab.fit(m, train, val_data=val, steps=5, batch_size=16, lr=1e-3, out=tmp_path / "nade",
               progress=False)  # fmt: skip
    config = json.loads((tmp_path / "nade" / "config.json").read_text())["train"]
    assert config["data"] == train.origin
    assert config["fit"]["batch_size"] == 16 and config["fit"]["steps"] == 5
    assert main(["eval", str(tmp_path / "nade"), "--quiet"]) == 0
    assert "nats/image" in capsys.readouterr().out


# ---- grids, progress, intervals, evaluators ----------------------------------------------------


def test_sample_grids_every_n_none_or_only_at_the_end(tmp_path, monkeypatch):
    model = tiny("nade")
    asked: list[int] = []
    real = model.sample
    monkeypatch.setattr(model, "sample", lambda n, cond=None: asked.append(n) or real(n))
    fit(model, bars(), steps=4, batch_size=8, out=tmp_path / "none", sample_every=0,
        progress=False)  # fmt: skip
    assert asked == [] and not list((tmp_path / "none" / "samples").iterdir())
    fit(model, bars(), steps=4, batch_size=8, out=tmp_path / "two", sample_every=2, sample_n=9,
        progress=False)  # fmt: skip
    assert asked == [9, 9]  # steps 2 and 4; the final grid would repeat step 4's
    monkeypatch.setattr(type(model), "sample_n_default", 16, raising=False)
    fit(model, bars(), steps=1, batch_size=8, out=tmp_path / "end", progress=False)
    assert asked[-1] == 16 and (tmp_path / "end" / "samples" / "step-1.png").exists()


def test_progress_without_a_terminal_is_plain_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("genlab.train.PLAIN_EVERY", 0.0)  # a line every step
    fit(tiny("nade"), bars(), steps=3, batch_size=8, out=tmp_path / "run")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 5, lines  # 3 steps, the final grid, the end
    line = r"step \d/3  loss [\d.]+  [\d,]+ img/s  elapsed \ds(, left \ds)?"
    assert all(re.fullmatch(line, x) for x in lines[:3]), lines
    assert lines[3] == "sampling 64 images" and re.fullmatch(line + r"  \(steps\)", lines[4])
    fit(tiny("nade"), bars(), time_budget=0.2, batch_size=8, progress=True)
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"step \d+  loss [\d.]+  [\d,]+ img/s  elapsed 0s  \(time budget\)", last)


def test_checkpoint_intervals_in_steps_time_or_both(tmp_path, monkeypatch):
    assert parse_interval(500) == (500, None) and parse_interval("5m") == (None, 300)
    assert parse_interval("500,5m") == (500, 300) and parse_interval("90s") == (None, 90)
    for bad in ("0", "5x", "-3", "", "1.5"):
        with pytest.raises(ValueError, match="steps \\(500\\), a duration \\(5m\\) or both"):
            parse_interval(bad)
    model = tiny("nade")
    real = model.on_step
    model.on_step = lambda step: time.sleep(0.03) or real(step)
    saved: list[int] = []
    real_ckpt = genlab.train._RunFolder.checkpoint

    def checkpoint(self, model, optimizers, history, config):
        saved.append(history.step)
        real_ckpt(self, model, optimizers, history, config)

    monkeypatch.setattr(genlab.train._RunFolder, "checkpoint", checkpoint)
    fit(model, bars(), steps=20, batch_size=8, out=tmp_path / "run", ckpt_every="0.1s",
        progress=False)  # fmt: skip
    assert saved[0] == 0 and saved[-1] == 20 and 3 <= len(saved) - 2 <= 8, saved


def test_the_evaluator_follows_the_capabilities():
    assert evaluator_for(tiny("nade")).key == "val_loss"
    assert evaluator_for(tiny("vae")).key == "val_loss"
    assert evaluator_for(tiny("gan")) is None
