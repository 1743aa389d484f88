"""The adversarial autoencoder: its priors, its three players, the labelled prior, the figure."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, tiny, tiny_batch

import genlab
from genlab.data import Dataset
from genlab.models.aae import gaussian, labelled_mog, mog, swiss_roll, uniform


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- priors --------------------------------------------------------------------------------------


def test_gaussian_and_uniform_priors_have_their_moments_and_support():
    z = gaussian(20000, 3, scale=2.0, generator=_gen())
    assert z.shape == (20000, 3)
    assert z.mean(0).abs().max() < 0.05 and (z.std(0) - 2.0).abs().max() < 0.05
    u = uniform(20000, 4, scale=3.0, generator=_gen())
    assert u.shape == (20000, 4)
    assert float(u.abs().max()) <= 3.0 and float(u.abs().max()) > 2.99
    assert (u.var(0) - 9.0 / 3).abs().max() < 0.1  # Var U(-a, a) = a^2 / 3


def test_priors_follow_the_generator():
    a = mog(50, 2, generator=_gen(3))
    b = mog(50, 2, generator=_gen(3))
    c = mog(50, 2, generator=_gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mog_puts_equal_mass_near_each_centre_on_the_circle():
    k, radius, std = 6, 5.0, 0.1
    z = mog(12000, 3, components=k, radius=radius, std=std, generator=_gen())
    assert z.shape == (12000, 3)
    centres = torch.stack([torch.tensor([radius * math.cos(2 * math.pi * i / k),
                                         radius * math.sin(2 * math.pi * i / k)])
                           for i in range(k)])  # (k, 2)
    dist = torch.cdist(z[:, :2], centres)  # (n, k)
    nearest = dist.min(1)
    assert float(nearest.values.max()) < 6 * std  # every draw sits by some centre
    counts = torch.bincount(nearest.indices, minlength=k).float()
    assert (counts / 12000 - 1 / k).abs().max() < 0.02
    assert abs(float(z[:, 2].std()) - std) < 0.01  # further dimensions: N(0, std^2)


def test_labelled_mog_draws_each_label_from_its_component():
    k, radius = 10, 4.0
    y = torch.arange(k).repeat(200)  # (2000,)
    z = labelled_mog(y, 2, components=k, radius=radius, std=0.3, generator=_gen())
    angle = torch.atan2(z[:, 1], z[:, 0]) % (2 * math.pi)
    component = torch.round(angle / (2 * math.pi / k)).long() % k
    assert torch.equal(component, y)
    # Unlabelled (-1) draws spread over all components.
    free = labelled_mog(torch.full((5000,), -1), 2, components=k, radius=radius, std=0.3,
                        generator=_gen(1))
    angle = torch.atan2(free[:, 1], free[:, 0]) % (2 * math.pi)
    counts = torch.bincount(torch.round(angle / (2 * math.pi / k)).long() % k, minlength=k)
    assert int(counts.min()) > 400


def test_swiss_roll_lies_on_its_spiral():
    radius = 4.0
    z = swiss_roll(5000, 2, radius=radius, std=0.0, generator=_gen())
    r = z.norm(dim=1)
    assert float(r.max()) <= radius + 1e-5
    s = r / radius  # position along the roll
    expected = torch.stack([r * torch.cos(3 * math.pi * s), r * torch.sin(3 * math.pi * s)], 1)
    assert torch.allclose(z, expected, atol=1e-4)
    # s = sqrt(u): P(s < 1/2) = 1/4
    assert abs(float((s < 0.5).float().mean()) - 0.25) < 0.03


def test_shaped_priors_need_two_dimensions():
    with pytest.raises(ValueError, match="latent >= 2"):
        genlab.create("aae", shape=(1, 4, 4), **{**TINY["aae"], "latent": 1, "prior": "mog"})
    with pytest.raises(ValueError, match="prior must be one of"):
        genlab.create("aae", shape=(1, 4, 4), prior="cauchy")


def test_the_config_records_the_prior_and_load_rebuilds_it(tmp_path):
    model = genlab.create("aae", shape=(1, 4, 4), **TINY["aae"], prior="mog", components=5,
                          radius=2.5, std=0.2)
    model.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    assert loaded.config.prior == "mog" and loaded.config.components == 5
    assert loaded.config.radius == 2.5 and loaded.config.std == 0.2


# ---- the three players --------------------------------------------------------------------------


def test_three_players_in_order_each_owning_its_networks():
    model = tiny("aae")
    assert model.players == ("ae", "d", "g") and model.players_at(0) == ("ae", "d", "g")
    ids = {p: {id(q) for q in model.parameters_for(p)} for p in model.players}
    assert ids["ae"] == {id(q) for m in (model.encoder, model.decoder) for q in m.parameters()}
    assert ids["d"] == {id(q) for q in model.discriminator.parameters()}
    assert ids["g"] == {id(q) for q in model.encoder.parameters()}


@torch.no_grad()
def test_the_losses_are_what_the_paper_writes():
    model = tiny("aae")
    batch = tiny_batch(model)
    x = batch["x"].flatten(1)
    z = model.encoder(x)
    p = torch.sigmoid(model.decoder(z))
    rec = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean()
    loss, logs = model.loss(batch, "ae")
    assert float(loss) == pytest.approx(float(rec), rel=1e-5)
    # D: -log D(prior draw) - log(1 - D(code)); the same prior draw from the same seed.
    torch.manual_seed(7)
    loss, _ = model.loss(batch, "d")
    torch.manual_seed(7)
    real = torch.sigmoid(model.discriminator(model.prior_sample(len(x))).squeeze(-1))
    fake = torch.sigmoid(model.discriminator(z).squeeze(-1))
    assert float(loss) == pytest.approx(float(-real.log().mean() - (1 - fake).log().mean()),
                                        rel=1e-5)
    loss, _ = model.loss(batch, "g")  # the encoder: -log D(code)
    assert float(loss) == pytest.approx(float(-fake.log().mean()), rel=1e-5)


def test_ema_averages_the_decoder_after_reconstruction_steps():
    model = genlab.create("aae", shape=(1, 4, 4), **TINY["aae"], ema=0.5)
    first = [p.detach().clone() for p in model.decoder.parameters()]
    opt = torch.optim.Adam(model.parameters_for("ae"), lr=0.1)
    loss, _ = model.loss(tiny_batch(model), "ae")
    loss.backward()
    opt.step()
    model.after_step(0, "g")  # not the decoder's step: the average stays
    assert all(torch.equal(a, f) for a, f in zip(model.average.parameters(), first, strict=True))
    model.after_step(0, "ae")
    for a, f, c in zip(model.average.parameters(), first, model.decoder.parameters(),
                       strict=True):
        assert torch.allclose(a, 0.5 * f + 0.5 * c.detach())


# ---- the labelled prior uses y ----------------------------------------------------------------


def test_the_labelled_prior_shows_d_the_label():
    torch.manual_seed(0)
    model = genlab.create("aae", shape=(1, 4, 4), **TINY["aae"], prior="labelled_mog",
                          components=10)
    assert model.discriminator[0].in_features == 2 + 11  # code + one-hot (+ "unlabelled")
    batch = tiny_batch(model)
    torch.manual_seed(1)
    a, _ = model.loss(batch, "g")
    other = {**batch, "y": (batch["y"] + 1) % 10}
    torch.manual_seed(1)
    b, _ = model.loss(other, "g")
    assert float(a) != float(b)  # the labels change D's verdict
    with pytest.raises(ValueError, match="needs labels"):
        model.loss({"x": batch["x"]}, "d")
    with pytest.raises(ValueError, match="labels must be in"):
        model.loss({**batch, "y": batch["y"] + 10}, "d")
    unlabelled, _ = model.loss({**batch, "y": torch.full_like(batch["y"], -1)}, "d")
    assert torch.isfinite(unlabelled)


def test_the_labelled_priors_d_step_draws_each_images_component(monkeypatch):
    model = genlab.create("aae", shape=(1, 4, 4), **TINY["aae"], prior="labelled_mog",
                          components=10, std=0.0)
    seen = []
    real_judge = model._judge
    monkeypatch.setattr(model, "_judge", lambda z, y: seen.append((z, y)) or real_judge(z, y))
    batch = tiny_batch(model)
    model.loss(batch, "d")
    prior_codes, labels = seen[0]
    angle = 2 * math.pi * batch["y"].float() / 10
    assert torch.equal(labels, batch["y"])
    assert torch.allclose(prior_codes, 4.0 * torch.stack([angle.cos(), angle.sin()], 1),
                          atol=1e-5)


def test_sample_cond_y_picks_the_component(monkeypatch):
    model = genlab.create("aae", shape=(1, 4, 4), **TINY["aae"], prior="labelled_mog",
                          components=4, std=0.0).eval()
    codes = []
    monkeypatch.setattr(model, "decode", lambda z: codes.append(z) or torch.zeros(len(z), 1, 4, 4))
    model.sample(3, cond={"y": torch.tensor([2, 2, 0])})
    assert torch.allclose(codes[-1], torch.tensor([[-4.0, 0.0], [-4.0, 0.0], [4.0, 0.0]]),
                          atol=1e-5)
    model.sample(400)  # classes uniform by default
    angle = torch.atan2(codes[-1][:, 1], codes[-1][:, 0]) % (2 * math.pi)
    counts = torch.bincount(torch.round(angle / (math.pi / 2)).long() % 4, minlength=4)
    assert int(counts.min()) > 60


# ---- sample, encode, the scatter -------------------------------------------------------------


@pytest.mark.parametrize("prior", ["gaussian", "uniform", "mog", "swiss_roll", "labelled_mog"])
def test_sample_and_encode_shapes(prior):
    model = genlab.create("aae", shape=(3, 2, 3), **{**TINY["aae"], "latent": 3},
                          prior=prior).eval()
    x = model.sample(5)
    assert x.shape == (5, 3, 2, 3) and float(x.min()) >= 0 and float(x.max()) <= 1
    z = model.encode(tiny_batch(model, 6)["x"])
    assert z.shape == (6, 3)


def _data(n: int = 300) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.rand(n, 1, 4, 4, generator=g) * 255) / 255
    return Dataset(x, torch.randint(0, 10, (n,), generator=g), "test", classes=list("abcdefghij"))


def test_pictures_writes_the_code_scatter_for_a_2d_code(tmp_path):
    model = tiny("aae").eval()
    paths = model.pictures(tmp_path, _data())
    assert paths == [tmp_path / "codes.png"] and paths[0].stat().st_size > 10_000
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.size[0] > 1.5 * im.size[1] > 500  # two square panels side by side


def test_pictures_writes_nothing_for_other_codes(tmp_path):
    model = genlab.create("aae", shape=(1, 4, 4), **{**TINY["aae"], "latent": 3}).eval()
    assert model.pictures(tmp_path, _data()) == []
    assert not list(tmp_path.iterdir())
