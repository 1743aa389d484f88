"""Detection metrics against hand-computed cases; OOD scores chosen by capability; perturb data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny
from PIL import Image

import genlab
from genlab.cli import main
from genlab.data import Dataset, load, synthetic
from genlab.metrics import (
    CORRUPTIONS,
    Detection,
    aupr,
    auroc,
    corrupt,
    detect,
    fpr_at_tpr,
    png_bits,
    typicality,
)

T = torch.tensor


def test_metrics_by_hand():
    # descending: .9 P, .8 P, .7 N, .4 P, .3 N, .2 N, .1 N
    pos, neg = T([0.9, 0.8, 0.4]), T([0.7, 0.3, 0.2, 0.1])
    assert auroc(pos, neg) == pytest.approx(11 / 12)  # 4 + 4 + 3 of the 12 pairs
    # precision at each positive: 1/1, 2/2, 3/4, each worth recall 1/3
    assert aupr(pos, neg) == pytest.approx((1 + 1 + 0.75) / 3)
    # all three positives need threshold .4, which flags .7 too: 1 of 4 negatives
    assert fpr_at_tpr(pos, neg) == pytest.approx(0.25)
    assert fpr_at_tpr(pos, neg, tpr=0.6) == 0.0  # two of three caught above every negative


def test_metrics_with_ties_and_extremes():
    pos, neg = T([1.0, 1.0]), T([1.0, 0.0])
    assert auroc(pos, neg) == pytest.approx(0.75)
    assert aupr(pos, neg) == pytest.approx(2 / 3)  # the tie enters at once: 2 TP, 1 FP
    assert fpr_at_tpr(pos, neg) == pytest.approx(0.5)
    assert (auroc(T([2.0, 3.0]), T([0.0, 1.0])), aupr(T([2.0, 3.0]), T([0.0, 1.0]))) == (1, 1)
    assert fpr_at_tpr(T([2.0, 3.0]), T([0.0, 1.0])) == 0.0
    assert fpr_at_tpr(T([0.0, 1.0]), T([2.0, 3.0])) == 1.0
    # 19 of 20 is exactly 95%: the threshold 2 suffices, flagging only the negative 30
    assert fpr_at_tpr(torch.arange(1.0, 21.0), T([0.5, 1.5, 30.0])) == pytest.approx(1 / 3)
    for f in (auroc, aupr, fpr_at_tpr):
        with pytest.raises(ValueError):
            f(T([]), T([1.0]))
        with pytest.raises(ValueError):
            f(T([float("nan")]), T([1.0]))


def test_aupr_chance_is_the_positive_share():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.rand(2000, generator=g), torch.rand(6000, generator=g)
    assert aupr(pos, neg) == pytest.approx(0.25, abs=0.02)
    assert auroc(pos, neg) == pytest.approx(0.5, abs=0.02)
    assert fpr_at_tpr(pos, neg) == pytest.approx(0.95, abs=0.02)


def test_report_str_and_json():
    row = Detection.of("log-likelihood (exact)", T([0.0, 1.0]), T([2.0, 3.0]))
    assert (row.auroc, row.aupr, row.fpr95, row.n_in, row.n_out) == (1.0, 1.0, 0.0, 2, 2)
    from genlab.metrics import DetectionReport

    report = DetectionReport("nade", "in data", "out data", [row], ["a note"])
    assert "log-likelihood (exact)" in str(report) and "1.000" in str(report)
    assert json.loads(report.to_json())["rows"][0]["auroc"] == 1.0


def test_typicality_batches():
    lp = -T([1.0, 3.0, 1.0, 3.0])  # -log p = 1, 3, 1, 3
    assert typicality(lp, 2.0, 1).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert len(typicality(lp, 2.0, 2)) == 2  # disjoint batches of 2
    assert typicality(lp, 2.0, 4).tolist() == [0.0]  # the batch mean is H itself
    with pytest.raises(ValueError):
        typicality(lp, 2.0, 5)


def test_corruptions_stay_images():
    x = torch.rand(3, 1, 4, 4)
    for kind in CORRUPTIONS:
        c = corrupt(x, kind)
        assert c.shape == x.shape and bool(((c >= 0) & (c <= 1)).all())
    assert torch.equal(corrupt(x, "invert"), 1 - x)
    with pytest.raises(ValueError, match="noise"):
        corrupt(x, "blur")


def test_scores_follow_capabilities():
    data = synthetic("bars", n=60, shape=(1, 4, 4), seed=0)
    noise = (torch.rand(60, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    other = Dataset(noise, name="noise")
    m = genlab.create("fulljoint", shape=(1, 4, 4))  # a table: bar patterns, not noise
    m.estimate(data.x)
    bg = tiny("independent")
    report, scores = detect(m, data, other, train=data, background=bg, typicality_m=(1, 5))
    names = [r.score for r in report.rows]
    assert names == ["log-likelihood (exact)", "typicality, M=1", "typicality, M=5",
                     "likelihood ratio (background model)",
                     "input complexity (PNG as the background)"]
    assert report.rows[0].auroc > 0.9  # a fitted model finds noise unlikely
    assert report.rows[2].n_in == 12  # 60 images in batches of 5
    gan = tiny("gan")
    report, _ = detect(gan, data, other)
    assert [r.score for r in report.rows] == ["discriminator logit (GAN's D, not a likelihood)"]


def test_png_bits_are_the_length_of_each_image_as_a_png_file(tmp_path):
    """L(x) against files written by PIL itself, for grey, RGB and two-channel images; a
    flat image costs fewer bits than noise."""
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 28, 28), (3, 8, 8), (2, 5, 6)):
        x = torch.rand(3, *shape, generator=g)
        x[0] = 0.5  # flat
        got = png_bits(x)
        for i in range(3):
            values = (x[i] * 255).round().to(torch.uint8)
            image = (Image.fromarray(values.permute(1, 2, 0).numpy(), "RGB") if shape[0] == 3
                     else Image.fromarray(torch.cat(list(values)).numpy(), "L"))
            path = tmp_path / f"{shape[0]}-{i}.png"
            image.save(path, optimize=True)
            assert got[i] == 8 * path.stat().st_size
        assert got[0] < got[1]


def test_input_complexity_is_the_likelihood_ratio_against_the_png_compressor():
    """The score by hand: -log p(x) - L(x) ln 2 for each image, in and out; and it does what
    it is for: a model of busy images finds flat ones likely, the score does not."""
    g = torch.Generator().manual_seed(1)
    busy = Dataset((torch.rand(200, 1, 8, 8, generator=g) < 0.5).float(), name="busy")
    flat = Dataset(torch.zeros(200, 1, 8, 8), name="flat")
    m = genlab.create("independent", shape=(1, 8, 8))
    m.estimate(busy.x[:100])
    m.logits.data.sub_(0.3)  # a little less ink than half: all-black is the likeliest image
    report, scores = detect(m, Dataset(busy.x[100:], name="busy test"), flat)
    s_in, s_out = scores["input complexity (PNG as the background)"]
    for s, x in ((s_in, busy.x[100:]), (s_out, flat.x)):
        want = -m.log_prob(x).double() - math.log(2) * png_bits(x)
        torch.testing.assert_close(s.double(), want)
    rows = {r.score: r.auroc for r in report.rows}
    assert rows["log-likelihood (exact)"] < 0.5 < rows["input complexity (PNG as the background)"]


def test_an_estimated_background_takes_the_k_asked_for_and_an_exact_model_none():
    data = synthetic("bars", n=20, shape=(1, 4, 4), seed=0)
    other = Dataset((torch.rand(20, 1, 4, 4) < 0.5).float(), name="noise")
    seen = []
    model, bg = tiny("independent"), tiny("vae")
    for m in (model, bg):
        real = m.log_prob

        def spy(x, real=real, m=m, **kw):
            seen.append((m.name, kw.get("k")))
            return real(x, **kw)
        m.log_prob = spy
    detect(model, data, other, background=bg, k=3)
    assert set(seen) == {("independent", None), ("vae", 3)}  # not the VAE's default 5000


def test_perturb_source():
    clean = load("synthetic:bars", "train", binarize="static", limit=400)
    noisy = load("perturb:0.5:synthetic:bars", "train", binarize="static", limit=400)
    changed = float((clean.x != noisy.x).float().mean())
    assert changed == pytest.approx(0.25, abs=0.03)  # half replaced, half of those differ
    assert noisy.origin["source"] == "perturb:0.5:synthetic:bars"
    assert torch.equal(load(**noisy.origin).x, noisy.x)  # one fixed draw, reloadable
    none = load("perturb:0:synthetic:bars", "train", binarize="static", limit=400)
    assert torch.equal(none.x, clean.x)
    with pytest.raises(ValueError, match="RATE"):
        load("perturb:2:synthetic:bars")


# ---- genlab ood, end to end on tiny runs -----------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs on synthetic bars (1x8x8): NADE, its background model on perturbed bars,
    a VAE and a GAN, a few steps each."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"nade": ("synthetic:bars", ["hidden=4"]),
             "background": ("perturb:0.2:synthetic:bars", ["hidden=4"]),
             "vae": ("synthetic:bars", ["hidden=8", "latent=2"]),
             "gan": ("synthetic:bars", ["latent=2", "hidden=8,8"])}
    for name, (data, sets) in specs.items():
        model = "nade" if name == "background" else name
        argv = ["train", model, "--data", data, "--steps", "3", "--quiet", "--sample-every", "0",
                "--out", str(root / name)]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return root


def test_ood_cli_prints_every_score_and_writes_the_histogram(runs, tmp_path, capsys):
    code = main(["ood", str(runs / "nade"), "--ood", "invert", "--background",
                 str(runs / "background"), "--typicality-m", "1,4", "--limit", "64",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for name in ("log-likelihood (exact)", "typicality, M=1", "typicality, M=4",
                 "likelihood ratio (background model)",
                 "input complexity (PNG as the background)", "synthetic:bars (invert)"):
        assert name in out
    assert Image.open(tmp_path / "ood-invert.png").format == "PNG"
    rows = json.loads((tmp_path / "ood-invert.json").read_text())["rows"]
    assert len(rows) == 5 and rows[2]["n_in"] == 16  # 64 images in batches of 4


def test_corruptions_survive_binarization(runs):
    import argparse

    from genlab.cli import _ood_data
    from genlab.models import load as load_run

    model = load_run(runs / "nade")
    for kind, lo, hi in (("noise", 0.4, 0.6), ("invert", 0.0, 1.0)):
        args = argparse.Namespace(run=str(runs / "nade"), data=None, ood=kind, limit=64, seed=0)
        test, out, _ = _ood_data(args, model)
        assert out.binarize == test.binarize == "static" and len(out) == 64
        assert bool(((out.x == 0) | (out.x == 1)).all())
        assert lo < float(out.x.mean()) < hi  # noise binarized is Bernoulli(1/2), not all 0


def test_ood_cli_names_estimates_and_discriminators(runs, tmp_path, capsys):
    code = main(["ood", str(runs / "vae"), "--ood", "noise", "-k", "4", "--limit", "32",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "log-likelihood (importance-weighted estimate, k=4)" in out
    code = main(["ood", str(runs / "gan"), "--ood", "synthetic:blobs", "--limit", "32",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "discriminator logit" in out and "typicality" not in out


def test_ood_cli_errors_are_one_line(runs, capsys):
    code = main(["ood", str(runs / "nade"), "--ood", "no-such-source"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unknown data source" in err
