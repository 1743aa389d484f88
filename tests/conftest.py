"""Shared fixtures: the tiny configuration of every registered model."""

from __future__ import annotations

import pytest
import torch

import genlab

# One tiny config per registered model: adding a model = one file + one registry line + one entry.
TINY: dict[str, dict] = {
    "independent": {},
    "markov": {},
    "fulljoint": {},
    "nade": {"hidden": 8},
    "made": {"hidden": [8, 6], "masks": 2, "order_agnostic": False},
    "rnade": {"hidden": 8, "components": 3},
    "vae": {"hidden": [16], "latent": 3},
    "conv_vae": {"latent": 3, "width": 4},
    "gan": {"latent": 4, "hidden": [16, 16]},
    "cyclegan": {"width": 4, "blocks": 1, "d_width": 4, "pool": 6},
    "aae": {"latent": 2, "hidden": [16], "d_hidden": [8]},
    "infogan": {"noise": 3, "categories": 3, "continuous": 2, "width": 4, "q_hidden": 6},
    "pixelcnn": {"channels": 3, "blocks": 1, "kernel": 3},
    "gated_pixelcnn": {"channels": 3, "layers": 2, "first_kernel": 3},
    "row_lstm": {"hidden": 12, "layers": 1, "out_hidden": 24},
    "diagonal_bilstm": {"hidden": 12, "layers": 1, "out_hidden": 24},
    "dcgan": {"latent": 4, "width": 4},
    "progan": {"latent": 4, "max_channels": 4, "base": 16, "phase": 96, "ema": 0.9},
    "text2image": {"latent": 4, "width": 4, "words": 4, "text": 6, "proj": 3},
    "stargan": {"width": 4, "blocks": 1, "d_width": 4},
    "puzzlegan": {"latent": 4, "embed": 5, "patch": 4, "width": 4, "mask_width": 3,
                  "d_width": 4},
}

# Settings of a model that change its likelihood or networks enough to go through the
# conformance suite as well: id -> (model, settings beyond its tiny config).
VARIANTS: dict[str, tuple[str, dict]] = {
    "conv_vae-logistic": ("conv_vae", {"levels": 256, "likelihood": "logistic"}),
    "aae-clusters": ("aae", {"clusters": 4}),
}


class Crash(Exception):
    """What a model made to die mid-run by :func:`crash_at` raises."""


def crash_at(model: genlab.models.GenerativeModel, step: int) -> genlab.models.GenerativeModel:
    """``model``, made to raise :class:`Crash` when ``fit`` reaches ``step`` (pick one between
    two checkpoints, so resuming has steps to redo)."""
    real = model.on_step

    def on_step(s: int) -> None:
        if s == step:
            raise Crash
        real(s)

    model.on_step = on_step
    return model


def tiny(name: str, shape: tuple[int, int, int] = (1, 4, 4),
         **settings) -> genlab.models.GenerativeModel:
    """The tiny model ``name`` (a registered model or a ``VARIANTS`` id), with ``settings``
    over its tiny config, from seed 0."""
    model, extra = VARIANTS.get(name, (name, {}))
    torch.manual_seed(0)
    return genlab.create(model, shape=shape, **{**TINY[model], **extra, **settings})


