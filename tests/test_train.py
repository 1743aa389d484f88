"""The training loop: overfitting, budgets, NaN errors, run folders, exact resume, DDP.

Signals, kills, locks, full disks and resuming with other flags: test_train_runs.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, Crash, crash_at, tiny, tiny_patches
from torch import nn

import genlab
from genlab.data import Dataset, synthetic
from genlab.data.captions import tokenize
from genlab.models.base import GenerativeModel
from genlab.train import TrainingError, fit, parse_duration

ROOT = Path(__file__).resolve().parents[1]


def bars(n: int = 64, shape=(1, 4, 4)):
    return synthetic("bars", n=n, shape=shape, seed=0)


def test_overfits_a_tiny_batch():
    model = tiny("nade")
    data = bars(8)
    first = fit(model, data, steps=1, batch_size=8, lr=3e-2, progress=False, log_every=1)
    hist = fit(model, data, steps=300, batch_size=8, lr=3e-2, progress=False, log_every=1)
    start, end = first.records[0]["loss"], hist.records[-1]["loss"]
    assert end < 0.5 * start, (start, end)


def test_needs_a_budget_and_parses_durations():
    with pytest.raises(ValueError, match="budget"):
        fit(tiny("independent"), bars(), progress=False)
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    assert parse_duration("90s") == 90 and parse_duration("7") == 7
    with pytest.raises(ValueError, match="duration"):
        parse_duration("ten minutes")


def test_time_budget_stops_the_loop():
    hist = fit(tiny("independent"), bars(), time_budget=0.3, batch_size=8, progress=False)
    assert hist.stopped == "time budget" and hist.step > 0
    assert 0.3 <= hist.elapsed < 5


def test_nan_loss_names_step_and_player(monkeypatch):
    model = tiny("gan")
    real_loss = model.loss

    def loss(batch, player):
        value, logs = real_loss(batch, player)
        if player == "g" and model._calls >= 3:
            value = value * float("nan")
        model._calls += player == "g"
        return value, logs

    model._calls = 0
    monkeypatch.setattr(model, "loss", loss)
    with pytest.raises(TrainingError, match=r"player 'g' became nan at step 3"):
        fit(model, bars(), steps=10, batch_size=8, progress=False)


def test_early_stopping():
    model = tiny("nade")
    hist = fit(
        model,
        bars(),
        val_data=bars(16),
        steps=10_000,
        batch_size=8,
        lr=0.5,
        val_every=5,
        patience=2,
        progress=False,
    )
    assert hist.stopped == "early stopping" and hist.step < 10_000
    # the model ends with the weights that validated best, not the last ones
    from genlab.metrics import validate

    assert validate(model, bars(16)) == pytest.approx(hist.best_val, rel=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in hist.best_state.items())


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    model = tiny("nade")
    fit(
        model,
        bars(),
        val_data=bars(16),
        steps=20,
        batch_size=8,
        out=out,
        ckpt_every=10,
        sample_every=10,
        val_every=10,
        log_every=5,
        progress=False,
        run_config={"data": {"source": "synthetic:bars"}},
    )
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "trainer.pt", "metrics.jsonl"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert (out / "samples" / "step-10.png").exists() and (out / "samples" / "step-20.png").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "nade" and config["torch_version"] == torch.__version__
    assert config["train"]["data"]["source"] == "synthetic:bars"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert "val_loss" in records[1] and "val_loss" in records[3]
    assert not list(out.glob("*.tmp")), "temporary files left behind"
    with pytest.raises(genlab.models.RunError, match="already holds a run"):
        fit(tiny("nade"), bars(), steps=1, out=out, progress=False)


@pytest.mark.parametrize("scores, grids", [([2.0, 1.0], [10, 20]), ([1.0, 2.0], [10, 20, 20])])
def test_last_grid_drawn_again_only_when_the_best_weights_replace_the_last(
        tmp_path, monkeypatch, scores, grids):
    """The last grid shows the saved model: drawn once when the last validation was the best,
    drawn again (with the restored weights) when an earlier one was."""
    import genlab.train as train

    drawn, given = [], iter(scores)
    grid = train._RunFolder.grid
    observe = train.History.observe
    monkeypatch.setattr(train._RunFolder, "grid",
                        lambda self, model, step, *a: (drawn.append(step),
                                                       grid(self, model, step, *a)))
    monkeypatch.setattr(train.History, "observe",
                        lambda self, val, model, step=None: observe(self, next(given), model, step))
    hist = fit(tiny("nade"), bars(), val_data=bars(16), steps=20, batch_size=8,
               out=tmp_path / "run", sample_every=10, val_every=10, progress=False)
    assert drawn == grids and hist.best_step == (20 if scores[1] < scores[0] else 10)


def test_resume_with_validation_off_keeps_the_last_weights(tmp_path):
    """A run whose best validation was early, resumed with val_every=0: the model it ends
    with is its last state, not the earlier best."""
    out, kw = tmp_path / "run", dict(batch_size=8, sample_every=0, progress=False, lr=1e-2)
    fit(tiny("nade"), bars(), val_data=bars(16), steps=10, val_every=5, out=out, **kw)
    model = tiny("nade")
    hist = fit(model, bars(), val_data=bars(16), steps=14, val_every=0, out=out, resume=True,
               **kw)
    assert hist.step == 14 and hist.best_state is not None  # the earlier best is still known
    last = torch.load(out / "trainer.pt", weights_only=True)["model"]
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())



@pytest.mark.parametrize(
    "name", ["nade", "vae", "conv_vae", "gan", "dcgan", "aae", "progan", "text2image", "infogan",
             "stargan", "cyclegan", "puzzlegan"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(name, tmp_path):
    # progan grows 4x4 -> 8x8 on 8x8 images; its tiny phase of 96 images (12 steps of 8) puts
    # the kill at step 17 mid-fade, with the checkpoint of step 10 still at 4x4.
    shape = (1, 8, 8) if name == "progan" else (1, 4, 4)
    data = synthetic("bars", n=64, shape=shape, seed=1)
    if "text" in genlab.MODELS[name].needs:  # a caption per image, by its label
        texts = [["a red one", "a thin blue two"][int(y)] for y in data.y]
        data = Dataset(data.x, data.y, data.name, fields={"text": tokenize(texts)})
    if "attrs" in genlab.MODELS[name].needs:  # a translation model reads attribute rows too
        data = Dataset(data.x, fields={"attrs": torch.arange(64 * 6).view(64, 6) % 2})
    if "x_b" in genlab.MODELS[name].needs:  # a second domain, served in its own order
        data = Dataset(data.x, data.y, data.name, fields={"x_b": 1 - data.x, "y_b": data.y},
                       unaligned=("x_b", "y_b"))
    if "patches" in genlab.MODELS[name].needs:  # key patches cropped from each image
        fields = tiny_patches(data.x, torch.Generator().manual_seed(2))
        data = Dataset(data.x, data.y, data.name, fields=fields)
    kw = dict(steps=30, batch_size=8, ckpt_every=10, log_every=1, progress=False, seed=5, lr=1e-2)

    full = tiny(name, shape)
    fit(full, data, out=tmp_path / "full", **kw)

    crashed = crash_at(tiny(name, shape), 17)  # dies between checkpoints 10 and 20
    with pytest.raises(Crash):
        fit(crashed, data, out=tmp_path / "run", **kw)
    resumed = tiny(name, shape)
    resumed.load_state_dict({k: torch.zeros_like(v) for k, v in resumed.state_dict().items()})
    hist = fit(resumed, data, out=tmp_path / "run", resume=True, **kw)
    assert hist.step == 30
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name}: {k} differs after resume"
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after resume"


class _Normed(GenerativeModel):
    """A tiny model with buffers that training changes: a BatchNorm (running mean and variance,
    integer num_batches_tracked) on the input and a running average of the pixel mean."""

    name = "normed"  # a test model, not in the registry

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__(shape, None)
        self.norm = nn.BatchNorm1d(self.n_pixels)
        self.head = nn.Linear(self.n_pixels, self.n_pixels)
        self.register_buffer("mean_seen", torch.zeros(()))

    def loss(self, batch, player):
        x = batch["x"].flatten(1)
        with torch.no_grad():
            self.mean_seen.mul_(0.9).add_(0.1 * x.mean())
        loss = F.binary_cross_entropy_with_logits(self.head(self.norm(x)), x)
        return loss, {}

    def sample(self, n, cond=None):
        return torch.zeros(n, *self.shape, device=self.device)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        WORLD_SIZE=str(world),
        RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # different inits: fit must broadcast rank 0's weights
    model = genlab.create("nade", shape=(1, 4, 4), **TINY["nade"])
    data = synthetic("bars", n=64, shape=(1, 4, 4), seed=2)
    fit(model, data, steps=1, batch_size=4, lr=1e-2, progress=False, seed=1)
    # After one step the gradients (taken at the shared initial weights) are still in .grad.
    grads = {k: p.grad for k, p in model.named_parameters()}
    # A few steps of a model with buffers, each rank on its own share of every batch.
    torch.manual_seed(100 + rank)
    normed = _Normed((1, 4, 4))
    fit(normed, data, steps=3, batch_size=4, lr=1e-2, progress=False, seed=1)
    torch.save({"weights": model.state_dict(), "grads": grads, "normed": normed.state_dict()},
               f"{out}/rank{rank}.pt")
    import torch.distributed as dist

    dist.barrier()  # neither rank tears the group down while the other still uses it
    dist.destroy_process_group()


def test_data_parallel_equals_one_process_with_the_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(100)
    single = genlab.create("nade", shape=(1, 4, 4), **TINY["nade"])
    data = synthetic("bars", n=64, shape=(1, 4, 4), seed=2)
    fit(single, data, steps=1, batch_size=8, lr=1e-2, progress=False, seed=1)
    for k in single.state_dict():
        assert torch.equal(r0["weights"][k], r1["weights"][k]), f"ranks disagree on {k}"
    # Averaged per-rank gradients equal the gradient of the global batch (up to rounding).
    for k, p in single.named_parameters():
        assert torch.allclose(r0["grads"][k], p.grad, atol=1e-6), f"gradient of {k} differs"
    # Buffers are identical on both ranks after steps on different halves of each batch...
    for k, v in r0["normed"].items():
        assert torch.equal(v, r1["normed"][k]), f"ranks disagree on {k} of the BatchNorm model"
    assert int(r0["normed"]["norm.num_batches_tracked"]) == 3
    # ...and are the average of the ranks' updates, not one rank's: running means are linear
    # in the batch, so they equal those of one process that saw the whole batch.
    torch.manual_seed(100)
    whole = _Normed((1, 4, 4))
    fit(whole, data, steps=3, batch_size=8, lr=1e-2, progress=False, seed=1)
    for k in ("norm.running_mean", "mean_seen"):
        assert torch.allclose(r0["normed"][k], whole.state_dict()[k], atol=1e-6), k
        assert not torch.allclose(r0["normed"][k], torch.zeros(()), atol=1e-3), k


def test_weight_decay_is_adams_l2_penalty_and_recorded(tmp_path):
    # One step of fit with weight_decay equals one step of plain Adam on loss + wd/2 |theta|^2.
    data = bars(32)
    wd, lr = 0.5, 1e-2
    torch.manual_seed(0)
    model = genlab.create("nade", shape=(1, 4, 4), hidden=5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, data, steps=1, batch_size=32, lr=lr, weight_decay=wd, progress=False,
        out=tmp_path / "run", sample_every=0)
    torch.manual_seed(0)
    ref = genlab.create("nade", shape=(1, 4, 4), hidden=5)
    ref.load_state_dict(start)
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    loss, _ = ref.loss({"x": data.x}, "model")
    penalty = sum(p.pow(2).sum() for p in ref.parameters())
    (loss + wd / 2 * penalty).backward()
    opt.step()
    for (name, got), want in zip(model.state_dict().items(), ref.state_dict().values(),
                                 strict=True):
        torch.testing.assert_close(got, want, msg=name)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["train"]["fit"]["weight_decay"] == wd
    with pytest.raises(ValueError, match="weight_decay"):
        fit(model, data, steps=1, weight_decay=-1.0, progress=False)
