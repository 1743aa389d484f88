"""InfoGAN: the exact assignment behind the unsupervised error, the Q head on D's body, the
information bound and the codes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import TINY, tiny, tiny_batch

import genlab
from genlab.data.dataset import Dataset
from genlab.metrics.clustering import assignment, clustering_error
from genlab.models.infogan import unsupervised_error


def brute_force(cost: list[list[float]]) -> float:
    n, m = len(cost), len(cost[0])
    return min(sum(cost[i][j] for i, j in enumerate(cols))
               for cols in itertools.permutations(range(m), n))


@pytest.mark.parametrize("seed", range(40))
def test_assignment_is_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 6, (1,), generator=g))
    m = n + int(torch.randint(0, 3, (1,), generator=g))
    # Small integers give ties; floats give a unique optimum.
    cost = (torch.randint(0, 4, (n, m), generator=g).float() if seed % 2
            else torch.randn(n, m, generator=g)).tolist()
    cols = assignment(cost)
    assert len(set(cols)) == n and all(0 <= j < m for j in cols)
    assert sum(cost[i][j] for i, j in enumerate(cols)) == pytest.approx(brute_force(cost))


def test_assignment_beats_the_greedy_choice():
    # Greedy takes (0, 0) = 1 and then pays 10; the optimum is 2 + 2.
    assert assignment([[1.0, 2.0], [2.0, 10.0]]) == [1, 0]
    with pytest.raises(ValueError, match="at most as many rows"):
        assignment([[0.0], [1.0]])


def test_a_relabelled_perfect_clustering_has_no_error():
    labels = torch.arange(10).repeat(30)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert clustering_error(perm[labels], labels) == 0.0
    # One image in each of 3 clusters moved to a wrong one: exactly 3 errors.
    clusters = perm[labels].clone()
    clusters[:3] = perm[(labels[:3] + 1) % 10]
    assert clustering_error(clusters, labels) == pytest.approx(3 / 300)


def test_clustering_error_counts_only_one_to_one_matches():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # All in one cluster: only one class can be matched to it.
    assert clustering_error(torch.zeros(6, dtype=torch.long), labels) == pytest.approx(4 / 6)
    # More clusters than classes: the extra cluster's images are wrong.
    clusters = torch.tensor([0, 0, 1, 1, 2, 3])
    assert clustering_error(clusters, labels) == pytest.approx(1 / 6)


@pytest.mark.parametrize("arch", ["dcgan", "paper"])
def test_the_q_head_shares_the_discriminators_body(arch):
    model = tiny("infogan", arch=arch)
    x = tiny_batch(model)["x"]
    owned = {id(p) for p in model.parameters_for("d")}
    assert {id(p) for p in model.q.parameters()} <= owned
    assert {id(p) for p in model.discriminator.parameters()} <= owned
    assert not {id(p) for p in model.generator.parameters()} & owned
    model.eval()
    before = model.encode(x)
    with torch.no_grad():
        model.discriminator.body[0].weight.add_(1.0)  # only the shared body moves
    assert not torch.allclose(model.encode(x), before)
    # And Q's gradient reaches the body's first layer.
    model.train()
    logits, _, _ = model.posterior(model.discriminator.feature_map(x * 2 - 1))
    logits.sum().backward()
    assert model.discriminator.body[0].weight.grad.abs().sum() > 0


def test_the_papers_networks():
    model = tiny("infogan", shape=(1, 28, 28), arch="paper", width=8)
    d = model.discriminator
    assert d.body[2].out_channels == 16 and d.body[6].out_features == 1024  # conv 2w, FC 1024
    assert model.generator.start == (16, 7, 7)  # FC to 7x7x2w, then two transposed convs
    model.train()
    for player in model.players:  # both players step on 28x28 digits
        loss, _ = model.loss(tiny_batch(model, 4), player)
        assert torch.isfinite(loss)
    model.eval()
    assert model.sample(3).shape == (3, 1, 28, 28)
    colour = tiny("infogan", shape=(3, 8, 12), arch="paper", width=4)  # not square, 3 channels
    assert colour.generator.start == (8, 2, 3)
    for player in colour.players:
        assert torch.isfinite(colour.loss(tiny_batch(colour, 4), player)[0])
    colour.eval()
    assert colour.sample(2).shape == (2, 3, 8, 12)
    assert colour.encode(tiny_batch(colour, 2)["x"]).shape == (2, 5)
    torch.manual_seed(0)
    normal = genlab.create("infogan", shape=(1, 28, 28), arch="paper", normal_init=True)
    fc = normal.discriminator.body[6].weight.detach()  # 6272 -> 1024: torch's default std 0.007
    assert abs(float(fc.std()) - 0.02) < 1e-3 and abs(float(fc.mean())) < 1e-3
    assert genlab.MODELS["infogan"].presets["cpu"]["model"]["normal_init"] is True
    for bad in [(1, 30, 28), (1, 28, 30)]:
        with pytest.raises(ValueError, match="divisible by 4"):
            tiny("infogan", shape=bad, arch="paper")
    with pytest.raises(ValueError, match="arch must be one of"):
        tiny("infogan", arch="resnet")


def test_the_information_bound_is_at_most_ln_k_and_reaches_it():
    torch.manual_seed(0)
    model = genlab.create("infogan", shape=(1, 4, 4), **{**TINY["infogan"], "categories": 10})
    for player in model.players:
        _, logs = model.loss(tiny_batch(model, 16), player)
        assert logs["mi_cat"] <= math.log(10) + 1e-6
        assert logs["mi_cont"] <= 2 * (math.log(2) - 0.5 * math.log(2 * math.pi)) + 1e-6
    # A posterior that is sure of the right category and continuous codes: the bounds are
    # ln 10 and 2 (ln 2 - ln(2 pi) / 2) (unit std); a uniform one gives 0.
    c, u = torch.arange(10).repeat(2), torch.rand(20, 2) * 2 - 1
    sure = (100 * torch.nn.functional.one_hot(c, 10).float(), u, torch.zeros(20, 2))
    model.posterior = lambda fmap: sure
    term, logs = model.information(torch.zeros(20, 1), c, u)
    assert logs["mi_cat"] == pytest.approx(math.log(10), abs=1e-6)
    assert logs["mi_cont"] == pytest.approx(2 * (math.log(2) - 0.5 * math.log(2 * math.pi)))
    assert float(term) == pytest.approx(-(logs["mi_cat"] - math.log(10))
                                        - (logs["mi_cont"] - 2 * math.log(2)), abs=1e-6)
    model.posterior = lambda fmap: (torch.zeros(20, 10), u, torch.zeros(20, 2))
    assert model.information(torch.zeros(20, 1), c, u)[1]["mi_cat"] == pytest.approx(0, abs=1e-6)


def test_codes_shapes_and_a_fixed_category():
    model = tiny("infogan")  # noise 3, categories 3, continuous 2
    latent, c, u = model.draw(7)
    assert latent.shape == (7, 3 + 3 + 2) and c.shape == (7,) and u.shape == (7, 2)
    assert bool((u.abs() <= 1).all())
    assert torch.equal(latent[:, 3:6].argmax(1), c) and torch.equal(latent[:, 6:], u)
    latent, c, _ = model.draw(5, {"c": 2, "code": torch.tensor([0.5, -2.0])})
    assert bool((c == 2).all()) and bool((latent[:, 5] == 1).all())
    assert torch.equal(latent[:, 6:], torch.tensor([[0.5, -2.0]]).expand(5, 2))
    with pytest.raises(ValueError, match="categories in 0..2"):
        model.sample(2, cond={"c": 3})
    model.eval()
    assert model.sample(4, cond={"c": torch.tensor([0, 1, 2, 0])}).shape == (4, 1, 4, 4)
    z = model.encode(tiny_batch(model, 6)["x"])
    assert z.shape == (6, 3 + 2)
    assert torch.allclose(z[:, :3].sum(1), torch.ones(6))
    assert model.classify(tiny_batch(model, 6)["x"]).shape == (6,)


def test_the_learning_rates_per_player():
    model = genlab.create("infogan", shape=(1, 4, 4), **TINY["infogan"], lr_d=2e-4, lr_g=1e-3)
    assert model.optimizer_settings("d") == {"betas": (0.5, 0.999), "lr": 2e-4}
    assert model.optimizer_settings("g") == {"betas": (0.5, 0.999), "lr": 1e-3}
    assert "lr" not in tiny("infogan").optimizer_settings("g")  # the trainer's lr


def test_the_traversal_rows_are_categories_and_columns_the_code(tmp_path):
    model = tiny("infogan")
    model.eval()
    seen = []
    model.generator.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    paths = model.pictures(tmp_path, None)
    assert [p.name for p in paths] == ["traversal.png", "traversal-2.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    latent = seen[1].view(3, 9, -1)  # code 2's grid: (categories, steps, inputs)
    assert torch.equal(latent[:, :, 3:6].argmax(2), torch.arange(3)[:, None].expand(3, 9))
    assert torch.allclose(latent[0, :, 7], torch.linspace(-2, 2, 9))
    assert bool((latent[:, :, 6] == 0).all())
    assert bool((latent[:, :, :3] == latent[0, 0, :3]).all())  # the noise is fixed


def test_unsupervised_error_of_the_categorical_code(monkeypatch):
    model = tiny("infogan")
    x = tiny_batch(model, 12)["x"]
    labels = torch.arange(12) % 3
    data = Dataset(x, labels)
    # A Q that names each image's class, shifted by one: relabelled, so no error.
    posterior = torch.nn.functional.one_hot((labels + 1) % 3, 3).float()
    monkeypatch.setattr(type(model), "encode",
                        lambda self, x: torch.cat([posterior[: len(x)], torch.zeros(len(x), 2)], 1))
    assert unsupervised_error(model, data) == 0.0
