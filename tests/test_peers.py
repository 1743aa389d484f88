"""The plain-PyTorch peers of ``benchmarks/peers``: each trains the parameters of genlab's model
under its ``GENLAB`` settings (the same shapes, so the speed comparison is like for like), and
its reference step runs and moves them; the ProGAN and convolutional-VAE peers compute
genlab's very functions."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import genlab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

NAMES = sorted(m.name for m in pkgutil.iter_modules(peers.__path__))
# Peers written with another architecture on purpose (see their docstrings).
OTHER_ARCHITECTURE = {"dcgan"}


def peer(name: str):
    return importlib.import_module(f"peers.{name}")


def genlab_model(name: str) -> genlab.models.GenerativeModel:
    module = peer(name)
    model_name, settings = module.GENLAB
    torch.manual_seed(0)
    return genlab.create(model_name, shape=tuple(module.SHAPE), **settings)


def trained(step) -> list[torch.nn.Parameter]:
    """The parameters the optimizers of a reference step update, each once."""
    found = {}
    for value in inspect.getclosurevars(step).nonlocals.values():
        if isinstance(value, torch.optim.Optimizer):
            for group in value.param_groups:
                found.update({id(p): p for p in group["params"]})
    return list(found.values())


def test_every_peer_is_listed():
    assert {"conv_vae", "progan"} <= set(NAMES)
    assert OTHER_ARCHITECTURE <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_reference_step_trains_genlabs_parameters(name):
    torch.manual_seed(0)
    step = peer(name).reference_step(4)
    params = trained(step)
    assert params, f"{name}: the reference step has no optimizer"
    before = [p.detach().clone() for p in params]
    step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))
    if name in OTHER_ARCHITECTURE:
        return
    model = genlab_model(name)
    ours = {id(p): p for player in model.players for p in model.parameters_for(player)}
    shapes = sorted(tuple(p.shape) for p in ours.values())
    assert shapes == sorted(tuple(p.shape) for p in params), name
    assert sum(p.numel() for p in ours.values()) == sum(p.numel() for p in params)


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy parameters in order; the two modules must list the same shapes in the same order."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for s, t in pairs:
            assert s.shape == t.shape
            t.copy_(s)


def test_progan_peer_is_genlabs_network_after_growth():
    module, model = peer("progan"), genlab_model("progan")
    model.on_step(0)  # the harness's first step: at the last level already (phase 0)
    _, logs = model.loss({"x": torch.rand(2, *module.SHAPE)}, "g")
    assert (logs["level"], logs["alpha"]) == (model.levels - 1, 1.0) == (3, 1.0)
    g, d = module.Generator(), module.Critic()
    copy_weights(model.generator, g)
    copy_weights(model.discriminator, d)
    torch.manual_seed(1)
    z = torch.randn(5, module.LATENT)
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(g(z), model.generator(z, 3, 1.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d(x), model.discriminator(x, 3, 1.0), rtol=1e-5, atol=1e-6)


def test_conv_vae_peer_computes_genlabs_bound():
    module, model = peer("conv_vae"), genlab_model("conv_vae")
    vae = module.ConvVAE()
    with torch.no_grad():  # genlab's output bias, not zero, so its place is checked too
        model.bias.normal_()
    copy_weights(model, vae)
    model.eval()  # no first-batch bias initialisation
    x = torch.bernoulli(torch.rand(6, *module.SHAPE, generator=torch.Generator().manual_seed(2)))
    torch.manual_seed(3)
    loss, _ = model.loss({"x": x})
    torch.manual_seed(3)  # genlab's first draw is its (k, B, L) noise: the same here
    eps = torch.randn(module.SAMPLES, 6, module.LATENT)
    torch.testing.assert_close(vae(x, eps), loss, rtol=1e-5, atol=1e-4)
    assert model.config.k_train == module.SAMPLES == 2 and model.config.objective == "iwae"
