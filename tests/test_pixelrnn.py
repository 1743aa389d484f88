"""PixelRNN (Row LSTM, Diagonal BiLSTM): skewing, the recurrence's hand-written gradients, the
autoregressive property with colours and levels (the right-to-left shift), normalisation over
levels, save/load. Tiny shapes: the whole file runs in seconds."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

import genlab
from genlab.models.pixelrnn import _lstm_scan, _step_cells, _steps

MODELS = ["row_lstm", "diagonal_bilstm"]


def make(name, shape, noise=0.5, **settings):
    """A tiny model with its parameters pushed away from the initial values."""
    torch.manual_seed(0)
    model = genlab.create(name, shape=shape, **{**TINY[name], **settings})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def skew(x):
    """(N, H, W, B, F) -> (N, W+H-1, H, B, F) with loops over pixels: row i shifted right by i,
    so diagonal d (pixels (i, d - i)) is column d."""
    n, h, w, b, f = x.shape
    s = torch.zeros(n, w + h - 1, h, b, f, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            s[:, i + j, i] = x[:, i, j]
    return s


def unskew(s, w):
    n, _, h, b, f = s.shape
    x = torch.zeros(n, h, w, b, f, dtype=s.dtype)
    for i in range(h):
        for j in range(w):
            x[:, i, j] = s[:, i + j, i]
    return x


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (5, 3), (4, 4)])
def test_diagonal_steps_are_the_columns_of_the_skewed_image(hw):
    h, w = hw
    x = torch.randn(2, h, w, 2, 3)  # (direction, H, W, B, F)
    s = skew(x)
    assert torch.equal(unskew(s, w), x)
    ranges = _steps(h, w, diagonal=True)
    assert len(ranges) == w + h - 1
    for d, (lo, hi) in enumerate(ranges):
        on = s[:, d].abs().sum((0, 2, 3)) != 0  # the rows diagonal d meets
        assert on.nonzero().flatten().tolist() == list(range(lo, hi))
        assert torch.equal(_step_cells(x, d, lo, hi, diagonal=True), s[:, d, lo:hi])
    assert _steps(h, w, diagonal=False) == [(0, w)] * h
    for i in range(h):
        assert torch.equal(_step_cells(x, i, 1, w, diagonal=False), x[:, i, 1:])


def reference_scan(xg, weight, taps, diagonal):
    """The same recurrence with plain autograd: skew explicitly, step through, unskew."""
    n, height, width, b, g4 = xg.shape
    h = g4 // 4
    seq = skew(xg) if diagonal else xg  # (N, T, L, B, 4h)
    steps, length = seq.shape[1], seq.shape[2]
    state, cell, out = xg.new_zeros(n, length, b, h), xg.new_zeros(n, length, b, h), []
    for t in range(steps):
        cols = []
        for s in taps:  # tap s reads position l + s, zero outside
            shifted = torch.zeros_like(state)
            if s >= 0:
                shifted[:, : length - s] = state[:, s:]
            else:
                shifted[:, -s:] = state[:, : length + s]
            cols.append(shifted)
        window = torch.stack(cols, 3).reshape(n, length * b, -1)
        gates = (seq[:, t].reshape(n, length * b, g4) + window @ weight).view(n, length, b, g4)
        o, f, i, g = gates.split(h, -1)
        cell = f.sigmoid() * cell + i.sigmoid() * g.tanh()
        if diagonal:  # cells off the image keep a zero state
            on = torch.zeros(length, 1, 1, dtype=xg.dtype)
            on[max(0, t - width + 1): min(t, height - 1) + 1] = 1
            cell = cell * on
        state = o.sigmoid() * cell.tanh()
        out.append(state)
    out = torch.stack(out, 1)
    return unskew(out, width) if diagonal else out


@pytest.mark.parametrize(("n", "taps", "diagonal"), [(1, (-1, 0, 1), False), (2, (-1, 0), True)])
@pytest.mark.parametrize("hw", [(4, 3), (2, 5)])
def test_scan_matches_autograd(n, taps, diagonal, hw):
    torch.manual_seed(0)
    xg = torch.randn(n, *hw, 3, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(n, 2 * len(taps), 8, dtype=torch.float64, requires_grad=True)
    ours = _lstm_scan(xg, weight, taps, diagonal)
    ref = reference_scan(xg, weight, taps, diagonal)
    assert torch.allclose(ours, ref, atol=1e-12)
    up = torch.randn_like(ours)
    got = torch.autograd.grad((ours * up).sum(), (xg, weight))
    want = torch.autograd.grad((ref * up).sum(), (xg, weight))
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def dependence(model, shape, n=4):
    """[i, j] = True when some logit of flat sub-pixel i depends on input sub-pixel j, for one
    of ``n`` random images (one image can leave a whole pixel's ReLUs off by chance)."""
    d = shape[0] * shape[1] * shape[2]
    x = torch.rand(n, *shape, dtype=torch.float64)
    # Image b's logits depend on image b only, so the batch sum separates them.
    jac = torch.autograd.functional.jacobian(lambda v: model.logits(v).sum(0), x)
    jac = jac.abs().sum(-4)  # (K?, C, H, W, C, H, W)
    if model.levels > 2:  # any of the K logits
        jac = jac.sum(0)
    return jac.reshape(d, d) != 0


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("shape", "levels"), [((1, 3, 5), 2), ((3, 3, 4), 4), ((1, 5, 2), 2)])
def test_no_logit_sees_its_own_or_a_later_sub_pixel(name, shape, levels):
    model = make(name, shape, levels=levels, layers=2).double()
    seen = dependence(model, shape)
    d = seen.shape[0]
    rank = torch.empty(d, dtype=torch.long)
    rank[model.order] = torch.arange(d)
    later_or_same = rank.unsqueeze(0) >= rank.unsqueeze(1)  # [i, j]: j generated at/after i
    assert not seen[later_or_same].any()
    assert seen[rank > 0].any(1).all()  # not vacuous
    if name == "diagonal_bilstm" and shape[0] == 1:
        # Its context is complete but for one blind spot: the end of the previous row more than
        # 3 columns to the right (past the 7x7 input convolution; features there never see the
        # pixel, and the right-to-left states of row i are shifted past pixel (i, j)). Pixels
        # above and to the right come through the right-to-left direction only.
        _, h, w = shape
        row, col = torch.arange(d) // w, torch.arange(d) % w
        blind = (row.unsqueeze(1) - 1 == row) & (col.unsqueeze(1) + 3 < col) & (col == w - 1)
        assert torch.equal(seen, ~later_or_same & ~blind)


