"""RNADE: the density integrates to one, conditionals only see earlier pixels, the hand-written
gradients match autograd, samples follow the mixtures, and the dequantization bound."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY

import genlab
from genlab.models import rnade as rnade_module

ORDERINGS = ["raster", "snake", "random"]


def make(shape, order="raster", noise=0.5, seed=0, **settings):
    """A tiny float64 RNADE with parameters pushed away from their initial values."""
    torch.manual_seed(seed)
    model = genlab.create("rnade", shape=shape, **{**TINY["rnade"], "ordering": order,
                                                   "seed": 1, **settings}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def grey(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).double() / 255


def mixture_cdf(y, log_w, mean, log_scale):
    """CDF of one 1-D Gaussian mixture (weights, means, log-scales: (K,)) at y (N,)."""
    z = (y.unsqueeze(1) - mean) / log_scale.exp()
    return (log_w.exp() * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).sum(1)


def ks_statistic(samples, cdf):
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and ``cdf``."""
    y, _ = samples.sort()
    f = cdf(y)
    n = len(y)
    upper = torch.arange(1, n + 1, dtype=f.dtype) / n - f
    lower = f - torch.arange(n, dtype=f.dtype) / n
    return float(torch.maximum(upper, lower).max())


KS_CRIT = 1.95  # / sqrt(n): the 0.001 critical value


# ---- the density ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERINGS)
def test_density_integrates_to_one(order):
    # Two pixels, midpoint rule on a grid fine against the smallest scale (min_scale 0.05).
    model = make((1, 1, 2), order, noise=0.3, min_scale=0.05)
    step = 0.01
    grid = torch.arange(-4, 5, step, dtype=torch.float64) + step / 2
    y1, y2 = torch.meshgrid(grid, grid, indexing="ij")
    y = torch.stack([y1.flatten(), y2.flatten()], 1).view(-1, 1, 1, 2)
    with torch.no_grad():
        mass = torch.logsumexp(model.density(y), 0).exp().item() * step * step
    assert abs(mass - 1) < 1e-3


@pytest.mark.parametrize("order", ORDERINGS)
@pytest.mark.parametrize("shape", [(1, 3, 5), (3, 2, 2)])
def test_conditionals_only_see_earlier_pixels(order, shape):
    model = make(shape, order)
    d = model.n_pixels
    y = torch.rand(1, *shape, dtype=torch.float64)
    rank = torch.empty(d, dtype=torch.long)
    rank[model.order] = torch.arange(d)
    later_or_same = rank.unsqueeze(0) >= rank.unsqueeze(1)  # [i, j]: j at or after i
    for part in range(3):  # mixture logits, means, log-scales
        def f(v, part=part):
            return model.conditionals(v)[part].reshape(-1, d)  # (K, D)
        jac = torch.autograd.functional.jacobian(f, y).reshape(-1, d, d)  # [k, i, j]
        assert bool((jac[:, later_or_same] == 0).all())
        seen = (jac != 0).any(0).any(1)
        assert bool(seen[rank > 0].all())  # not vacuous


def reference_conditionals(model, ys):
    """The textbook vectorised RNADE: a (B, D, H) cumulative sum, differentiated by autograd."""
    step = ys.t().unsqueeze(2) * model.W  # (B, D, H): y_d W_d
    a = model.c + torch.cumsum(step, 1) - step  # pre-activation before pixel d
    z = model.rho.view(1, -1, 1) * a
    h = torch.sigmoid(z) if model.config.activation == "sigmoid" else torch.relu(z)
    return torch.einsum("bdh,dhp->dbp", h, model.V) + model.b.unsqueeze(1)  # (D, B, 3K)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("shape", [(1, 3, 5), (1, 1, 11), (3, 2, 4)])
@pytest.mark.parametrize("working_set", [None, 30])
def test_gradients_match_autograd(activation, shape, working_set, monkeypatch):
    if working_set is not None:  # tiny batch chunks: exercise the loop over chunks
        monkeypatch.setattr(rnade_module, "_WORKING_SET", working_set)
    model = make(shape, "random", activation=activation)
    ys = torch.rand(model.n_pixels, 9, dtype=torch.float64, requires_grad=True)
    args = (ys, model.W, model.c, model.rho, model.V, model.b)
    ours = rnade_module._Conditionals.apply(*args, activation)
    ref = reference_conditionals(model, ys)
    assert torch.allclose(ours, ref, atol=1e-12)
    weights = torch.randn_like(ref)
    got = torch.autograd.grad((weights * ours).sum(), args)
    want = torch.autograd.grad((weights * ref).sum(), args)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_conditionals_gradcheck():
    model = make((1, 2, 3), "raster")
    ys = torch.rand(6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, w: rnade_module._Conditionals.apply(v, w, model.c, model.rho, model.V,
                                                      model.b, "sigmoid"),
        (ys, model.W.detach().clone().requires_grad_()))


