"""`genlab compare`: the HTML and Markdown report of several runs, rendered in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from genlab.cli import main
from genlab.metrics.report import DASH, parse_metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """A likelihood model, a GAN and a VAE on synthetic bars (1x8x8), a few steps each."""
    root = tmp_path_factory.mktemp("runs")
    settings = {"independent": [], "gan": ["latent=2", "hidden=8,8"],
                "vae": ["hidden=8", "latent=2"]}
    for name, sets in settings.items():
        argv = ["train", name, "--data", "synthetic:bars", "--steps", "60", "--quiet",
                "--out", str(root / name)]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return [root / name for name in settings]


def _rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)


def test_compare_writes_html_and_markdown(runs, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["compare", *map(str, runs[:2]), "--out", str(out), "--metrics", "nll",
            "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "[1/2]" in err and "[2/2]" in err  # a progress line per run
    html = (out / "index.html").read_text()
    assert "<table>" in html and "<script" not in html
    rows = _rows(html)
    assert len(rows) == 2
    # The likelihood model has an exact NLL; the GAN has none (dispatch on has("log_prob")).
    assert "nats<br><small>exact" in rows[0]
    gan_cells = _cells(rows[1])
    assert gan_cells[1] == "gan" and gan_cells[6] == DASH
    for src in re.findall(r'src="([^"]+)"', html):
        assert not src.startswith("/")  # relative paths: the folder can be moved
        assert (out / src).stat().st_size > 100
    assert len(re.findall(r'<img class="samples"', html)) == 2
    assert len(re.findall(r'<img class="curve"', html)) == 2
    md = (out / "report.md").read_text().splitlines()
    md_rows = [line for line in md if line.startswith("| ") and not line.startswith("| run ")]
    assert [r.split(" | ")[1] for r in md_rows] == ["independent", "gan"]


def test_estimate_is_labelled_with_its_k(runs, tmp_path):
    """An estimated likelihood names its method and small k; --limit scores N test images."""
    out = tmp_path / "report"
    assert main(["compare", str(runs[2]), "--out", str(out), "--metrics", "nll", "-k", "5",
                 "--limit", "20", "--device", "cpu"]) == 0
    (row,) = _rows((out / "index.html").read_text())
    nll = _cells(row)[6]
    assert "estimate, k=5, 20 images" in nll
    assert "estimate, k=5, 20 images" in (out / "report.md").read_text()


def test_no_feature_network_gives_dashes(runs, tmp_path):
    """synthetic:bars has no feature network: FID, KID, precision and recall read "–"."""
    out = tmp_path / "report"
    assert main(["compare", str(runs[1]), "--out", str(out), "-n", "50", "--device", "cpu"]) == 0
    (row,) = _rows((out / "index.html").read_text())
    assert _cells(row)[6:11] == [DASH] * 5


def test_ood_auroc_and_probe_columns_match_their_own_commands(runs, tmp_path, capsys):
    """The OOD AUROC cell is the log-likelihood's (the GAN's: its discriminator's) AUROC that
    `genlab.metrics.detect` computes on the same data; the probe cell is `probe`'s accuracy."""
    import genlab
    from genlab.data import load as load_data
    from genlab.metrics import detect, probe
    from genlab.metrics.report import COLUMNS, PROBE_LIMIT
    from genlab.models.base import read_config

    out = tmp_path / "report"
    assert main(["compare", *map(str, runs), "--out", str(out), "--metrics", "ood,probe",
                 "--ood", "synthetic:blobs", "--device", "cpu", "-k", "5"]) == 0
    rows = [_cells(r) for r in _rows((out / "index.html").read_text())]
    at = {col: COLUMNS.index(col) for col in ("OOD AUROC", "probe")}
    for run, cells in zip(runs, rows, strict=True):
        model = genlab.load(run)
        how = {"binarize": read_config(run)["train"]["data"]["binarize"], "shape": (1, 8, 8)}
        test = load_data("synthetic:bars", "test", **how)
        ood = load_data("synthetic:blobs", "test", **how)
        kw = {} if model.exact or not model.has("log_prob") else {"k": 5}
        torch.manual_seed(0)
        report, _ = detect(model, test, ood, **kw)
        assert cells[at["OOD AUROC"]].startswith(f"{report.rows[0].auroc:.3f}<br>")
        if model.has("encode"):
            train, val = (load_data("synthetic:bars", s, limit=PROBE_LIMIT, **how)
                          for s in ("train", "val"))
            want = probe(model, train, val, test, controls=False).rows[0].accuracy
            assert cells[at["probe"]].startswith(f"{100 * want:.2f}%<br>")
        else:
            assert cells[at["probe"]] == DASH
    # the run's own data as --ood says so instead of a meaningless 0.5
    again = tmp_path / "again"
    assert main(["compare", str(runs[0]), "--out", str(again), "--metrics", "ood",
                 "--ood", "synthetic:bars", "--device", "cpu"]) == 0
    (row,) = _rows((again / "index.html").read_text())
    assert _cells(row)[at["OOD AUROC"]] == DASH
    with pytest.raises(ValueError, match="needs an OOD source"):
        parse_metrics("ood")
    # an OOD source that does not exist is refused before the first run's metrics
    capsys.readouterr()
    assert main(["compare", str(runs[0]), "--out", str(tmp_path / "bad"), "--ood",
                 str(tmp_path / "nowhere"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "unknown data source" in err and "[1/1]" not in err and err.count("\n") == 1
    assert "ood" not in parse_metrics(None) and "ood" in parse_metrics(None, "mnist")


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err.strip()
    assert "not a run folder" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="unknown --metrics"):
        parse_metrics("nll,bogus")
    assert parse_metrics("fid,kid") == ["quality"]


def test_renders_in_chromium(runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make setup installs it where apt-get and root "
                    "exist)")
    out = tmp_path / "report"
    assert main(["compare", *map(str, runs[:2]), "--out", str(out), "--metrics", "nll",
                 "--device", "cpu"]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox",
                    f"--screenshot={shot}", "--window-size=1280,900",
                    (out / "index.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000  # more than a blank page