@pytest.mark.parametrize("name", MODELS)
def test_levels_normalise_over_every_colour_image(name):
    shape, levels = (3, 1, 2), 4
    model = make(name, shape, levels=levels, noise=1.0)
    k = torch.arange(levels ** 6).unsqueeze(1)
    digits = (k // levels ** torch.arange(6)) % levels
    x = (digits.float() / (levels - 1)).view(-1, *shape)
    with torch.no_grad():
        lp = model.log_prob(x)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-4
    assert model.logits(x[:2]).shape == (2, levels, *shape)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, tmp_path):
    model = make(name, (3, 3, 4), levels=4).eval()
    model.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    x = torch.randint(0, 4, (3, 3, 3, 4)).float() / 3
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), loaded.log_prob(x))


@pytest.mark.parametrize("name", MODELS)
def test_hidden_must_split_into_colour_groups(name):
    with pytest.raises(ValueError, match="multiples of the 3 colour"):
        genlab.create(name, shape=(3, 4, 4), hidden=4, out_hidden=6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("shape", "levels"), [((1, 3, 5), 2), ((3, 3, 4), 4)])
def test_fast_sampler_matches_the_reference(name, shape, levels):
    model = make(name, shape, levels=levels).double()
    torch.manual_seed(1)
    u = model.uniforms(6)
    assert torch.equal(model.sample(6, u=u), model.reference_sample(6, u=u))
    # Completion: a different mask per image, given values copied and conditioned on.
    x = torch.randint(0, levels, (6, *shape)).float() / (levels - 1)
    cond = {"x": x, "mask": torch.rand(6, *shape) < 0.4}
    fast = model.sample(6, cond, u=u, sweeps=0)  # the ancestral draw alone, no Gibbs sweeps
    assert torch.equal(fast, model.reference_sample(6, cond, u=u))
    assert torch.equal(fast[cond["mask"]], x[cond["mask"]])
