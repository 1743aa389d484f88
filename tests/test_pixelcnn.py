"""PixelCNN and Gated PixelCNN: the cached sampler against the naive one, colour masks, class
conditioning, grey levels, save/load."""

from __future__ import annotations

import pytest
import torch

import genlab

MODELS = ("pixelcnn", "gated_pixelcnn")
SMALL = {"pixelcnn": {"channels": 6, "blocks": 2, "kernel": 5},
         "gated_pixelcnn": {"channels": 6, "layers": 3, "first_kernel": 5}}


def make(name, shape, noise=0.2, seed=0, **settings):
    """A small float64 model with parameters pushed away from their initial values."""
    torch.manual_seed(seed)
    model = genlab.create(name, shape=shape, **{**SMALL[name], **settings}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def all_images(shape, levels):
    """Every image of ``shape`` with ``levels`` values per sub-pixel, (levels^D, C, H, W)."""
    d = shape[0] * shape[1] * shape[2]
    k = torch.arange(levels**d).unsqueeze(1)
    digits = (k // levels ** torch.arange(d)) % levels
    return (digits.float() / (levels - 1)).view(-1, *shape)


def log_mass(model, x, **kwargs):
    with torch.no_grad():
        return torch.logsumexp(model.log_prob(x, **kwargs), 0).item()


CASES = [  # (model, shape, levels, classes)
    ("pixelcnn", (1, 4, 5), 2, 0),
    ("pixelcnn", (3, 3, 4), 2, 0),
    ("pixelcnn", (3, 2, 3), 4, 0),
    ("gated_pixelcnn", (1, 4, 5), 2, 0),
    ("gated_pixelcnn", (3, 3, 4), 4, 0),
    ("gated_pixelcnn", (1, 4, 5), 3, 3),
    ("gated_pixelcnn", (3, 2, 3), 2, 2),
]


@pytest.mark.parametrize(("name", "shape", "levels", "classes"), CASES)
@pytest.mark.parametrize("given", [False, True])
def test_cached_sampler_equals_reference_sampler(name, shape, levels, classes, given):
    extra = {"classes": classes} if classes else {}
    model = make(name, shape, levels=levels, **extra)
    n = 12
    g = torch.Generator().manual_seed(1)
    u = torch.rand(n, *shape, generator=g)
    cond = {}
    if given:  # a different random mask per image; the given values are on the grid
        cond["x"] = torch.randint(levels, (n, *shape), generator=g).float() / (levels - 1)
        cond["mask"] = torch.rand(n, *shape, generator=g) < 0.3
    if classes:
        cond["y"] = torch.arange(n) % classes
    cond = cond or None
    fast = model.sample(n, cond, u=u, sweeps=0)  # the ancestral draw alone, no Gibbs sweeps
    slow = model.reference_sample(n, cond, u=u)
    assert torch.equal(fast, slow)
    assert 0 < fast.std() and fast.dtype == torch.float32
    if given:
        assert torch.equal(fast[cond["mask"]], cond["x"][cond["mask"]])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("levels", [2, 4])
def test_colour_channels_see_only_earlier_sub_pixels(name, levels):
    shape = (3, 2, 3)
    model = make(name, shape, levels=levels, channels=12)  # wide: no colour group all dead
    x = torch.rand(4, *shape, dtype=torch.float64)  # a few points: a ReLU may be off at one
    # Images are independent, so differentiate the batch sum: (logits..., B, C, H, W).
    jac = torch.autograd.functional.jacobian(lambda v: model.logits(v).sum(0), x)
    d = 18
    # dep[i, j] != 0 iff some logit of sub-pixel i depends on sub-pixel j.
    batch_dim = 3 if levels == 2 else 4  # after the logits' own dimensions
    dep = jac.abs().sum(batch_dim).reshape(-1, d, d).sum(0)
    rank = torch.empty(d, dtype=torch.long)
    rank[model.order] = torch.arange(d)  # raster, R -> G -> B inside each pixel
    assert bool((dep[rank.unsqueeze(0) >= rank.unsqueeze(1)] == 0).all())
    # Not vacuous: G sees R and B sees R and G of the same pixel, and every sub-pixel after
    # the first sees something.
    hw = 6
    for p in range(hw):
        assert dep[hw + p, p] != 0 and dep[2 * hw + p, p] != 0 and dep[2 * hw + p, hw + p] != 0
    assert bool((dep != 0).any(1)[rank > 0].all())


@pytest.mark.parametrize("name", MODELS)
def test_four_levels_normalise_exhaustively(name):
    shape = (3, 1, 2)
    model = make(name, shape, levels=4)
    x = all_images(shape, 4)  # 4^6 images
    assert abs(log_mass(model, x)) < 1e-6
    assert model.log_prob(x).exp().max() < 0.5  # not a point mass


def test_class_conditioning_normalises_per_class_and_changes_the_distribution():
    shape = (1, 4, 4)
    model = make("gated_pixelcnn", shape, noise=1.0, classes=2, channels=3, layers=2,
                 first_kernel=3)
    x = all_images(shape, 2)  # 2^16 images
    with torch.no_grad():
        per_class = torch.stack([model.log_prob(x, y=torch.full((len(x),), k))
                                 for k in range(2)])  # (2, 2^16)
    assert torch.logsumexp(per_class, 1).abs().max() < 1e-6
    assert (per_class[0] - per_class[1]).abs().max() > 0.5
    # Without labels log_prob is the uniform mixture over the classes, normalised as well.
    mixture = torch.logsumexp(per_class, 0) - torch.log(torch.tensor(2.0, dtype=torch.float64))
    with torch.no_grad():
        assert torch.allclose(model.log_prob(x[::64]), mixture[::64])
    assert abs(torch.logsumexp(mixture, 0).item()) < 1e-6
    # The loss reads the labels from the batch.
    batch = {"x": x[:8].float(), "y": torch.zeros(8, dtype=torch.long)}
    assert model.loss(batch, "model")[0] != model.loss({**batch, "y": batch["y"] + 1}, "model")[0]


def test_labels_are_checked():
    model = make("gated_pixelcnn", (1, 3, 3), classes=2)
    with pytest.raises(ValueError, match="labels in 0 .. 1"):
        model.sample(2, cond={"y": torch.tensor([0, 2])})
    with pytest.raises(ValueError, match="needs labels"):
        model.logits(torch.zeros(1, 1, 3, 3))
    plain = make("gated_pixelcnn", (1, 3, 3))
    with pytest.raises(ValueError, match="takes no labels"):
        plain.sample(2, cond={"y": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="multiple of the 3 colour channels"):
        genlab.create("pixelcnn", shape=(3, 4, 4), channels=4)


def test_levels_256_colour_trains():
    model = genlab.create("pixelcnn", shape=(3, 4, 4), channels=6, blocks=1, levels=256)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(256, (8, 3, 4, 4), generator=g).float() / 255
    logits = model.logits(x)
    assert logits.shape == (8, 256, 3, 4, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss, _ = model.loss({"x": x}, "model")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    s = model.sample(2)
    assert s.shape == (2, 3, 4, 4) and bool(((s * 255).round() == s * 255).all())


@pytest.mark.parametrize("name", MODELS)
def test_save_load_keeps_conditioning_and_levels(name, tmp_path):
    extra = {"classes": 3} if name == "gated_pixelcnn" else {}
    model = make(name, (3, 2, 3), levels=4, **extra).float()
    model.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    x = torch.randint(4, (6, 3, 2, 3)).float() / 3
    kwargs = {"y": torch.arange(len(x)) % 3} if extra else {}
    with torch.no_grad():
        assert torch.equal(model.log_prob(x, **kwargs), loaded.log_prob(x, **kwargs))
    cond = {"y": torch.tensor([0, 1, 2, 1])} if extra else None
    u = torch.rand(4, 3, 2, 3)
    assert torch.equal(model.sample(4, cond, u=u), loaded.sample(4, cond, u=u))
