"""Linear probe and k-NN on cases with known answers; encode of NADE and the PixelCNNs."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

import genlab
from genlab.cli import main
from genlab.data import Dataset
from genlab.metrics import knn_accuracy, linear_probe, probe, standardize


def _blobs(n: int, d: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Class means far apart in d dimensions, unit noise: (N, d) features, (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * spread
    y = torch.arange(n) % classes
    return means[y] + torch.randn(n, d, generator=g), y


def test_probe_separates_separable_features():
    splits = [_blobs(300, 5, 3, 10.0, seed) for seed in (0, 1, 2)]
    acc, decay = linear_probe(*splits)
    assert acc == 1.0 and decay in (1e-5, 1e-4, 1e-3, 1e-2)


def test_probe_on_random_labels_is_at_chance():
    g = torch.Generator().manual_seed(0)
    splits = [(torch.randn(600, 10, generator=g), torch.randint(0, 4, (600,), generator=g))
              for _ in range(3)]
    acc, _ = linear_probe(*splits)
    assert acc == pytest.approx(0.25, abs=0.07)


def test_knn_by_hand():
    # training points on the unit circle's axes; cosine ignores the norm
    z = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    q = torch.tensor([[5.0, 0.2], [0.0, 0.5], [-3.0, 0.1]])
    # k=1: nearest by angle is class 0, 1, 2
    assert knn_accuracy(z, y, q, torch.tensor([0, 1, 2]), k=1) == 1.0
    # k=3 for (-3, 0.1): neighbours (-1, 0) [2], (0, 1) [1], (0.1, 3) [1]: class 1 wins 2 to 1
    assert knn_accuracy(z, y, q[2:], torch.tensor([1]), k=3) == 1.0
    # k=2 for (5, .2): both class-0 points; a 1-1 tie goes to the more similar neighbour
    assert knn_accuracy(z, y, torch.tensor([[1.0, 0.9]]), torch.tensor([0]), k=2) == 1.0
    with pytest.raises(ValueError):
        knn_accuracy(z, y, q, torch.tensor([0, 1, 2]), k=6)


def test_standardize_uses_the_training_statistics_and_spares_constants():
    a = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    sa, sb = standardize(a, torch.tensor([[2.0, 7.0]]))
    assert torch.allclose(sa[:, 0].abs(), torch.full((2,), 2 ** -0.5))
    assert sb.tolist() == [[0.0, 2.0]] and bool(torch.isfinite(sa).all())


def test_nade_encode_is_the_hidden_layer_given_the_whole_image():
    m = tiny("nade")
    x = (torch.rand(3, 1, 4, 4) < 0.5).float()
    h = m.encode(x)
    assert h.shape == (3, 8)
    xs = x.flatten(1)[:, m.order]
    assert torch.allclose(h, torch.sigmoid(m.c + xs @ m.W))
    last = x.clone().flatten(1)
    last[:, m.order[-1]] = 1 - last[:, m.order[-1]]  # the last pixel counts too
    assert not torch.allclose(m.encode(last.view_as(x)), h)


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn"])
def test_pixelcnn_encode_pools_the_last_feature_map(name):
    m = tiny(name)
    x = (torch.rand(3, 1, 4, 4) < 0.5).float()
    z = m.encode(x)
    assert z.shape == (3, 2 * m.config.channels)
    first = x.clone()
    first[:, 0, 0, 0] = 1 - first[:, 0, 0, 0]
    assert not torch.allclose(m.encode(first), z)


def labelled(seed: int) -> Dataset:
    """Two classes of 4x4 images, top or bottom half on, 10% of the pixels flipped."""
    x = torch.zeros(120, 1, 4, 4)
    y = torch.arange(120) % 2
    x[y == 0, :, :2] = 1
    x[y == 1, :, 2:] = 1
    flip = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < 0.1
    return Dataset(torch.where(flip, 1 - x, x), y, "halves")


@pytest.mark.parametrize("name", [n for n, c in genlab.MODELS.items() if c.has("encode")])
def test_every_encoder_gets_its_random_weight_control(name):
    report = probe(tiny(name), labelled(0), labelled(1), labelled(2))
    assert [r.dim for r in report.rows][::2] == [report.rows[0].dim] * 2  # same encoder
    assert all(0 <= r.accuracy <= 1 and 0 <= r.knn_accuracy <= 1 for r in report.rows)


def test_probe_report_has_both_controls():
    report = probe(tiny("nade"), labelled(0), labelled(1), labelled(2))
    names = [r.features for r in report.rows]
    assert names == ["nade encode", "raw pixels", "nade encode, random weights"]
    assert report.rows[1].accuracy > 0.95 and report.rows[1].knn_accuracy > 0.95
    assert "raw pixels" in str(report) and '"accuracy"' in report.to_json()
    with pytest.raises(genlab.Unsupported):
        probe(tiny("markov"), labelled(0), labelled(1), labelled(2))


def test_probe_cli(tmp_path, capsys):
    argv = ["train", "nade", "--data", "synthetic:bars", "--steps", "3", "--quiet",
            "--sample-every", "0", "--set", "hidden=4", "--out", str(tmp_path / "nade")]
    assert main(argv) == 0
    capsys.readouterr()
    code = main(["probe", str(tmp_path / "nade"), "--limit", "100",
                 "--json", str(tmp_path / "p.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "raw pixels" in out and "random weights" in out and (tmp_path / "p.json").exists()
