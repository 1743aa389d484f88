"""The protocol, checked on every registered model (DESIGN.md section 8)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, one_step_per_player, tiny, tiny_batch, translate_cond

import genlab
from genlab.models.base import GenerativeModel

NAMES = list(genlab.MODELS)
# Every model as registered, plus the settings that build other networks.
VARIANTS = [(n, {}) for n in NAMES] + [("aae", {"clusters": 4})]
IDS = [n + "".join(f"-{k}={v}" for k, v in s.items()) for n, s in VARIANTS]


def test_every_model_has_a_tiny_config_and_a_paper():
    assert set(TINY) == set(genlab.MODELS)
    for name, cls in genlab.MODELS.items():
        assert cls.name == name
        assert cls.paper, f"{name} names no paper"
        assert set(cls.presets) >= {"cpu", "paper"}


@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=IDS)
def test_one_step_per_player_changes_only_that_player(name, settings):
    model = tiny(name, **settings)
    one_step_per_player(model, tiny_batch(model))


@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 2, 3)])
def test_sample_shape_and_range(name, settings, shape):
    model = tiny(name, shape, **settings)
    if not model.has("sample"):  # translation-only models: translate in its place
        with pytest.raises(genlab.Unsupported, match="no sample"):
            model.sample(5)
        source = tiny_batch(model, 5)["x"]
        x = model.translate(source, translate_cond(model, 5)).detach()
        assert x.shape == source.shape
    else:
        x = model.sample(5)
    assert x.shape == (5, *shape)
    assert x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    if model.data_kind == "binary":
        assert bool(((x == 0) | (x == 1)).all())


@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=IDS)
def test_capabilities_are_real_or_raise_unsupported(name, settings):
    model = tiny(name, **settings)
    x = tiny_batch(model, 6)["x"]
    if model.has("log_prob"):
        lp = model.log_prob(x)
        assert lp.shape == (6,) and torch.isfinite(lp).all()
        assert bool((lp <= 1e-6).all()), "binary-image probabilities cannot exceed 1"
    else:
        with pytest.raises(genlab.Unsupported, match="models that do: .*nade"):
            model.log_prob(x)
    if model.has("encode"):
        z = model.encode(x)
        assert z.dim() == 2 and z.shape[0] == 6 and torch.isfinite(z).all()
    else:
        with pytest.raises(genlab.Unsupported):
            model.encode(x)
    if not model.has("translate"):
        with pytest.raises(genlab.Unsupported, match="no translate"):
            model.translate(x, {"to": "b"})


@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=IDS)
def test_save_load_gives_identical_outputs(name, settings, tmp_path):
    model = tiny(name, **settings)
    batch = tiny_batch(model)
    # Move away from the initialisation so a load that silently re-initialises is caught.
    for player in model.players:
        opt = torch.optim.Adam(model.parameters_for(player), lr=1e-2)
        loss, _ = model.loss(batch, player)
        loss.backward()
        opt.step()
    model.eval()
    model.save(tmp_path / "run")
    loaded = genlab.load(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.shape == model.shape
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    drawn = []
    for m in (model, loaded):
        torch.manual_seed(3)
        drawn.append(m.sample(4) if m.has("sample")
                     else m.translate(batch["x"][:4], translate_cond(m, 4)))
    assert torch.equal(drawn[0], drawn[1])
    if model.has("log_prob"):
        torch.manual_seed(4)
        a = model.log_prob(batch["x"])
        torch.manual_seed(4)
        b = loaded.log_prob(batch["x"])
        assert torch.allclose(a, b)


@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=IDS)
def test_wrong_shape_is_a_clear_error(name, settings):
    model = tiny(name, **settings)
    wrong = torch.zeros(2, 1, 5, 5)
    with pytest.raises(ValueError, match="expects images of shape"):
        model.loss({"x": wrong}, model.players[0])
    if model.has("log_prob"):
        with pytest.raises(ValueError, match="expects images of shape"):
            model.log_prob(wrong)


def test_create_rejects_unknown_names_and_settings():
    with pytest.raises(KeyError, match="unknown model"):
        genlab.create("nope")
    with pytest.raises(TypeError, match="has no setting bogus"):
        genlab.create("nade", shape=(1, 4, 4), bogus=1)


def test_capabilities_follow_what_a_subclass_defines():
    class Coin(GenerativeModel):
        """One Bernoulli(1/2) per pixel: only log_prob is defined."""

        name = "coin"

        def log_prob(self, x):
            return torch.full((x.shape[0],), -self.n_pixels * math.log(2))

    assert Coin.has("log_prob") and not Coin.has("encode") and not Coin.has("sample")
    coin = Coin((1, 2, 2), None)
    loss, logs = coin.loss({"x": torch.zeros(3, 1, 2, 2)}, "model")  # the base loss is the NLL
    assert float(loss) == pytest.approx(4 * math.log(2)) and logs["nll"] == pytest.approx(
        float(loss)
    )


@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=IDS)
def test_log_prob_and_encode_are_detached_outside_training(name, settings, tmp_path):
    """The rule of GenerativeModel: in eval mode (what genlab.load returns) scores and features
    carry no autograd graph; in training mode log_prob is differentiable, so the loss works."""
    model = tiny(name, **settings)
    caps = [c for c in ("log_prob", "encode", "translate") if model.has(c)]
    assert caps, f"{name} has neither log_prob, encode nor translate: drop it from this test"
    x = tiny_batch(model, 4)["x"]
    args = {"translate": (translate_cond(model, 4),)}
    model.save(tmp_path / "run")
    for m in (model.eval(), genlab.load(tmp_path / "run")):
        for capability in caps:
            out = getattr(m, capability)(x, *args.get(capability, ()))
            assert not out.requires_grad and out.grad_fn is None, f"{name}.{capability}"
    if model.has("log_prob") and model.exact:  # exact log_prob is the training loss itself
        assert model.train().log_prob(x).requires_grad


def test_an_input_that_requires_grad_gets_gradients_in_eval_mode():
    model = tiny("nade").eval()
    x = tiny_batch(model, 3)["x"].requires_grad_()
    (grad,) = torch.autograd.grad(model.log_prob(x).sum(), x)
    assert grad.shape == x.shape and bool(grad.abs().sum() > 0)


def test_create_checks_setting_types_against_the_config():
    with pytest.raises(ValueError, match="hidden must be an integer, got 'abc'"):
        genlab.create("nade", shape=(1, 4, 4), hidden="abc")
    with pytest.raises(ValueError, match="order_agnostic must be true or false, got 1"):
        genlab.create("made", shape=(1, 4, 4), order_agnostic=1)
    made = genlab.create("made", shape=(1, 4, 4), hidden=[6, 5], masks=1)  # JSON gives lists
    assert made.config.hidden == (6, 5)


def test_create_docstring_lists_every_registered_model():
    for name, cls in genlab.MODELS.items():
        assert f"``{name}``" in genlab.create.__doc__
        assert cls.paper in genlab.create.__doc__
