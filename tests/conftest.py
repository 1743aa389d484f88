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
    "gan": {"latent": 4, "hidden": [16, 16]},
    "pixelcnn": {"channels": 3, "blocks": 1, "kernel": 3},
    "gated_pixelcnn": {"channels": 3, "layers": 2, "first_kernel": 3},
    "row_lstm": {"hidden": 12, "layers": 1, "out_hidden": 24},
    "diagonal_bilstm": {"hidden": 12, "layers": 1, "out_hidden": 24},
    "stargan": {"width": 4, "blocks": 1, "d_width": 4},
}


def tiny(name: str, shape: tuple[int, int, int] = (1, 4, 4)) -> genlab.models.GenerativeModel:
    torch.manual_seed(0)
    return genlab.create(name, shape=shape, **TINY[name])


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
    if "attrs" in model.needs:  # one value index per attribute of genlab.data.attributes
        from genlab.data.attributes import ATTRIBUTES

        batch["attrs"] = torch.stack([torch.randint(0, len(v), (n,), generator=g)
                                      for v in ATTRIBUTES.values()], 1)
    return batch


def translate_cond(model: genlab.models.GenerativeModel, n: int, seed: int = 0) -> dict:
    """A ``translate`` target for ``n`` images: attribute rows where the model reads "attrs",
    else the other domain."""
    if "attrs" in model.needs:
        return {"attrs": tiny_batch(model, n, seed)["attrs"]}
    return {"to": "b"}


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests use tiny tensors: one thread avoids oversubscribing the 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