# ---- the discrete data: dequantization -----------------------------------------------------------

def test_log_prob_is_density_minus_bin_volume():
    model = make((1, 3, 5), "snake")
    x = grey(6, (1, 3, 5))
    y = model.dequantize(x, torch.Generator().manual_seed(7))
    assert torch.equal(torch.floor(y * 256), torch.round(x * 255))  # y lies in x's bin
    with torch.no_grad():
        lp = model.log_prob(x, seed=7)
        assert torch.allclose(lp, model.density(y) - 15 * math.log(256), atol=1e-10)
        # k draws: the log of the mean of the k bounds' exponentials.
        gen = torch.Generator().manual_seed(7)
        draws = torch.stack([model.density(model.dequantize(x, gen)) for _ in range(4)])
        want = torch.logsumexp(draws, 0) - math.log(4) - 15 * math.log(256)
        assert torch.allclose(model.log_prob(x, k=4, seed=7), want, atol=1e-10)


def test_noise_is_fresh_in_training_and_fixed_in_eval():
    model = make((1, 4, 4))
    x = grey(4, (1, 4, 4))
    with torch.no_grad():
        model.train()
        assert not torch.equal(model.log_prob(x), model.log_prob(x))
        model.eval()
        assert torch.equal(model.log_prob(x), model.log_prob(x))
        assert torch.equal(model.log_prob(x), model.log_prob(x, seed=model.config.eval_seed))


def test_bad_input_is_one_clear_line():
    model = make((1, 4, 4))
    for bad in (torch.full((2, 1, 4, 4), 0.3), torch.full((2, 1, 4, 4), -1 / 255),
                torch.full((2, 1, 4, 4), 256 / 255)):
        with pytest.raises(ValueError, match=r"k/255") as err:
            model.log_prob(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expects images of shape"):
        model.log_prob(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="k must be at least 1"):
        model.log_prob(grey(2, (1, 4, 4)), k=0)
    with pytest.raises(ValueError, match="activation"):
        genlab.create("rnade", shape=(1, 2, 2), activation="tanh")


def test_loss_trains_and_save_load_keeps_the_bound(tmp_path):
    model = make((1, 4, 4)).float()
    x = grey(32, (1, 4, 4)).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss, logs = model.loss({"x": x}, "model")
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first and logs["nll"] == pytest.approx(float(loss.detach()))
    model.eval()
    model.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    assert torch.equal(model.log_prob(x), loaded.log_prob(x))


# ---- sampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERINGS)
def test_first_pixel_samples_follow_its_mixture(order):
    model = make((1, 2, 3), order)
    n = 20000
    torch.manual_seed(3)
    y = model.sample(n, continuous=True).double().reshape(n, -1)
    first = int(model.order[0])
    with torch.no_grad():
        log_w, mean, log_scale = (p.reshape(1, p.shape[1], -1)[0, :, first]
                                  for p in model.conditionals(torch.zeros(1, 1, 2, 3).double()))
    stat = ks_statistic(y[:, first], lambda v: mixture_cdf(v, log_w, mean, log_scale))
    assert stat < KS_CRIT / math.sqrt(n)


def test_completion_samples_the_last_conditional():
    # All pixels but the last in the ordering given: it follows the mixture at their bin centres.
    shape, n = (1, 2, 3), 20000
    model = make(shape, "random")
    last = int(model.order[-1])
    given = grey(1, shape, seed=4).expand(n, *shape).clone()
    mask = torch.ones(n, 6, dtype=torch.bool)
    mask[:, last] = False
    mask = mask.view(n, *shape)
    torch.manual_seed(5)
    y = model.sample(n, cond={"x": given, "mask": mask}, continuous=True).double()
    centres = (torch.round(given[:1] * 255) + 0.5) / 256
    assert torch.allclose(y[mask], centres.expand(n, *shape)[mask].double(), atol=1e-6)
    with torch.no_grad():
        log_w, mean, log_scale = (p.reshape(p.shape[1], -1)[:, last]
                                  for p in model.conditionals(centres))
    stat = ks_statistic(y.reshape(n, -1)[:, last],
                        lambda v: mixture_cdf(v, log_w, mean, log_scale))
    assert stat < KS_CRIT / math.sqrt(n)
    # On the grid, the given pixels come back exactly.
    x = model.sample(8, cond={"x": given[:8], "mask": mask[:8]})
    assert torch.equal(x[mask[:8]], given[:8].float()[mask[:8]])


def test_grid_samples_are_the_quantised_continuous_samples():
    model = make((3, 2, 3), "snake")
    torch.manual_seed(9)
    y = model.sample(50, continuous=True)
    torch.manual_seed(9)
    x = model.sample(50)
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, (torch.floor(y.double() * 256).clamp(0, 255) / 255).float())
    model.float().check_input(x)  # on the data grid
