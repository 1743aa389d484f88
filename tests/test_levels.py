"""Grey levels and colour, generic over every registered model that has ``levels``: exhaustive
normalisation over all images of a tiny colour shape, the autoregressive property across the
R -> G -> B channels, samples against exp(log_prob), and fast samplers against the reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import perturbed

import genlab
from genlab.models.autoregressive import PixelAutoregressive


def _has(name, field):
    return field in {f.name for f in dataclasses.fields(genlab.MODELS[name].Config)}


LEVELLED = [n for n, cls in genlab.MODELS.items() if cls.exact and _has(n, "levels")]
VARIANTS = [(n, o) for n in LEVELLED for o in (("raster", "snake", "random")
                                                 if _has(n, "ordering") else (None,))]
IDS = [f"{n}-{o}" if o else n for n, o in VARIANTS]
ARS = [n for n, cls in genlab.MODELS.items() if issubclass(cls, PixelAutoregressive)]
CHI2_8 = 26.12  # chi-square critical value at p = 0.001, 8 degrees of freedom


def make(name, shape, levels, order=None, noise=0.7, seed=0, **extra):
    return perturbed(name, shape, order, noise, seed, levels=levels, **extra)


def every_image(shape, levels):
    """All levels^D images of ``shape`` on the grid k / (levels - 1), (levels^D, C, H, W)."""
    d = shape[0] * shape[1] * shape[2]
    k = torch.arange(levels**d).unsqueeze(1)
    digits = (k // levels ** torch.arange(d)) % levels
    return (digits.float() / (levels - 1)).view(-1, *shape)


@pytest.mark.parametrize(("name", "order"), VARIANTS, ids=IDS)
@pytest.mark.parametrize(("shape", "levels"), [((3, 1, 2), 4), ((1, 2, 3), 3), ((3, 1, 1), 2)])
def test_probabilities_of_all_level_images_sum_to_one(name, order, shape, levels):
    model = make(name, shape, levels, order)
    with torch.no_grad():
        lp = model.log_prob(every_image(shape, levels)).double()
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-4


@pytest.mark.parametrize(("name", "order"), VARIANTS, ids=IDS)
def test_colour_channels_see_only_earlier_sub_pixels(name, order):
    shape, levels, d = (3, 2, 3), 4, 18
    seen = torch.zeros(d, dtype=torch.bool)
    wide = {"channels": 12} if _has(name, "channels") else {}  # 4 units per colour, not 1
    # Three random models and several inputs: a tiny ReLU network can have a dead path for one
    # draw, never a path to a later sub-pixel.
    for seed in range(3):
        model = make(name, shape, levels, order, seed=seed, **wide).double()
        g = torch.Generator().manual_seed(seed)
        x = 2 * torch.rand(32, *shape, dtype=torch.float64, generator=g) - 0.5  # logits take any x
        jac = torch.autograd.functional.jacobian(lambda v, m=model: m.logits(v).sum(0), x)
        # (K, C, H, W, 32, C, H, W) -> [i, j] = sum over K logits and inputs of |d logit_i/d x_j|
        jac = jac.abs().reshape(levels, d, 32, d).sum((0, 2))
        rank = torch.empty(d, dtype=torch.long)
        rank[model.order] = torch.arange(d)
        later_or_same = rank.unsqueeze(0) >= rank.unsqueeze(1)
        assert bool((jac[later_or_same] == 0).all())
        seen |= (jac != 0).any(1) | (rank == 0)
    assert bool(seen.all()), "some sub-pixel sees nothing before it"


@pytest.mark.parametrize(("name", "order"), VARIANTS, ids=IDS)
def test_level_samples_match_probabilities(name, order):
    shape, levels, n = (1, 1, 2), 3, 20000
    model = make(name, shape, levels, order)
    images = every_image(shape, levels)
    probs = model.log_prob(images).detach().double().exp()
    torch.manual_seed(3)
    x = model.sample(n)
    codes = (torch.round(x.reshape(n, 2) * 2).long() * torch.tensor([1, 3])).sum(1)
    counts = torch.bincount(codes, minlength=9).double()
    expected = probs * n
    assert float(((counts - expected) ** 2 / expected).sum()) < CHI2_8


@pytest.mark.parametrize("name", ARS)
@pytest.mark.parametrize(("shape", "levels"), [((1, 3, 4), 2), ((3, 2, 3), 5)])
def test_fast_sampler_equals_the_reference_sampler(name, shape, levels):
    """Same uniforms in, same images out: the fast sampler computes the same conditionals."""
    if not _has(name, "levels"):
        pytest.skip(f"{name} has no levels")
    # One mask: a model with an ensemble of masks draws one per image, the reference does not.
    extra = {"masks": 1} if _has(name, "masks") else {}
    model = make(name, shape, levels, **extra).double()
    n = 7
    u = torch.rand(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    given = torch.randint(0, levels, (n, *shape)).double() / (levels - 1)  # arbitrary images
    mask = torch.zeros(n, *shape, dtype=torch.bool)
    mask.view(n, -1)[:, model.order[:3]] = True  # the first three sub-pixels are given
    for cond in (None, {"x": given, "mask": mask}):
        fast = model.sample(n, cond=cond, u=u, sweeps=0)  # the ancestral draw alone
        slow = model.reference_sample(n, cond=cond, u=u)
        assert torch.equal(fast, slow)
        assert fast.dtype == torch.float32 and fast.shape == (n, *shape)


@pytest.mark.parametrize("name", LEVELLED)
def test_grey_models_reject_values_off_the_grid(name):
    model = make(name, (1, 2, 2), 4)
    assert model.data_kind == "grey"
    with pytest.raises(ValueError, match="k/3"):
        model.log_prob(torch.full((2, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="k/3"):
        model.sample(2, cond={"x": torch.full((2, 1, 2, 2), 0.5),
                              "mask": torch.ones(2, 1, 2, 2, dtype=torch.bool)})
