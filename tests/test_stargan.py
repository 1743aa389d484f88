"""StarGAN: the attribute tiling, its three losses, the critic schedule and translation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import tiny, tiny_batch

import genlab
from genlab.data.attributes import ATTRIBUTE_NAMES, parse_attrs
from genlab.models.stargan import (
    attribute_accuracy,
    classification_loss,
    digit_preservation,
    tile_attributes,
)


def test_attribute_vector_is_one_hot_per_attribute_and_tiled():
    attrs = torch.tensor([[2, 0], [0, 1]])
    c = tile_attributes(attrs, (3, 2), 2, 4)
    assert c.shape == (2, 5, 2, 4)
    want = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.float32)
    for i in range(2):
        for j in range(4):
            assert torch.equal(c[:, :, i % 2, j], want)


def test_classification_loss_is_the_cross_entropy_of_the_true_attrs():
    logits = torch.randn(4, 5)
    attrs = torch.tensor([[0, 1], [2, 0], [1, 1], [2, 1]])
    want = 0.0
    for b in range(4):  # by hand: -log softmax of the true value, per attribute, mean over b
        want += -torch.log_softmax(logits[b, :3], 0)[attrs[b, 0]] / 4
        want += -torch.log_softmax(logits[b, 3:], 0)[attrs[b, 1]] / 4
    assert float(classification_loss(logits, attrs, (3, 2))) == pytest.approx(float(want), 1e-5)


def test_d_loss_contains_the_classifier_loss_on_real_images_with_true_attrs():
    model = tiny("stargan", (3, 4, 4))
    model.config.lambda_gp = 0.0
    batch = tiny_batch(model, 6)
    torch.manual_seed(0)
    _, logs = model.loss(batch, "d")
    _, logits = model.discriminator(model._inside(batch["x"]))
    true = batch["attrs"][:, list(model.columns)]
    want = float(classification_loss(logits, true, model.sizes).detach())
    assert logs["d_cls"] == pytest.approx(want, 1e-5)


def test_the_generator_steps_after_every_fifth_critic_step():
    model = tiny("stargan")
    assert [model.players_at(s) for s in range(10)] == [("d",)] * 4 + [("d", "g")] + \
        [("d",)] * 4 + [("d", "g")]


def test_reconstruction_loss_is_zero_when_g_is_the_identity():
    model = tiny("stargan", (3, 4, 4))
    x = torch.rand(3, 3, 4, 4) * 2 - 1
    target, original = model.random_targets(3, x.device), model.random_targets(3, x.device)

    def identity(image, c):
        return image

    assert float(model.reconstruction_loss(identity, identity(x, None), x, original)) == 0.0
    # and not zero for a generator that changes the image
    assert float(model.reconstruction_loss(lambda i, c: i + 0.5, x, x, original)) == \
        pytest.approx(0.5)
    assert target.shape == (3, 3)


def test_translate_keeps_shape_and_uses_cond():
    model = tiny("stargan", (3, 4, 4)).eval()
    x = tiny_batch(model, 2)["x"]
    red = model.translate(x, {"attrs": parse_attrs("colour=red", 2)})
    blue = model.translate(x, {"attrs": parse_attrs("colour=blue", 2)})
    assert red.shape == x.shape and 0 <= float(red.min()) and float(red.max()) <= 1
    assert not torch.equal(red, blue)
    # an attribute the model does not translate (background) changes nothing
    grey = model.translate(x, {"attrs": parse_attrs("colour=red,background=grey", 2)})
    assert torch.equal(red, grey)
    with pytest.raises(ValueError, match="must be"):
        model.translate(x, {"attrs": torch.zeros(2, 3, dtype=torch.long)})


def test_the_attributes_translated_are_a_setting():
    model = genlab.create("stargan", shape=(3, 4, 4), width=4, blocks=1, d_width=4,
                          attributes=list(ATTRIBUTE_NAMES))
    assert model.sizes == (8, 4, 3, 3, 3, 2)
    with pytest.raises(ValueError, match="attributes must be"):
        genlab.create("stargan", shape=(3, 4, 4), attributes=["hue"])


def test_masked_generator_copies_the_input_where_its_attention_is_zero():
    model = tiny("stargan", (3, 4, 4)).eval()
    g = model.generator
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    c = torch.rand(2, sum(model.sizes), 4, 4)
    with torch.no_grad():
        g.out.weight.zero_()
        g.out.bias.copy_(torch.tensor([0.3, -0.2, 0.1, -1e4]))  # colour channels, attention
        assert torch.allclose(g(x, c), x)  # attention 0: the input itself, whatever c
        g.out.bias[-1] = 1e4  # attention 1: the painted colour, tanh of the biases
        want = torch.tanh(torch.tensor([0.3, -0.2, 0.1]))[None, :, None, None].expand_as(x)
        assert torch.allclose(g(x, c), want)


def test_batch_norm_passes_a_flat_colour_that_instance_norm_erases():
    # A flat image in two colours: after instance norm the first layer's maps of a red and of
    # a blue version differ only by sign, whereas batch norm (mixing both in one batch) keeps
    # them apart (why the cpu preset's G uses batch norm).
    from genlab.models.stargan import _norm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 1)
    with torch.no_grad():  # large weights, so that the norms' epsilon does not blur the point
        conv.weight.mul_(100)
    mask = (torch.rand(1, 1, 6, 6) > 0.5).float()
    red, blue = torch.tensor([1.0, -1, -1]), torch.tensor([-1.0, -1, 1])
    x = torch.cat([(c[:, None, None] * mask + (1 - mask) * -1) for c in (red, blue)])
    for kind, apart in (("instance", False), ("batch", True)):
        h = _norm(kind, 8).train()(conv(x))
        same = torch.allclose(h[0].abs(), h[1].abs(), atol=1e-3)
        assert same != apart, kind
    with pytest.raises(ValueError, match="norm must be"):
        genlab.create("stargan", shape=(3, 4, 4), norm="layer")


def test_measures_on_hand_made_predictions():
    assert attribute_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 0.5
    assert digit_preservation(torch.tensor([7, 7, 1]), torch.tensor([7, 1, 1])) == \
        pytest.approx(2 / 3)


def test_translate_command_on_a_tiny_run(tmp_path):
    from genlab.data.attributes import ATTRIBUTES
    from genlab.data.dataset import Dataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    attrs = torch.stack([torch.randint(0, len(v), (16,), generator=g)
                         for v in ATTRIBUTES.values()], 1)
    model = genlab.create("stargan", shape=(3, 32, 32), width=4, blocks=1, d_width=4)
    genlab.fit(model, Dataset(x, fields={"attrs": attrs}), steps=2, batch_size=4,
               out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "translations.png").exists()
    out = tmp_path / "out"
    code = ("import sys; from genlab.cli import main; sys.argv = ['genlab'] + sys.argv[1:]; "
            "main()")
    done = subprocess.run(
        [sys.executable, "-c", code, "translate", str(tmp_path / "run"), "mnist-attrs",
         "--attrs", "colour=red", "--attrs", "rotation=30", "--limit", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "grid.png").exists() and (out / "0002-1.png").exists()