def perturbed(name: str, shape: tuple[int, int, int], order: str | None = None,
              noise: float = 1.0, seed: int = 0, **settings) -> genlab.models.GenerativeModel:
    """A tiny model whose parameters are pushed well away from their initial values."""
    torch.manual_seed(seed)
    settings = {**TINY.get(name, {}), **settings}
    if order is not None:
        settings["ordering"] = order
    model = genlab.create(name, shape=shape, **settings)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def tiny_batch(model: genlab.models.GenerativeModel, n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *model.shape, generator=g)
    if model.data_kind == "binary":
        x = torch.bernoulli(x, generator=g)
    else:  # grey data arrives as 8-bit values / 255
        x = torch.round(x * 255) / 255
    batch = {"x": x, "y": torch.randint(0, 10, (n,), generator=g)}
    if "x_b" in model.needs:  # a second, unaligned domain
        batch["x_b"] = torch.round(torch.rand(n, *model.shape, generator=g) * 255) / 255
    if "text" in model.needs:  # caption token ids, padded with 0 after 3..6 words
        ids = torch.randint(2, 40, (n, 8), generator=g)
        words = torch.randint(3, 7, (n, 1), generator=g)
        batch["text"] = torch.where(torch.arange(8) < words, ids, 0)
    if "attrs" in model.needs:  # one value index per attribute of genlab.data.attributes
        from genlab.data.attributes import ATTRIBUTES

        batch["attrs"] = torch.stack([torch.randint(0, len(v), (n,), generator=g)
                                      for v in ATTRIBUTES.values()], 1)
    if "patches" in model.needs:
        batch.update(tiny_patches(x, g))
    return batch


def tiny_patches(x: torch.Tensor, g: torch.Generator) -> dict:
    """Key-patch fields (genlab.data.patches) for tiny images x (n, C, H, W): 1..3 used slots
    per image, each a random crop of half the image's smaller side (at least 1 pixel)."""
    n, c, h, w = x.shape
    k, side = 3, max(1, min(h, w) // 2)
    count = torch.randint(1, k + 1, (n,), generator=g)
    valid = torch.arange(k)[None, :] < count[:, None]  # (n, k)
    patches = torch.zeros(n, k, c, side, side)
    masks = torch.zeros(n, k, h, w, dtype=torch.bool)
    for i in range(n):
        for j in range(int(count[i])):
            t = int(torch.randint(0, h - side + 1, (1,), generator=g))
            left = int(torch.randint(0, w - side + 1, (1,), generator=g))
            patches[i, j] = x[i, :, t:t + side, left:left + side]
            masks[i, j, t:t + side, left:left + side] = True
    return {"patches": patches, "patch_valid": valid, "masks": masks}


def translate_cond(model: genlab.models.GenerativeModel, n: int, seed: int = 0) -> dict:
    """A ``translate`` target for ``n`` images: attribute rows where the model reads "attrs",
    else the other domain."""
    if "attrs" in model.needs:
        return {"attrs": tiny_batch(model, n, seed)["attrs"]}
    return {"to": "b"}


def one_step_per_player(model: genlab.models.GenerativeModel, batch: dict) -> None:
    """One Adam step per player changes some of that player's parameters and no others."""
    name = model.name
    for player in model.players:
        owned = {id(p) for p in model.parameters_for(player)}
        assert owned, f"{name}: player {player} owns no parameters"
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.Adam(model.parameters_for(player), lr=1e-2)
        opt.zero_grad()
        loss, logs = model.loss(batch, player)
        assert loss.dim() == 0 and torch.isfinite(loss), f"{name}/{player}: loss {loss}"
        assert all(isinstance(v, float) for v in logs.values())
        loss.backward()
        opt.step()
        changed_own = False
        for n, p in model.named_parameters():
            moved = not torch.equal(before[n], p.detach())
            if id(p) in owned:
                changed_own |= moved
            else:
                assert not moved, f"{name}: player {player} changed {n}, which it does not own"
        assert changed_own, f"{name}: player {player}'s step changed none of its parameters"


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests use tiny tensors: one thread avoids oversubscribing the 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def r1_by_hand(critic, x: torch.Tensor) -> torch.Tensor:
    """E ||d critic(x) / dx||^2 over the batch, from autograd on a fresh leaf."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    return g.flatten(1).pow(2).sum(1).mean()


def loss_added_by(model, batch, player: str, seed: int = 0, **settings):
    """What ``settings`` (config fields, set on ``model``) add to ``player``'s loss on
    ``batch``: the loss with them minus the loss without, same weights and same noise."""
    torch.manual_seed(seed)
    plain, _ = model.loss(batch, player)
    for key, value in settings.items():
        setattr(model.config, key, value)
    torch.manual_seed(seed)
    changed, _ = model.loss(batch, player)
    return changed - plain
