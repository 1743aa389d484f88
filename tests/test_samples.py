"""Sample-quality metrics, each on a case with a known answer (small subsets, a stand-in net)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny
from torch import Tensor, nn

from genlab.data import Dataset, load
from genlab.metrics import samples as S


class StandIn(nn.Module):
    """A random conv net with FeatureNet's members, until the shipped networks land."""

    def __init__(self, seed: int = 0, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(),  # 28 -> 12
                nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),  # 12 -> 5
                # Batch norm (the identity in eval mode at init): a 0-d buffer for the hash.
                nn.Flatten(), nn.Linear(16 * 5 * 5, dim), nn.BatchNorm1d(dim))
            self.head = nn.Linear(dim, classes)
            for m in self.modules():
                # He init, zero bias: features that vary across digits (std ~0.3), where
                # PyTorch's default init gives ~0.003 and every FID would be ~1e-4.
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)
                    nn.init.zeros_(m.bias)
        # No num_features: torchmetrics gets it through the adapter (the shipped net has one).
        self.name, self.dim, self.classes = "stand-in", dim, [str(c) for c in range(classes)]
        self.description = f"stand-in random conv net, {dim}-d"

    def features(self, x: Tensor) -> Tensor:  # (B, 1, H, W) -> (B, dim)
        return self.body(x)

    def logits(self, x: Tensor) -> Tensor:  # (B, 1, H, W) -> (B, classes)
        return self.head(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def shipped_net() -> nn.Module | None:
    try:
        from genlab.metrics.features import load_feature_net  # type: ignore[import-not-found]

        return load_feature_net("mnist")
    except (ImportError, RuntimeError):  # not merged yet, or its weights not shipped yet
        return None


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # Never write into the user's cache from the tests.
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def mnist() -> Tensor:
    return load("mnist", "test").x[:800]  # (800, 1, 28, 28)


def as_data(x: Tensor) -> Dataset:
    return Dataset(x, name="mnist", split="test")


def direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of features (N, D) and (M, D), independently of torchmetrics: tr sqrt(S1 S2) as
    tr sqrt(S1^1/2 S2 S1^1/2), a symmetric matrix, by eigh."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root @ s2 @ root).clip(min=0)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def direct_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel (x.y / D + 1)^3 on all of a (N, D) and b (N, D)."""
    d = a.shape[1]
    kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
    n = len(a)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


# ---- FID and KID ---------------------------------------------------------------------------------
def test_fid_is_zero_for_identical_sets(mnist):
    x = mnist[:300]
    assert abs(S.fid(x, as_data(x), StandIn()).value) < 1e-3


def test_torchmetrics_agree_with_direct_computation(mnist):
    net = StandIn()
    real, fake = mnist[:300], mnist[300:600].flip(-1)  # mirrored digits: a clear distance
    fr = S.extract(net, real).double().numpy()
    ff = S.extract(net, fake).double().numpy()
    f = S.fid(fake, as_data(real), net)
    assert f.value == pytest.approx(direct_fid(fr, ff), rel=1e-4)
    assert f.value > 0.01
    # One subset of all 300 is a permutation of the whole sets: MMD^2 is order-free, std 0.
    k = S.kid(fake, as_data(real), net, subsets=1, subset_size=300)
    assert k.value == pytest.approx(direct_kid(fr, ff), rel=1e-3)
    assert k.std == 0
    k = S.kid(fake, as_data(real), net, subsets=20, subset_size=100)
    assert k.std > 0 and k.value == pytest.approx(direct_kid(fr, ff), rel=0.5)


def test_torchmetrics_adapter_only_where_needed(mnist):
    from torchmetrics.image.fid import FrechetInceptionDistance

    net, real, fake = StandIn(), as_data(mnist[:200]), mnist[200:400]
    with pytest.raises(RuntimeError):  # it probes the net with a (1, 3, 299, 299) uint8 image
        FrechetInceptionDistance(feature=net)
    assert isinstance(S.torchmetrics_feature(net), S.TorchmetricsFeature)
    wrapped = S.fid(fake, real, net).value
    net.num_features = net.dim  # as FeatureNet has: torchmetrics takes the net itself
    assert S.torchmetrics_feature(net) is net
    assert S.fid(fake, real, net).value == pytest.approx(wrapped, rel=1e-9)


def blur(x: Tensor, level: int) -> Tensor:
    k = 2 * level + 1  # box blur of width 3, 5, 7
    return nn.functional.avg_pool2d(x, k, stride=1, padding=level, count_include_pad=False)


def occlude(x: Tensor, level: int) -> Tensor:
    x = x.clone()
    side = 6 * level  # a black square of 6, 12, 18 pixels over the middle
    lo = (28 - side) // 2
    x[..., lo:lo + side, lo:lo + side] = 0
    return x


def noise(x: Tensor, level: int) -> Tensor:
    g = torch.Generator().manual_seed(level)
    return (x + 0.25 * level * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("corrupt", [noise, blur, occlude])
@pytest.mark.parametrize("which", ["stand-in", "shipped"])
def test_fid_grows_with_corruption(mnist, corrupt, which):
    net = StandIn() if which == "stand-in" else shipped_net()
    if net is None:
        pytest.skip("genlab.metrics.features has not landed")
    real, other = as_data(mnist[:400]), mnist[400:800]
    fids = [S.fid(other if lvl == 0 else corrupt(other, lvl), real, net).value
            for lvl in range(4)]
    assert fids == sorted(fids) and len(set(fids)) == 4, fids


# ---- precision and recall ------------------------------------------------------------------------
def clusters(modes: list[int], per_mode: int, seed: int) -> Tensor:
    """(len(modes) * per_mode, 2): unit Gaussians around 10 centres 12 apart on a circle."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.arange(10.0) / 10
    centres = 20 * torch.stack([angle.cos(), angle.sin()], 1)  # (10, 2)
    return torch.cat([centres[m] + torch.randn(per_mode, 2, generator=g) for m in modes])


def test_precision_recall_known_answers():
    real = clusters(list(range(10)), 100, seed=0)
    assert S.precision_recall_features(real, real) == (1.0, 1.0)
    half = clusters(list(range(5)), 200, seed=1)  # as many points, half the modes
    p, r = S.precision_recall_features(real, half, k=3)
    assert p > 0.9
    assert r == pytest.approx(0.5, abs=0.06)
    # Swapped roles: every real point lies in the fake manifold, half the fake do not.
    p, r = S.precision_recall_features(half, real, k=3)
    assert p == pytest.approx(0.5, abs=0.06) and r > 0.9


def test_precision_recall_report_on_images(mnist):
    x = mnist[:200]
    rep = S.precision_recall(x, as_data(x), StandIn())
    assert rep.value == 1.0 and rep.details["recall"] == 1.0


# ---- classifier score and coverage ---------------------------------------------------------------
def test_classifier_score_known_answers():
    labels = torch.arange(1000) % 10  # every split holds every class equally
    confident = nn.functional.one_hot(labels, 10).double()
    assert S.classifier_score_probs(confident)[0] == pytest.approx(10)
    assert S.classifier_score_probs(torch.full((1000, 10), 0.1))[0] == pytest.approx(1)
    one_class = nn.functional.one_hot(torch.zeros(1000, dtype=torch.long), 10).double()
    assert S.classifier_score_probs(one_class)[0] == pytest.approx(1)
    covered, hist = S.mode_coverage(labels % 5, 10)
    assert covered == 5 and hist == [200] * 5 + [0] * 5
    stray = torch.cat([torch.zeros(999, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    assert S.mode_coverage(stray, 10)[0] == 1  # one stray image does not cover a class


def test_classifier_score_report_names_the_net(mnist):
    net = StandIn()
    rep = S.classifier_score(mnist[:200], net, real=as_data(mnist))
    assert 1 <= rep.value <= 10 and sum(rep.details["histogram"]) == 200
    assert net.description in str(rep) and "covers" in str(rep)


# ---- Parzen --------------------------------------------------------------------------------------
def test_parzen_converges_to_the_true_log_likelihood():
    g = torch.Generator().manual_seed(0)
    test = torch.randn(2000, 2, generator=g)
    true = float((-0.5 * (test**2).sum(1) - math.log(2 * math.pi)).mean())
    val = torch.randn(1000, 2, generator=g)
    sigmas = [float(s) for s in np.logspace(-2, 0.5, 30)]
    errors = []
    for n in (30, 300, 3000):
        rep = S.parzen(torch.randn(n, 2, generator=g), val, test, sigmas=sigmas)
        errors.append(abs(rep.value - true))
    assert errors[0] > errors[-1] and errors[-1] < 0.05, errors
    assert rep.std == pytest.approx(float(test.pow(2).sum(1).std()) / 2 / math.sqrt(2000),
                                    rel=0.2)


def test_parzen_picks_the_right_bandwidth():
    # All samples at 0: the estimate is exactly N(0, sigma^2 I), best at sigma = the data's 0.3.
    g = torch.Generator().manual_seed(0)
    val, test = 0.3 * torch.randn(1000, 50, generator=g), 0.3 * torch.randn(500, 50, generator=g)
    rep = S.parzen(torch.zeros(10, 50), val, test)
    grid = np.array(S.PARZEN_SIGMAS)
    assert rep.details["sigma"] == grid[np.abs(np.log(grid / 0.3)).argmin()]
    s = rep.details["sigma"]
    exact = (-0.5 * test.double().pow(2).sum(1) / s**2 - 25 * math.log(2 * math.pi * s**2))
    assert rep.value == pytest.approx(float(exact.mean()), rel=1e-9)


# ---- cache ---------------------------------------------------------------------------------------
def test_cache_hit_gives_identical_statistics(mnist, monkeypatch):
    net, real = StandIn(), as_data(mnist[:300])
    first = S.reference_features(real, net)
    assert len(list(S.cache_dir().glob("*.npy"))) == 1
    monkeypatch.setattr(net, "features", lambda x: pytest.fail("recomputed on a cache hit"))
    assert torch.equal(S.reference_features(real, net), first)
    monkeypatch.undo()
    assert torch.equal(S.reference_features(real, net, cache=False), first)


def test_damaged_cache_file_is_recomputed(mnist):
    net, real = StandIn(), as_data(mnist[:100])
    first = S.reference_features(real, net)
    (path,) = S.cache_dir().glob("*.npy")
    path.write_bytes(path.read_bytes()[:200])  # truncated, as by a full disk
    assert torch.equal(S.reference_features(real, net), first)
    assert np.load(path).shape == (100, net.dim)


def test_cache_key_follows_the_net_and_the_data(mnist):
    real = as_data(mnist[:300])
    same, other = S.reference_key(real, StandIn(0)), S.reference_key(real, StandIn(1))
    assert same == S.reference_key(real, StandIn(0)) and same != other
    assert same != S.reference_key(as_data(mnist[:299]), StandIn(0))


# ---- reports and the entry point -----------------------------------------------------------------
def test_sample_quality_from_a_model_and_from_images(mnist):
    net, real = StandIn(), as_data(mnist[:300])
    model = tiny("independent", shape=(1, 28, 28))
    reps = S.sample_quality(model, real, net, n=120, batch_size=50, progress=False)
    assert set(reps) == {"fid", "kid", "pr", "cs"}
    for rep in reps.values():
        assert rep.n_samples == 120
        assert net.description in str(rep) and "120 samples vs mnist test" in str(rep)
        assert json.loads(rep.to_json())["value"] == rep.value
    assert "± " in str(reps["kid"]) and "recall" in str(reps["pr"])
    same = S.sample_quality(mnist[:300], real, net, metrics=("fid",))
    assert same["fid"].value < 1e-3 < reps["fid"].value
    with pytest.raises(ValueError, match="val="):
        S.sample_quality(mnist[:10], real, net, metrics=("parzen",))
    with pytest.raises(ValueError, match="unknown"):
        S.sample_quality(mnist[:10], real, net, metrics=("is",))
