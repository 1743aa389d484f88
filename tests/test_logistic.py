"""The discretised logistic of genlab.nn: its K masses sum to one for any parameters, agree with
the plain CDF differences, and its sampler and exact mean follow the same masses."""

from __future__ import annotations

import itertools

import pytest
import torch

from genlab.nn import (
    discrete_sample,
    logistic_log_prob,
    logistic_mean,
    logistic_min_log_scale,
    logistic_sample,
)

CHI2_3 = 16.27  # chi-square critical value at p = 0.001, 3 degrees of freedom


def parameters(levels, extreme):
    """Means and log-scales (P,) in float64: random moderate ones, or with ``extreme`` also
    every pair of means far outside [0, 1] and scales far below the clamp and far above a bin."""
    g = torch.Generator().manual_seed(levels)
    floor = logistic_min_log_scale(levels)
    mean = torch.rand(200, generator=g, dtype=torch.float64) * 2 - 0.5
    log_scale = floor + 0.5 + torch.rand(200, generator=g, dtype=torch.float64) * 4
    if extreme:
        means = [-1e4, -30.0, -0.4, 0.0, 0.3, 0.5, 1.0, 1.7, 40.0, 1e6]
        scales = [-60.0, floor - 5, floor, -2.0, 0.0, 5.0, 40.0, 300.0, 800.0]
        pairs = torch.tensor(list(itertools.product(means, scales)), dtype=torch.float64)
        mean, log_scale = torch.cat([mean, pairs[:, 0]]), torch.cat([log_scale, pairs[:, 1]])
    return mean, log_scale


def log_masses(mean, log_scale, levels):
    """(K, P): log P(level k) of each of the P sub-pixels, one per one-sub-pixel image."""
    p = len(mean)
    x = (torch.arange(levels, dtype=mean.dtype) / (levels - 1)).repeat_interleave(p)  # (K P,)
    view = (levels * p, 1, 1, 1)
    lp = logistic_log_prob(mean.repeat(levels).view(view), log_scale.repeat(levels).view(view),
                           x.view(view), levels)
    return lp.view(levels, p)


@pytest.mark.parametrize("levels", [3, 4, 256])
def test_the_masses_sum_to_one_for_any_parameters(levels):
    mean, log_scale = parameters(levels, extreme=True)
    lp = log_masses(mean, log_scale, levels)
    assert bool(torch.isfinite(lp).all() & (lp <= 0).all())
    assert torch.allclose(lp.exp().sum(0), torch.ones(len(mean), dtype=torch.float64),
                          rtol=0, atol=1e-12)
    # float32 parameters, as in training: still normalised and differentiable everywhere.
    mean32, scale32 = mean.float().requires_grad_(), log_scale.float().requires_grad_()
    lp32 = log_masses(mean32, scale32, levels)
    assert torch.allclose(lp32.exp().sum(0), torch.ones(len(mean), dtype=torch.float64),
                          rtol=0, atol=1e-6)
    lp32.sum().backward()
    assert bool(torch.isfinite(mean32.grad).all() & torch.isfinite(scale32.grad).all())


@pytest.mark.parametrize("levels", [3, 4, 256])
def test_the_masses_are_the_logistic_cdf_differences(levels):
    """On moderate parameters, where the direct CDF difference is accurate."""
    mean, log_scale = parameters(levels, extreme=False)
    edges = (torch.arange(levels + 1, dtype=torch.float64) - 0.5) / (levels - 1)  # (K + 1,)
    cdf = torch.sigmoid((edges[:, None] - mean) / log_scale.exp())  # (K + 1, P)
    cdf[0], cdf[-1] = 0.0, 1.0  # the edge bins take the tails
    direct = cdf[1:] - cdf[:-1]  # (K, P)
    assert torch.allclose(log_masses(mean, log_scale, levels).exp(), direct,
                          rtol=1e-9, atol=1e-13)


def test_a_log_scale_below_the_floor_is_the_floor():
    mean, floor = torch.tensor([1 / 3, 2 / 3]), logistic_min_log_scale(4)  # on the grid
    low = log_masses(mean, torch.full((2,), floor - 4.0), 4)
    assert torch.equal(low, log_masses(mean, torch.full((2,), floor), 4))
    assert float(low.exp().max()) > 0.9999  # a floored scale still makes a level near-certain


@pytest.mark.parametrize("levels", [3, 4, 256])
def test_the_mean_is_the_expected_grid_value(levels):
    mean, log_scale = parameters(levels, extreme=True)
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    expected = (grid[:, None] * log_masses(mean, log_scale, levels).exp()).sum(0)
    assert torch.allclose(logistic_mean(mean, log_scale, levels), expected,
                          rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("levels", [4, 256])
def test_the_sampler_is_the_inverse_cdf_of_the_masses(levels):
    """Same uniforms, same values as the categorical sampler fed the logistic's log-masses."""
    mean, log_scale = parameters(levels, extreme=True)
    u = torch.rand(50, len(mean), generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64)
    x = logistic_sample(mean.expand_as(u), log_scale.expand_as(u), levels, u)
    logits = log_masses(mean, log_scale, levels).clamp(min=-1e4)  # (K, P)
    reference = discrete_sample(logits.unsqueeze(0).expand(50, -1, -1), levels, u)
    assert x.dtype == torch.float32 and torch.equal(x, reference)
    ends = logistic_sample(torch.full((2,), 0.5), torch.zeros(2), levels, torch.tensor([0., 1.]))
    assert ends.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(("mean", "log_scale"), [(0.4, -1.5), (0.02, -3.0), (0.9, 1.0)])
def test_sample_frequencies_match_the_masses(mean, log_scale):
    n, levels = 100_000, 4
    m, s = torch.tensor([mean], dtype=torch.float64), torch.tensor([log_scale])
    probs = log_masses(m, s.double(), levels).exp()[:, 0]  # (K,)
    u = torch.rand(n, generator=torch.Generator().manual_seed(2))
    x = logistic_sample(m.float().expand(n), s.expand(n), levels, u)
    counts = torch.bincount(torch.round(x * (levels - 1)).long(), minlength=levels).double()
    assert float(((counts - n * probs) ** 2 / (n * probs)).sum()) < CHI2_3
    # 256 levels: too many sparse bins for chi-square, so a total-variation bound.
    m256 = torch.tensor([mean], dtype=torch.float64)
    probs = log_masses(m256, s.double() - 4, 256).exp()[:, 0]  # spreads of 0.2 to 7 bins
    x = logistic_sample(m256.expand(n), (s - 4).expand(n), 256, u)
    freq = torch.bincount(torch.round(x * 255).long(), minlength=256).double() / n
    assert 0.5 * float((freq - probs).abs().sum()) < 0.03
