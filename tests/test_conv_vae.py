"""The convolutional VAE: its decoder likelihoods normalise, its bound behaves as the VAE's,
and the refactored VAE it builds on is unchanged."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import genlab


def every_image(shape, levels):
    d = math.prod(shape)
    grid = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float32)
    return (grid / (levels - 1)).view(-1, *shape)  # (levels^D, C, H, W)


@pytest.mark.parametrize(("shape", "levels", "likelihood"), [
    ((1, 2, 3), 2, "categorical"), ((1, 2, 2), 3, "categorical"), ((3, 1, 2), 2, "categorical"),
    ((1, 2, 2), 3, "logistic"), ((3, 1, 1), 4, "logistic"), ((1, 1, 2), 5, "logistic")])
def test_the_decoder_likelihood_sums_to_one_over_every_image(shape, levels, likelihood):
    torch.manual_seed(0)
    model = genlab.create("conv_vae", shape=shape, latent=3, width=4, levels=levels,
                          likelihood=likelihood)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    images = every_image(shape, levels)
    z = torch.randn(5, 1, 3).expand(5, len(images), 3)  # 5 codes, each against every image
    lp = model.log_likelihood(images.flatten(1), z)  # (5, N)
    assert lp.shape == (5, len(images))
    assert torch.allclose(lp.double().exp().sum(1), torch.ones(5, dtype=torch.float64),
                          atol=1e-5)


def test_grey_levels_make_a_grey_model_and_binary_a_binary_one():
    grey = genlab.create("conv_vae", shape=(1, 28, 28), levels=256, width=4, latent=2)
    binary = genlab.create("conv_vae", shape=(1, 28, 28), width=4, latent=2)
    assert grey.data_kind == "grey" and binary.data_kind == "binary"
    x = grey.sample(3)
    assert x.shape == (3, 1, 28, 28)
    assert torch.equal(torch.round(x * 255) / 255, x)  # on the 256-level grid
    b = binary.sample(3)
    assert bool(((b == 0) | (b == 1)).all())
    assert grey.encode(x).shape == (3, 2)


def test_the_importance_weighted_estimate_tightens_towards_the_exact_likelihood():
    """On 1x2x2 binary images log p(x) = log E_p(z) p(x|z) is computable by brute force; the
    IWAE estimate is below it on average and closer with more samples."""
    torch.manual_seed(0)
    model = genlab.create("conv_vae", shape=(1, 2, 2), latent=2, width=4).eval()
    with torch.no_grad():  # a decoder far from its start; q stays near the prior (a poor q
        for p in model.decoder.parameters():  # needs astronomically many samples)
            p.add_(0.5 * torch.randn_like(p))
    images = every_image((1, 2, 2), 2)
    z = torch.randn(200_000, 1, 2)
    with torch.no_grad():
        lik = model.log_likelihood(images.flatten(1), z.expand(-1, len(images), 2))
    exact = torch.logsumexp(lik.double(), 0)
    exact = exact - math.log(len(z))
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=0.01)
    gaps = []
    for k in (1, 10, 2000):
        torch.manual_seed(1)
        est = torch.stack([model.log_prob(images, k=k) for _ in range(20)]).double().mean(0)
        gaps.append(float((exact - est).mean()))
    assert gaps[0] > gaps[1] > gaps[2] > -0.01, gaps
    assert gaps[2] < 0.05, gaps


@pytest.mark.parametrize("likelihood", ["categorical", "logistic"])
def test_a_trained_grey_model_learns_the_data_marginals(likelihood):
    """A few steps on constant-ish images: the learned bias makes the likely level likely."""
    from genlab.data import Dataset

    x = torch.full((64, 1, 4, 4), 2 / 3)
    x[:, :, :2] = 0.0
    model = genlab.create("conv_vae", shape=(1, 4, 4), levels=4, width=4, latent=2,
                          likelihood=likelihood)
    genlab.fit(model, Dataset(x), steps=30, batch_size=16, lr=1e-2, progress=False,
               device="cpu", threads=1)
    torch.manual_seed(0)
    s = model.sample(200)
    assert float((s[:, :, :2] == 0).float().mean()) > 0.9
    assert float((s[:, :, 2:] == 2 / 3).float().mean()) > 0.9


def test_the_likelihood_setting_is_checked_and_categorical_by_default():
    assert genlab.MODELS["conv_vae"].Config().likelihood == "categorical"
    with pytest.raises(ValueError, match="needs levels > 2"):
        genlab.create("conv_vae", shape=(1, 4, 4), likelihood="logistic")
    with pytest.raises(ValueError, match="'categorical' or 'logistic', got 'gauss'"):
        genlab.create("conv_vae", shape=(1, 4, 4), levels=4, likelihood="gauss")
    # The default is the categorical: K logits per sub-pixel, as before the setting existed.
    default = genlab.create("conv_vae", shape=(3, 4, 4), levels=5, latent=3, width=4)
    logistic = genlab.create("conv_vae", shape=(3, 4, 4), levels=5, latent=3, width=4,
                             likelihood="logistic")
    assert default.bias.shape == (5, 3, 4, 4) and logistic.bias.shape == (2, 3, 4, 4)
    assert default.decoder(torch.zeros(1, 3)).shape == (1, 15, 4, 4)


def test_logistic_means_and_samples_follow_the_decoder_likelihood():
    """The exact mean draw is the expectation of the levels under log_likelihood, and samples
    from one code have its frequencies (chi-square over the 4 levels of one sub-pixel)."""
    torch.manual_seed(0)
    model = genlab.create("conv_vae", shape=(1, 1, 1), latent=3, width=4, levels=4,
                          likelihood="logistic")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    images = every_image((1, 1, 1), 4)  # (4, 1, 1, 1)
    z = torch.randn(1, 3)
    with torch.no_grad():
        probs = model.log_likelihood(images.flatten(1), z.expand(4, 3)).double().exp()  # (4,)
        mean = model.draw(z, mean=True)
    assert float(mean) == pytest.approx(float((probs * images.flatten().double()).sum()),
                                        abs=1e-6)
    n = 40000
    with torch.no_grad():
        x = model.draw(z.expand(n, 3))
    counts = torch.bincount(torch.round(x.flatten() * 3).long(), minlength=4).double()
    assert float(((counts - n * probs) ** 2 / (n * probs)).sum()) < 16.27  # p = 0.001


def test_a_saved_logistic_model_loads_as_one(tmp_path):
    torch.manual_seed(0)
    model = genlab.create("conv_vae", shape=(1, 4, 4), latent=3, width=4, levels=256,
                          likelihood="logistic").eval()
    with torch.no_grad():  # away from the start, so a load that re-initialises is caught
        model.bias.add_(torch.randn_like(model.bias))
    model.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    assert loaded.config.likelihood == "logistic" and loaded.bias.shape == (2, 1, 4, 4)
    xf = (torch.round(torch.rand(3, 1, 4, 4) * 255) / 255).flatten(1)
    z = torch.randn(2, 3, 3)
    assert torch.equal(model.log_likelihood(xf, z), loaded.log_likelihood(xf, z))
