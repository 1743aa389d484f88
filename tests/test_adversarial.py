"""The shared adversarial machinery: losses, penalties, schedules, freezing, moving averages."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import Crash, crash_at
from torch import nn

import genlab
from genlab.data import synthetic
from genlab.models.adversarial import (
    critic_schedule,
    d_loss,
    g_loss,
    gradient_penalty,
    growth,
    r1_penalty,
)
from genlab.nn import crop_to, ema_update, frozen, pad_to, working_size
from genlab.train import train_step

LN2 = math.log(2)


def test_losses_at_known_logits():
    zero, two = torch.zeros(4), torch.full((4,), 2.0)
    assert float(d_loss("ns", zero, zero)) == pytest.approx(2 * LN2)
    assert float(g_loss("ns", zero)) == pytest.approx(LN2)
    # log(1 + e^-2) for real, log(1 + e^2) for a fake at 2.
    assert float(d_loss("ns", two, two)) == pytest.approx(math.log1p(math.exp(-2))
                                                          + math.log1p(math.exp(2)))
    assert float(d_loss("hinge", two, -two)) == 0.0  # beyond the margins on both sides
    assert float(d_loss("hinge", zero, zero)) == pytest.approx(2.0)
    assert float(g_loss("hinge", two)) == pytest.approx(-2.0)
    assert float(d_loss("lsgan", torch.ones(3), torch.zeros(3))) == 0.0
    assert float(g_loss("lsgan", zero)) == pytest.approx(0.5)
    assert float(d_loss("wgan", two, zero)) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="objective must be one of"):
        d_loss("minimax", zero, zero)


def test_penalties_of_a_linear_critic_are_closed_form():
    """D(x) = w . x has gradient w everywhere: GP = (|w| - 1)^2, R1 = |w|^2."""
    torch.manual_seed(0)
    w = torch.randn(6, requires_grad=True)

    def critic(x):
        return x.flatten(1) @ w

    real, fake = torch.randn(5, 1, 2, 3), torch.randn(5, 1, 2, 3)
    gp = gradient_penalty(critic, real, fake)
    assert float(gp.detach()) == pytest.approx(float((w.norm().detach() - 1) ** 2), rel=1e-5)
    r1 = float(r1_penalty(critic, real).detach())
    assert r1 == pytest.approx(float(w.norm().detach() ** 2), rel=1e-5)
    gp.backward()  # the penalty trains the critic: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    want = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(w.grad, want.detach(), rtol=1e-4, atol=1e-6)


def test_critic_schedule_steps_the_generator_once_per_n_critic_steps():
    players = [critic_schedule(s, 5) for s in range(12)]
    assert [s for s, p in enumerate(players) if "g" in p] == [4, 9]
    assert all(p[0] == "d" for p in players)
    assert critic_schedule(7, 1) == ("d", "g")


def test_growth_is_a_pure_function_of_images_shown():
    phase, levels = 100, 3
    seen = [growth(i, phase, levels) for i in range(0, 700, 10)]
    assert growth(0, phase, levels) == (0, 1.0) and growth(99, phase, levels) == (0, 1.0)
    assert growth(100, phase, levels) == (1, 0.0)
    assert growth(150, phase, levels) == (1, 0.5)
    assert growth(250, phase, levels) == (1, 1.0)  # stable half of level 1
    assert growth(300, phase, levels) == (2, 0.0)
    assert growth(10**9, phase, levels) == (2, 1.0)
    levels_seen = [lv for lv, _ in seen]
    assert levels_seen == sorted(levels_seen)  # never shrinks
    assert growth(5, 0, levels) == (2, 1.0)  # no phases: the full resolution from the start


def test_frozen_blocks_gradients_and_restores_the_flags():
    a, b = nn.Linear(3, 3), nn.Linear(3, 1)
    b.bias.requires_grad_(False)  # a flag the user set stays as it was
    with frozen(b):
        b(a(torch.randn(2, 3))).sum().backward()
    assert a.weight.grad is not None and b.weight.grad is None
    assert b.weight.requires_grad and not b.bias.requires_grad


def test_pad_and_crop_are_inverse():
    x = torch.rand(2, 3, 28, 27)
    side = working_size(28, 27)
    assert side == 32 and working_size(2, 3) == 4 and working_size(64, 64) == 64
    padded = pad_to(x, side, -1.0)
    assert padded.shape == (2, 3, 32, 32) and float(padded[0, 0, 0, 0]) == -1.0
    assert torch.equal(crop_to(padded, 28, 27), x)


def test_ema_update_is_the_running_average():
    torch.manual_seed(0)
    avg, cur = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        cur.weight.add_(1.0)
        cur.running_mean.add_(2.0)
    before = avg.weight.clone()
    ema_update(avg, cur, 0.9)
    assert torch.allclose(avg.weight, 0.9 * before + 0.1 * cur.weight)
    assert torch.equal(avg.running_mean, cur.running_mean)


def ema_gan(decay=0.9):
    torch.manual_seed(0)
    return genlab.create("gan", shape=(1, 4, 4), latent=4, hidden=[16, 16], ema=decay)


def test_the_generators_average_follows_each_generator_step_and_samples():
    model = ema_gan()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        p.numel() for p in (*model.generator.parameters(), *model.discriminator.parameters()))
    opts = {p: torch.optim.Adam(model.parameters_for(p), lr=1e-2, betas=(0.5, 0.999))
            for p in model.players}
    batch = {"x": torch.rand(8, 1, 4, 4)}
    old = [p.detach().clone() for p in model.average.parameters()]
    train_step(model, opts, batch, 0)
    for o, a, g in zip(old, model.average.parameters(), model.generator.parameters(),
                       strict=True):
        assert torch.allclose(a, 0.9 * o + 0.1 * g.detach(), atol=1e-7)
        assert not torch.equal(a, g)
    model.eval()
    z_seed = 3
    torch.manual_seed(z_seed)
    drawn = model.sample(4)
    torch.manual_seed(z_seed)
    z = torch.randn(4, 4)
    assert torch.equal(drawn, ((model.average(z) + 1) / 2).view(4, 1, 4, 4))
    with pytest.raises(ValueError, match="ema must be in"):
        ema_gan(1.0)


def test_the_average_is_saved_loaded_and_resumed_exactly(tmp_path):
    data = synthetic("bars", n=64, shape=(1, 4, 4), seed=1)
    kw = dict(steps=30, batch_size=8, ckpt_every=10, progress=False, seed=5, lr=1e-2,
              device="cpu", threads=1)
    full = ema_gan()
    genlab.fit(full, data, out=tmp_path / "full", **kw)
    assert json.loads((tmp_path / "full/config.json").read_text())["model_config"]["ema"] == 0.9

    crashed = crash_at(ema_gan(), 17)
    with pytest.raises(Crash):
        genlab.fit(crashed, data, out=tmp_path / "run", **kw)
    resumed = ema_gan()
    genlab.fit(resumed, data, out=tmp_path / "run", resume=True, **kw)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    loaded = genlab.load(tmp_path / "full")
    full.eval()
    torch.manual_seed(1)
    want = full.sample(6)
    torch.manual_seed(1)
    assert torch.equal(loaded.sample(6), want)


def test_fit_asks_the_model_for_its_own_pictures_once_at_the_end(tmp_path):
    model = ema_gan()
    calls = []

    def pictures(folder, data):
        calls.append((folder, len(data), model.training))
        (folder / "extra.png").write_bytes(b"")
        return [folder / "extra.png"]

    model.pictures = pictures
    data = synthetic("bars", n=32, shape=(1, 4, 4), seed=1)
    genlab.fit(model, data, steps=5, batch_size=8, out=tmp_path / "run", progress=False,
               device="cpu", threads=1)
    assert calls == [(tmp_path / "run", 32, False)]
    assert (tmp_path / "run/extra.png").exists()


def test_the_gan_generator_steps_through_the_fakes_d_just_judged():
    # D then G, one G forward: G's step backpropagates through the fakes D's step drew, and its
    # gradient equals -log D(G(z)) for those z, computed afresh with D's updated weights.
    torch.manual_seed(0)
    model = genlab.create("gan", shape=(1, 3, 3), latent=4, hidden=(8,))
    model.train()
    batch = {"x": torch.rand(5, 1, 3, 3)}
    opts = {p: torch.optim.Adam(model.parameters_for(p), lr=1e-2, **model.optimizer_settings(p))
            for p in model.players}
    calls = []
    model.generator.register_forward_hook(lambda *a: calls.append(1))
    rng = torch.get_rng_state()
    for player in ("d", "g"):
        opts[player].zero_grad(set_to_none=True)
        loss, _ = model.loss(batch, player)
        loss.backward()
        if player == "d":
            opts["d"].step()  # D moves; G's weights (and so the handed graph) do not
    assert len(calls) == 1  # G ran once for both players
    got = [p.grad.clone() for p in model.generator.parameters()]
    torch.set_rng_state(rng)
    z = torch.randn(5, 4)  # the z D's step drew
    ref = torch.nn.functional.softplus(-model.discriminator(model.generator(z))).mean()
    want = torch.autograd.grad(ref, list(model.generator.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    # no hand-over (G stepped alone, or under no_grad before): G draws its own fakes
    with torch.no_grad():
        model.loss(batch, "d")
    assert model.take_over(batch, graph=True) is None
    calls.clear()
    model.loss(batch, "g")
    assert len(calls) == 1
