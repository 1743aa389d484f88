"""The adversarial autoencoder: its priors, its three players, the labelled prior, the figure."""

from __future__ import annotations

import math

import numpy as np
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
    assert float(a.detach()) != float(b.detach())  # the labels change D's verdict
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


# ---- unsupervised clustering: a softmax over K clusters with its own discriminator ---------------


def _clustered(k: int = 4, **settings) -> genlab.models.GenerativeModel:
    torch.manual_seed(0)
    return genlab.create("aae", shape=(1, 4, 4), **{**TINY["aae"], "clusters": k, **settings})


def test_clusters_are_refused_beside_the_labelled_prior_and_below_two():
    with pytest.raises(ValueError, match="pick one"):
        _clustered(prior="labelled_mog")
    with pytest.raises(ValueError, match="at least 2"):
        _clustered(1)


def test_the_reconstruction_may_have_its_own_learning_rate():
    model = _clustered(lr_ae=1e-3)
    assert model.optimizer_settings("ae") == {"betas": (0.5, 0.999), "lr": 1e-3}
    assert "lr" not in model.optimizer_settings("d") and "lr" not in model.optimizer_settings("g")
    assert "lr" not in tiny("aae").optimizer_settings("ae")  # the trainer's lr
    with pytest.raises(ValueError, match="lr_ae must be a positive number"):
        _clustered(lr_ae=0.0)


def test_clusters_add_k_logits_to_the_encoder_and_a_discriminator_owned_by_d():
    model = _clustered(5)
    assert model.encoder[-1].out_features == 5 + 2 and model.decoder[0].in_features == 5 + 2
    assert model.cluster_discriminator[0].in_features == 5
    assert model.discriminator[0].in_features == 2
    ids = {p: {id(q) for q in model.parameters_for(p)} for p in model.players}
    assert ids["d"] == {id(q) for m in (model.discriminator, model.cluster_discriminator)
                        for q in m.parameters()}
    assert ids["g"] == {id(q) for q in model.encoder.parameters()}
    assert ids["ae"] == {id(q) for m in (model.encoder, model.decoder) for q in m.parameters()}
    assert "cluster_discriminator.0.weight" not in tiny("aae").state_dict()


@torch.no_grad()
def test_the_clustering_losses_are_what_the_paper_writes():
    k = 3
    model = _clustered(k)
    batch = tiny_batch(model)
    x = batch["x"].flatten(1)
    h = model.encoder(x)
    y, z = h[:, :k].softmax(1), h[:, k:]  # q(y|x) and the code
    p = torch.sigmoid(model.decoder(torch.cat([y, z], 1)))
    rec = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean()
    assert float(model.loss(batch, "ae")[0]) == pytest.approx(float(rec), rel=1e-5)
    d_z = lambda c: torch.sigmoid(model.discriminator(c).squeeze(-1))  # noqa: E731
    d_y = lambda c: torch.sigmoid(model.cluster_discriminator(c).squeeze(-1))  # noqa: E731
    # Both games in D's loss: a prior code, then a uniform cluster drawn as one-hot.
    torch.manual_seed(7)
    loss, logs = model.loss(batch, "d")
    torch.manual_seed(7)
    prior = model.prior_sample(len(x))
    one_hot = torch.nn.functional.one_hot(torch.randint(k, (len(x),)), k).float()
    want = (-d_z(prior).log().mean() - (1 - d_z(z)).log().mean()
            - d_y(one_hot).log().mean() - (1 - d_y(y)).log().mean())
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert set(logs) == {"d_real", "d_fake", "c_real", "c_fake"}
    loss, _ = model.loss(batch, "g")  # the encoder fools both
    assert float(loss) == pytest.approx(float(-d_z(z).log().mean() - d_y(y).log().mean()),
                                        rel=1e-5)


def test_encode_is_the_cluster_probabilities_then_the_code():
    model = _clustered(4).eval()
    x = tiny_batch(model, 6)["x"]
    h = model.encoder(x.flatten(1))
    code = model.encode(x)
    assert code.shape == (6, 4 + 2)
    assert torch.allclose(code[:, :4], h[:, :4].softmax(1)) and torch.equal(code[:, 4:], h[:, 4:])
    assert torch.equal(model.cluster(x), code[:, :4]) and model.n_clusters == 4
    with pytest.raises(ValueError, match="no clusters"):
        tiny("aae").cluster(x)


