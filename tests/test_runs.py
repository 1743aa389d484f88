"""Run folders from strangers: `genlab.load` refuses what it cannot trust, before allocating."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny
from safetensors.torch import load_file, save_file

import genlab
from genlab.models.base import MAX_CONFIG_BYTES, RunError, read_safetensors_header


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A saved tiny NADE (8 hidden units on 1x4x4)."""
    tiny("nade").eval().save(tmp_path / "run")
    return tmp_path / "run"


def edit_config(run: Path, **fields) -> None:
    config = json.loads((run / "config.json").read_text())
    for key, value in fields.items():
        if key in config:
            config[key] = value
        else:
            config["model_config"][key] = value
    (run / "config.json").write_text(json.dumps(config))


def one_line_refusal(run: Path, *words: str) -> str:
    with pytest.raises(RunError) as e:
        genlab.load(run)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize("name", list(genlab.MODELS))
def test_every_model_builds_on_the_meta_device_as_it_does_for_real(name):
    """The size check compares the header with a skeleton built on the meta device: it must
    have exactly the real model's tensors, and allocate nothing."""
    shape = (1, 4, 4)
    with torch.device("meta"):
        skeleton = genlab.create(name, shape=shape, **TINY[name])
    real = tiny(name, shape).state_dict()
    fake = skeleton.state_dict()
    assert list(fake) == list(real)
    for key, t in fake.items():
        assert t.is_meta and t.shape == real[key].shape and t.dtype == real[key].dtype, key


def test_a_hostile_config_cannot_make_load_allocate(run):
    """hidden=10**7 would be 10**7 x 16 x 2 floats, over a GB: refused from the header."""
    edit_config(run, hidden=10**7)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one_line_refusal(run, "does not match config.json", "W is 16x8 in the file",
                     "needs 16x10000000")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000, f"peak memory grew by {grown_kb} KB"


def test_a_config_asking_for_absurdly_many_layers_stops_early(run):
    edit_config(run, model="pixelcnn", model_config={"blocks": 10**7})
    one_line_refusal(run, "far more tensors than the", "model.safetensors")


def test_an_absurd_shape_is_refused_before_anything_is_built(run):
    edit_config(run, shape=[1, 100_000, 100_000])
    one_line_refusal(run, "10,000,000,000 sub-pixels", "at most")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"hidden": "abc"}, ["hidden must be an integer, got 'abc'"]),
        ({"hidden": -3}, ["describes no model", "hidden"]),
        ({"hiden": 3}, ["no setting hiden", "its settings are"]),
        ({"model": "nosuch"}, ["unknown model 'nosuch'"]),
        ({"shape": "1x4x4"}, ["'shape' must be [C, H, W]"]),
        ({"shape": [1, 4]}, ["'shape' must be [C, H, W]"]),
    ],
)
def test_bad_config_values_name_the_file_and_the_value(run, fields, words):
    edit_config(run, **fields)
    one_line_refusal(run, "config.json", *words)


def test_config_that_is_not_a_json_object(run):
    (run / "config.json").write_text("[1, 2, 3]")
    one_line_refusal(run, "a JSON list, not an object")
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python recurses
    one_line_refusal(run, "cannot read")


def test_config_larger_than_any_config_is_refused_unread(run):
    with open(run / "config.json", "a") as f:
        f.write(" " * MAX_CONFIG_BYTES)
    one_line_refusal(run, "config.json is", "bytes, more than the")


@pytest.mark.parametrize("which", ["config.json", "model.safetensors"])
def test_directories_fifos_and_devices_are_refused(run, which):
    path = run / which
    path.unlink()
    path.mkdir()
    one_line_refusal(run, which, "is a directory, not a regular file")
    path.rmdir()
    if hasattr(os, "mkfifo"):  # reading a FIFO with no writer would wait forever
        os.mkfifo(path)
        one_line_refusal(run, which, "is a FIFO")
        path.unlink()
    if os.path.exists("/dev/zero"):  # endless zeros: reading them all would never end
        path.symlink_to("/dev/zero")
        one_line_refusal(run, which, "is a character device")


def test_a_symlink_to_a_real_run_file_is_fine(run, tmp_path):
    elsewhere = tmp_path / "weights.safetensors"
    (run / "model.safetensors").rename(elsewhere)
    (run / "model.safetensors").symlink_to(elsewhere)
    assert genlab.load(run).name == "nade"


def test_weights_far_larger_than_the_config_implies(run):
    with open(run / "model.safetensors", "ab") as f:
        f.write(bytes(10_000_000))
    one_line_refusal(run, "does not match config.json", "10,00", "the config implies")


def test_a_header_that_claims_more_than_the_file(run):
    (run / "model.safetensors").write_bytes((2**48).to_bytes(8, "little") + b"{}")
    one_line_refusal(run, "corrupt or truncated", "header claims")
    (run / "model.safetensors").write_bytes(b"\x05\x00")
    one_line_refusal(run, "corrupt or truncated")


def test_weights_with_other_names_shapes_or_dtypes(run):
    weights = run / "model.safetensors"
    good = load_file(weights)
    save_file({k: v for k, v in good.items() if k != "c"}, weights)
    one_line_refusal(run, "it lacks c")
    save_file({**good, "extra": torch.zeros(3)}, weights)
    one_line_refusal(run, "it holds extra, which the model has not")
    save_file({**good, "W": good["W"].double()}, weights)
    one_line_refusal(run, "W is float64 in the file, the model needs float32")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(run, bad):
    weights = run / "model.safetensors"
    state = load_file(weights)
    state["V"][3] = bad
    save_file(state, weights)
    one_line_refusal(run, "non-finite weights", "V", "diverged")


def test_the_header_reader_reads_what_safetensors_writes(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.int64)}, str(path),
              metadata={"note": "x"})
    header, start, size = read_safetensors_header(path)
    assert header["a"]["shape"] == [2, 3] and header["a"]["dtype"] == "F32"
    assert header["b"]["dtype"] == "I64" and "__metadata__" not in header
    assert size == path.stat().st_size == start + 2 * 3 * 4 + 4 * 8


def test_loaded_models_still_work(run):
    model = genlab.load(run)
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    assert torch.isfinite(model.log_prob(x)).all()
