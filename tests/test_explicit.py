"""Exact-likelihood models: normalisation, the autoregressive property, samples against
log_prob, completion, input checks, and the closed-form baselines. Generic over the registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed

import genlab
from genlab.models import nade as nade_module
from genlab.models.baselines import MAX_JOINT_PIXELS, format_param_table, param_table

EXACT = [name for name, cls in genlab.MODELS.items() if cls.exact]
# One entry per (model, ordering) pair: models with an ordering are tested under each.
def _orderings(name):
    fields = {f.name for f in dataclasses.fields(genlab.MODELS[name].Config)}
    return ["raster", "snake", "random"] if "ordering" in fields else [None]


VARIANTS = [(name, o) for name in EXACT for o in _orderings(name)]
IDS = [f"{n}-{o}" if o else n for n, o in VARIANTS]
CHI2_15 = 37.70  # chi-square critical values at p = 0.001 for 15 and 3 degrees of freedom
CHI2_3 = 16.27


make = perturbed  # (name, shape, order=None, noise=1.0, seed=0)


def every_image(shape):
    """All 2^D binary images of ``shape``, (2^D, C, H, W), row k = the bits of k."""
    d = shape[0] * shape[1] * shape[2]
    k = torch.arange(2**d).unsqueeze(1)
    return ((k >> torch.arange(d)) & 1).float().view(-1, *shape)


def chi_square(observed, probs):
    expected = probs * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def counts_of(x, shape):
    """Histogram over the 2^D images, indexed like ``every_image``."""
    d = x[0].numel()
    codes = (x.reshape(len(x), d).long() << torch.arange(d)).sum(1)
    return torch.bincount(codes, minlength=2**d).double()


def log_mass(model, shape):
    with torch.no_grad():
        return torch.logsumexp(model.log_prob(every_image(shape)).double(), 0).item()


# ---- (a) normalisation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "order"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 3, 5), (3, 2, 2)])
def test_probabilities_of_all_images_sum_to_one(name, order, shape):
    model = make(name, shape, order)
    assert abs(log_mass(model, shape)) < 1e-4
    # ... and still after a couple of training steps on random data.
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        batch = {"x": torch.bernoulli(torch.full((16, *shape), 0.3), generator=g)}
        opt.zero_grad()
        loss, _ = model.loss(batch, "model")
        loss.backward()
        opt.step()
    assert abs(log_mass(model, shape)) < 1e-4


# ---- (b) the autoregressive property -------------------------------------------------------------

ORDERED = [(n, o) for n, o in VARIANTS if o is not None]


@pytest.mark.parametrize(("name", "order"), ORDERED, ids=[f"{n}-{o}" for n, o in ORDERED])
def test_conditionals_only_see_earlier_pixels(name, order):
    shape = (1, 3, 5)
    model = make(name, shape, order).double()
    x = torch.bernoulli(torch.full((1, *shape), 0.5, dtype=torch.float64))
    jac = torch.autograd.functional.jacobian(lambda v: model.logits(v).reshape(-1), x)
    jac = jac.reshape(15, 15)  # [i, j] = d logit_i / d x_j
    rank = torch.empty(15, dtype=torch.long)
    rank[model.order] = torch.arange(15)  # rank[j]: when pixel j is generated
    later_or_same = rank.unsqueeze(0) >= rank.unsqueeze(1)  # [i, j]: j at or after i
    assert bool((jac[later_or_same] == 0).all())
    # Not vacuous: every pixel but the first depends on some earlier one.
    seen = (jac != 0).any(1)
    assert bool(seen[rank > 0].all())


# ---- (c) samples follow exp(log_prob) ------------------------------------------------------------

@pytest.mark.parametrize(("name", "order"), VARIANTS, ids=IDS)
def test_sample_frequencies_match_probabilities(name, order):
    shape = (1, 2, 2)
    model = make(name, shape, order, noise=0.7)
    probs = model.log_prob(every_image(shape)).detach().double().exp()
    torch.manual_seed(5)
    x = model.sample(20000)
    assert x.shape == (20000, *shape)
    assert chi_square(counts_of(x, shape), probs) < CHI2_15


# ---- (d) completion ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "order"), VARIANTS, ids=IDS)
def test_completion_keeps_given_pixels_and_samples_the_conditional(name, order):
    shape, n = (1, 2, 2), 20000
    model = make(name, shape, order, noise=0.7)
    # Give two pixels. Autoregressive samplers condition exactly when the given pixels come
    # first in their ordering, so give those; other models get a mask that is not a prefix.
    first = model.order[:2] if hasattr(model, "order") else torch.tensor([1, 2])
    mask = torch.zeros(4, dtype=torch.bool)
    mask[first] = True
    values = torch.zeros(4)
    values[first[0]] = 1.0
    cond = {"x": values.view(1, *shape).expand(n, *shape).clone(),
            "mask": mask.view(1, *shape).expand(n, *shape).clone()}
    torch.manual_seed(6)
    x = model.sample(n, cond=cond)
    assert torch.equal(x.reshape(n, 4)[:, mask], values[mask].expand(n, 2))
    # p(unknown | known) from log_prob over the 4 images that agree with the given pixels.
    images = every_image(shape)
    agree = (images.reshape(-1, 4)[:, mask] == values[mask]).all(1)
    probs = model.log_prob(images[agree]).detach().double().softmax(0)
    counts = counts_of(x, shape)[agree]
    assert counts.sum() == n
    assert chi_square(counts, probs) < CHI2_3


@pytest.mark.parametrize("name", EXACT)
def test_completion_with_a_different_mask_per_image(name):
    shape = (1, 3, 5)
    model = make(name, shape, "raster" if name in dict(ORDERED) else None)
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((6, *shape), 0.5), generator=g)
    mask = torch.rand(6, *shape, generator=g) < 0.5
    out = model.sample(6, cond={"x": x, "mask": mask})
    assert torch.equal(out[mask], x[mask])
    assert bool(((out == 0) | (out == 1)).all())


# ---- (e) input checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXACT)
def test_log_prob_rejects_bad_input(name):
    model = make(name, (1, 4, 4))
    with pytest.raises(ValueError, match="binar"):
        model.log_prob(torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="expects images of shape"):
        model.log_prob(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="expects images of shape"):
        model.log_prob(torch.zeros(16))


# ---- (f) the baselines ---------------------------------------------------------------------------

def data(n, shape, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *shape), p), generator=g)


@pytest.mark.parametrize("smoothing", [1.0, 0.5])
def test_independent_estimate_is_the_smoothed_mean(smoothing):
    x = data(40, (1, 3, 5))
    model = genlab.create("independent", shape=(1, 3, 5))
    model.estimate(x, smoothing=smoothing)
    want = (x.sum(0) + smoothing) / (40 + 2 * smoothing)
    assert torch.allclose(torch.sigmoid(model.logits), want, atol=1e-6)


@pytest.mark.parametrize("order", ["raster", "snake", "random"])
def test_markov_estimate_counts_pairs_along_the_ordering(order):
    shape = (1, 3, 4)
    x = data(60, shape, seed=1, p=0.4)
    model = genlab.create("markov", shape=shape, ordering=order, seed=3)
    model.estimate(x, smoothing=1.0)
    xs = x.reshape(60, -1)[:, model.order]
    assert torch.allclose(torch.sigmoid(model.first), (xs[:, 0].sum() + 1) / 62, atol=1e-6)
    for i in range(xs.shape[1] - 1):
        for v in (0, 1):
            rows = xs[:, i] == v
            want = (xs[rows, i + 1].sum() + 1) / (rows.sum() + 2)
            assert torch.allclose(torch.sigmoid(model.trans[i, v]), want, atol=1e-6)


def test_markov_estimate_is_the_maximum_likelihood_fit():
    # Without smoothing the counts maximise the likelihood: gradient steps cannot improve it.
    x = data(200, (1, 2, 3), seed=2, p=0.5)
    model = genlab.create("markov", shape=(1, 2, 3))
    model.estimate(x, smoothing=0.0)
    loss, _ = model.loss({"x": x}, "model")
    loss.backward()
    assert all(p.grad.abs().max() < 1e-5 for p in model.parameters())


def test_fulljoint_estimate_is_the_smoothed_histogram():
    shape = (1, 2, 2)
    x = data(30, shape, seed=4, p=0.5)
    model = genlab.create("fulljoint", shape=shape)
    model.estimate(x, smoothing=1.0)
    want = (counts_of(x, shape) + 1) / (30 + 16)
    got = model.log_prob(every_image(shape)).detach().exp()
    assert torch.allclose(got, want, atol=1e-9)


def test_fulljoint_refuses_large_images():
    with pytest.raises(ValueError, match=r"2\^784 - 1 .*use n <= 20 \(e.g. shape 1x4x4\)"):
        genlab.create("fulljoint", shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"2\^21 - 1"):
        genlab.create("fulljoint", shape=(1, 3, 7))
    assert MAX_JOINT_PIXELS == 20


@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 3, 5), (3, 2, 2), (1, 1, 1)])
def test_parameter_counts_climb_the_ladder(shape):
    n = shape[0] * shape[1] * shape[2]

    def count(name):
        return sum(p.numel() for p in genlab.create(name, shape=shape).parameters())

    assert count("independent") == n
    assert count("markov") == 2 * n - 1
    assert count("fulljoint") == 2**n - 1
    assert [row[2] for row in param_table(n)] == [2**n - 1, n, 2 * n - 1]


def test_param_table_prints_exact_integers():
    small = format_param_table(4)
    assert "15" in small and "7" in small
    big = format_param_table(784)
    assert str(2**784 - 1) in big.replace("\n", "").replace(" ", "")
    assert "10^236" in big and "1567" in big and "784" in big


# ---- NADE's hand-written gradients against plain autograd ----------------------------------------

def reference_log_prob(model, x):
    """The textbook vectorised NADE: a (B, D, H) cumulative sum, differentiated by autograd."""
    xs = x.reshape(len(x), -1)[:, model.order].to(model.W.dtype)
    step = xs.unsqueeze(2) * model.W  # (B, D, H): x_d W_d
    a = model.c + torch.cumsum(step, 1) - step  # pre-activation before pixel d
    logits = (torch.sigmoid(a) * model.V).sum(2) + model.b  # (B, D)
    return -F.binary_cross_entropy_with_logits(logits, xs, reduction="none").sum(1)


@pytest.mark.parametrize("shape", [(1, 3, 5), (1, 1, 11), (3, 2, 4)])
@pytest.mark.parametrize("working_set", [None, 40])
def test_nade_gradients_match_autograd(shape, working_set, monkeypatch):
    if working_set is not None:  # tiny chunks: exercise the loop over batch chunks
        monkeypatch.setattr(nade_module, "_WORKING_SET", working_set)
    torch.manual_seed(0)
    model = genlab.create("nade", shape=shape, hidden=7, ordering="random").double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((9, *shape), 0.4, dtype=torch.float64)).requires_grad_()
    weights = torch.rand(9, dtype=torch.float64)
    params = list(model.parameters())
    for reduce in (lambda lp: lp.mean(), lambda lp: (weights * lp).sum()):
        ours, ref = model.log_prob(x), reference_log_prob(model, x)
        assert torch.allclose(ours, ref, atol=1e-10)
        # The mean takes the precomputed path; weights or an x gradient take the second sweep.
        for inputs in (params, [*params, x]):
            got = torch.autograd.grad(reduce(model.log_prob(x)), inputs)
            want = torch.autograd.grad(reduce(reference_log_prob(model, x)), inputs)
            for a, b in zip(got, want, strict=True):
                assert torch.allclose(a, b, atol=1e-10)


def test_nade_compiled_sweep_matches_python():
    """The TorchScript-compiled walk and the plain Python one (the fallback) agree exactly."""
    if nade_module._walk_compiled() is nade_module._walk:
        pytest.skip("TorchScript could not compile the walk here; the Python walk is in use")
    torch.manual_seed(0)
    B, D, H = 5, 12, 6
    xs = torch.bernoulli(torch.full((B, D), 0.4, dtype=torch.float64))
    W, V = torch.randn(D, H, dtype=torch.float64), torch.randn(D, H, dtype=torch.float64)
    b, c = torch.randn(D, dtype=torch.float64), torch.randn(H, dtype=torch.float64)
    up = torch.randn(B, D, dtype=torch.float64)
    for upstream, need_x in ((None, False), (up, True)):
        args = (xs, W, V, b, c, upstream, True, need_x, 4, 2 * 4 * H)  # chunks of 2 images
        (l1, g1), (l2, g2) = nade_module._walk_compiled()(*args), nade_module._walk(*args)
        assert torch.equal(l1, l2)
        for a, b_ in zip(g1, g2, strict=True):
            assert (a is None and b_ is None) or torch.equal(a, b_)


def test_nade_logits_gradcheck():
    torch.manual_seed(0)
    model = genlab.create("nade", shape=(1, 2, 3), hidden=4).double()
    x = torch.rand(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: model.logits(v), (x,))
    assert torch.autograd.gradcheck(lambda w: genlab.models.nade._Logits.apply(
        x.detach().reshape(2, -1), w, model.V, model.b, model.c), (model.W,))


def test_nade_float32_log_prob_is_accurate():
    model = make("nade", (1, 4, 4), "raster")
    x = every_image((1, 4, 4))[::97]
    with torch.no_grad():
        ours = model.log_prob(x)
        ref = reference_log_prob(model.double(), x.double())
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, ref, atol=1e-4)


def test_nade_batch_split_over_threads_gives_the_same_gradients(monkeypatch):
    monkeypatch.setattr(nade_module, "_MIN_SHARE", 2)  # split even this tiny batch
    torch.manual_seed(0)
    model = genlab.create("nade", shape=(1, 3, 5), hidden=7).double()
    x = torch.bernoulli(torch.full((9, 1, 3, 5), 0.4, dtype=torch.float64)).requires_grad_()
    weights = torch.rand(9, dtype=torch.float64)
    params = list(model.parameters())
    for reduce in (lambda lp: lp.mean(), lambda lp: (weights * lp).sum()):
        want = torch.autograd.grad(reduce(reference_log_prob(model, x)), [*params, x])
        torch.set_num_threads(3)  # three shares of 3 images (the fixture restores 1 thread)
        got = torch.autograd.grad(reduce(model.log_prob(x)), [*params, x])
        assert torch.get_num_threads() == 3
        torch.set_num_threads(1)
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-10)


def test_nade_flop_counter_sees_the_whole_sweep(monkeypatch):
    """Benchmarks count FLOPs with a dispatch mode, which sees neither compiled code nor other
    threads: under one, the sweep runs as Python in the calling thread, split or not."""
    from torch.utils.flop_counter import FlopCounterMode

    model = genlab.create("nade", shape=(1, 3, 5), hidden=7)
    x = torch.bernoulli(torch.full((8, 1, 3, 5), 0.4))
    counts = []
    for share in (100, 2):  # one sweep, then four shares over two threads
        monkeypatch.setattr(nade_module, "_MIN_SHARE", share)
        torch.set_num_threads(2)
        with FlopCounterMode(display=False) as counter:
            model.loss({"x": x}, "model")[0].backward()
        torch.set_num_threads(1)
        counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts[0] == counts[1]