def test_sample_decodes_a_one_hot_cluster_beside_a_prior_code(monkeypatch):
    model = _clustered(4).eval()
    codes = []
    monkeypatch.setattr(model, "decode", lambda z: codes.append(z) or torch.zeros(len(z), 1, 4, 4))
    model.sample(3, cond={"y": torch.tensor([2, 0, 3])})
    assert torch.equal(codes[-1][:, :4], torch.eye(4)[[2, 0, 3]])
    model.sample(400)  # clusters uniform by default
    one_hot = codes[-1][:, :4]
    assert bool((one_hot.sum(1) == 1).all()) and int(one_hot.sum(0).min()) > 60
    with pytest.raises(ValueError, match=r"must be in \[0, 4\)"):
        model.sample(2, cond={"y": 4})


def test_pictures_show_each_cluster_decoded_and_its_surest_images(tmp_path, monkeypatch):
    model = _clustered(3, latent=3).eval()
    data = _data(40)
    seen = []
    real_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z: seen.append(z) or real_decode(z))
    paths = model.pictures(tmp_path, data)
    assert [p.name for p in paths] == ["clusters.png", "cluster-members.png"]
    grid = seen[0].view(3, 10, 3 + 3)  # (clusters, columns, K + L)
    assert torch.equal(grid[:, :, :3], torch.eye(3)[:, None].expand(3, 10, 3))
    assert bool((grid[:, :, 3:] == grid[:1, :, 3:]).all())  # one code per column, every row
    from PIL import Image

    from genlab.images import grid as image_grid

    # Row i: the 10 images most probably in cluster i, the surest first.
    probs = model.cluster(data.x)
    order = torch.tensor([sorted(range(40), key=lambda n: -float(probs[n, i]))[:10]
                          for i in range(3)])
    want = image_grid(data.x[order.flatten()], 10)
    with Image.open(paths[1]) as im:
        got = torch.from_numpy(np.array(im.convert("L"))).long()
    scale = im.width // want.shape[1]
    assert torch.equal(got[::scale, ::scale], torch.as_tensor(want).long())


def test_a_2d_code_with_clusters_scatters_the_code_part(tmp_path):
    model = _clustered(3).eval()
    paths = model.pictures(tmp_path, _data())
    assert [p.name for p in paths] == ["clusters.png", "cluster-members.png", "codes.png"]


def _quadrants(n: int, seed: int) -> Dataset:
    """4x4 grey images, class c = the bright quadrant c: four clusters nothing can confuse."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.1 + 0.05 * torch.rand(n, 1, 4, 4, generator=g)
    for c in range(4):
        row, col = divmod(c, 2)
        x[y == c, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 0.8
    return Dataset(torch.round(x * 255) / 255, y, "quadrants", "train" if seed == 0 else "test")


def test_clusters_find_four_obvious_classes_without_labels():
    from genlab.metrics.clustering import cluster_report

    train, test = _quadrants(400, 0), _quadrants(200, 1)
    torch.manual_seed(0)
    model = genlab.create("aae", shape=(1, 4, 4), latent=1, hidden=[32], d_hidden=[16],
                          clusters=4)
    opts = {p: torch.optim.Adam(model.parameters_for(p), lr=2e-3, **model.optimizer_settings(p))
            for p in model.players}
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = {"x": train.x[torch.randint(len(train), (50,), generator=g)]}  # no labels
        for player in model.players:
            opts[player].zero_grad()
            model.loss(batch, player)[0].backward()
            opts[player].step()
    report = cluster_report(model, train, test)
    # Chance is 75% error; merging two of the four clusters would cost 25%.
    assert report.head < 0.3 and report.majority < 0.3 and report.hungarian < 0.3, report


@pytest.mark.parametrize("clusters", [0, 3])
def test_g_steps_through_the_codes_d_judged_and_trains_as_if_it_encoded_again(clusters):
    # "d" hands its codes (with the encoder's graph) to "g": two encoder passes per step
    # instead of three, and the same weights, to the bit, as a "g" that encodes afresh.
    from genlab.train import train_step

    def run(hand_over: bool) -> tuple[dict, int]:
        torch.manual_seed(0)
        model = genlab.create("aae", shape=(1, 3, 3), latent=2, hidden=(6,), d_hidden=(5,),
                              clusters=clusters)
        if not hand_over:
            model.take_over = lambda batch, graph=False: None
        calls = []
        model.encoder.register_forward_hook(lambda *a: calls.append(1))
        opts = {p: torch.optim.Adam(model.parameters_for(p), lr=1e-2,
                                    **model.optimizer_settings(p)) for p in model.players}
        g = torch.Generator().manual_seed(1)
        for step in range(4):
            train_step(model, opts, {"x": torch.rand(8, 1, 3, 3, generator=g)}, step)
        return model.state_dict(), len(calls)

    (handed, n_handed), (fresh, n_fresh) = run(True), run(False)
    assert (n_handed, n_fresh) == (8, 12)
    for name in fresh:
        assert torch.equal(handed[name], fresh[name]), name
