"""MADE: every mask is autoregressive, the ensemble is normalised, the incremental sampler
matches the reference sampler, K-level colour images, and masks survive save/load."""

from __future__ import annotations

import itertools

import pytest
import torch

import genlab


def made(shape, init=0, noise=0.5, **settings):
    torch.manual_seed(init)
    model = genlab.create("made", shape=shape, **settings)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def all_images(shape, levels=2):
    d = shape[0] * shape[1] * shape[2]
    grid = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float32)
    return (grid / (levels - 1)).view(-1, *shape)


VARIANTS = {
    "two-layers-orders": dict(hidden=(7, 5), masks=3, order_agnostic=True),
    "one-layer-connectivity": dict(hidden=(9,), masks=3, order_agnostic=False),
    "no-direct-snake": dict(hidden=(6, 6, 4), masks=2, direct=False, ordering="snake"),
}


@pytest.mark.parametrize("settings", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize(("shape", "levels"), [((1, 3, 4), 2), ((3, 2, 2), 3)])
def test_every_mask_is_autoregressive(settings, shape, levels):
    model = made(shape, levels=levels, **settings).double()
    d = model.n_pixels
    x = torch.rand(1, *shape, dtype=torch.float64)
    for k in range(settings["masks"]):
        model.use_mask(k)
        assert torch.equal(model.order, model.orders[k])
        jac = torch.autograd.functional.jacobian(lambda v: model.logits(v), x)
        # [output sub-pixel i, input sub-pixel j], summed over levels
        jac = jac.reshape(-1, d, d).abs().sum(0) if levels > 2 else jac.reshape(d, d).abs()
        rank = torch.argsort(model.order)
        later_or_same = rank.unsqueeze(0) >= rank.unsqueeze(1)
        assert bool((jac[later_or_same] == 0).all()), f"mask {k} sees the future"
        if settings.get("direct", True):  # direct connections reach every earlier input
            assert bool((jac != 0).any(1)[rank > 0].all()), f"mask {k} ignores the past"
        else:  # narrow deep layers may leave early outputs unconnected, but not all
            assert bool((jac != 0).any())
    # Distinct masks: orderings (when order-agnostic) and connectivity differ.
    assert not torch.equal(model.degrees0[0], model.degrees0[1])
    if settings.get("order_agnostic", True):  # the default
        assert not torch.equal(model.orders[0], model.orders[1])
    else:
        assert bool((model.orders == model.orders[0]).all())


@pytest.mark.parametrize("settings", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_ensemble_is_normalised_and_is_not_one_mask(settings):
    shape = (1, 3, 4)
    model = made(shape, **settings)
    x = all_images(shape)
    with torch.no_grad():
        lp = model.log_prob(x)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-4
        one = torch.distributions.Bernoulli(logits=model.logits(x)).log_prob(x).sum((1, 2, 3))
    assert lp.dtype == torch.float64
    assert not torch.allclose(lp, one.double(), atol=1e-3)


def test_four_levels_on_colour_are_normalised():
    shape = (3, 1, 2)
    model = made(shape, levels=4, hidden=(10, 8), masks=3)
    x = all_images(shape, levels=4)  # 4^6 images
    with torch.no_grad():
        assert abs(torch.logsumexp(model.log_prob(x), 0).item()) < 1e-4
        assert model.logits(x[:5]).shape == (5, 4, *shape)


@pytest.mark.parametrize("settings", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize(("shape", "levels"), [((1, 4, 5), 2), ((3, 2, 3), 4)])
def test_incremental_sampler_equals_the_reference(settings, shape, levels):
    model = made(shape, levels=levels, noise=1.0, **settings).double().eval()
    n = 12
    torch.manual_seed(1)
    u = torch.rand(n, *shape, dtype=torch.float64)
    mask = torch.rand(n, *shape) < 0.3
    values = torch.randint(0, levels, (n, *shape)).float() / (levels - 1)
    for cond in (None, {"x": values, "mask": mask}):
        refs = []
        for k in range(settings["masks"]):
            model.use_mask(k)
            ref = model.reference_sample(n, cond, u=u)
            # sweeps=0: the ancestral draw alone, before any Gibbs sweeps of the completion
            fast = model.sample(n, cond, u=u, mask_ids=torch.full((n,), k), sweeps=0)
            assert torch.equal(fast, ref), f"mask {k}"
            refs.append(ref)
        # One batch mixing the masks gives each image what its own mask gives.
        ids = torch.arange(n) % settings["masks"]
        mixed = model.sample(n, cond, u=u, mask_ids=ids, sweeps=0)
        assert torch.equal(mixed, torch.stack(refs)[ids, torch.arange(n)])


def test_samples_follow_the_ensemble():
    shape = (1, 2, 2)
    model = made(shape, noise=1.0, hidden=(6,), masks=3, order_agnostic=True).eval()
    x = all_images(shape)
    probs = model.log_prob(x).detach().exp()
    torch.manual_seed(3)
    s = model.sample(20000)
    codes = (s.reshape(20000, 4).long() * (2 ** torch.arange(4).flip(0))).sum(1)
    counts = torch.bincount(codes, minlength=16).double()
    expected = probs.double() * 20000
    assert float(((counts - expected) ** 2 / expected).sum()) < 37.70  # chi2(15), p = 0.001


def test_training_cycles_masks_and_uses_only_the_current_one():
    model = made((1, 3, 3), hidden=(8,), masks=3, order_agnostic=True)
    x = torch.bernoulli(torch.full((5, 1, 3, 3), 0.4))
    model.train()
    for step in range(7):
        model.on_step(step)
        assert int(model.mask_index) == step % 3
        assert torch.equal(model.order, model.orders[step % 3])
        loss, _ = model.loss({"x": x}, "model")
        want = -torch.distributions.Bernoulli(logits=model.logits(x)).log_prob(x).sum() / 5
        assert torch.allclose(loss, want)
    model.eval()  # validation measures the ensemble, as eval does
    loss, _ = model.loss({"x": x}, "model")
    assert torch.allclose(loss.double(), -model.log_prob(x).mean())


def test_masks_depend_only_on_seed_and_survive_save_load(tmp_path):
    a = made((3, 2, 3), hidden=(8, 5), masks=4, seed=7)
    b = made((3, 2, 3), hidden=(8, 5), masks=4, seed=7, noise=0.0)
    c = made((3, 2, 3), hidden=(8, 5), masks=4, seed=8)
    for k in range(4):
        assert all(torch.equal(p, q) for p, q in zip(a.masks_of(k), b.masks_of(k), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.masks_of(1), c.masks_of(1), strict=True))
    # Orderings of masks 1.. are random but pixel-major: R, G, B of one pixel in a row.
    assert bool((a.orders[:, 1::3] - a.orders[:, ::3] == 6).all())
    a.use_mask(2)
    a.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    assert int(loaded.mask_index) == 2 and torch.equal(loaded.order, a.order)
    for k in range(4):
        assert all(torch.equal(p, q)
                   for p, q in zip(a.masks_of(k), loaded.masks_of(k), strict=True))
    x = torch.bernoulli(torch.full((4, 3, 2, 3), 0.5))
    assert torch.equal(a.logits(x), loaded.logits(x))
    # Loading into a model whose cache holds another mask refreshes the cache.
    b.use_mask(0)
    b.logits(x)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.logits(x), a.logits(x))


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="hidden"):
        genlab.create("made", shape=(1, 2, 2), hidden=(0,))
    with pytest.raises(ValueError, match="masks"):
        genlab.create("made", shape=(1, 2, 2), masks=0)
    with pytest.raises(IndexError, match="has 2"):
        genlab.create("made", shape=(1, 2, 2), masks=2).use_mask(2)
    tiny = genlab.create("made", shape=(1, 1, 1), hidden=(3,), masks=2)  # one pixel works
    assert abs(torch.logsumexp(tiny.log_prob(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)), 0)) < 1e-6
