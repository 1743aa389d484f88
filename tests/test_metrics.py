"""Metrics: AUROC against hand-computed cases, bits/dim, the NLL report of an exact model."""

from __future__ import annotations

import math

import pytest
import torch

import genlab
from genlab.data import synthetic
from genlab.metrics import auroc, bits_per_dim, log_probs, nll


def test_auroc_known_values_and_ties():
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    # pairs: (2>1) (2=2 -> 1/2) (2<3) (5>1) (5>2) (5>3) -> 4.5 / 6
    assert auroc(torch.tensor([2.0, 5.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        auroc(torch.tensor([]), torch.tensor([1.0]))


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


def test_nll_report_of_an_exact_model_matches_log_prob():
    data = synthetic("bars", n=40, shape=(1, 4, 4), seed=0)
    m = genlab.create("independent", shape=(1, 4, 4))
    m.estimate(data.x)
    lp = log_probs(m, data, batch_size=7)  # several batches, last one partial
    assert lp.shape == (40,) and lp.dtype == torch.float64
    assert torch.allclose(lp, m.log_prob(data.x).double())
    report = nll(m, data, batch_size=7)
    assert report.exact and report.method == "exact"
    assert report.nats == pytest.approx(float(-lp.mean()))
    assert "bits/dim" in str(report) and "synthetic:bars" in str(report)


def test_log_probs_of_a_gan_is_unsupported():
    m = genlab.create("gan", shape=(1, 4, 4), latent=2, hidden=[4, 4])
    with pytest.raises(genlab.Unsupported):
        log_probs(m, synthetic("bars", n=8, shape=(1, 4, 4)))
