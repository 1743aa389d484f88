"""DCGAN (Radford et al. 2015): the paper's architecture rules checked on the modules, shapes at
the sizes it is used on, the pooled-feature encoding, sampling statistics, and the protocol
checks again at a size where batch norm is present (the shared tiny 4x4 config has none;
test_devices runs bf16 and device checks on a 3x16x16 DCGAN)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import loss_added_by, one_step_per_player, r1_by_hand, tiny_batch
from torch import nn

import genlab
from genlab.data import synthetic
from genlab.train import fit

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.Upsample)


def make(shape=(1, 16, 16), seed=0, **settings):
    torch.manual_seed(seed)
    return genlab.create("dcgan", shape=shape, **{"latent": 6, "width": 4, **settings})


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_the_architecture_follows_the_papers_rules(shape):
    model = make(shape, width=8)
    kinds = [type(m) for m in model.modules()]
    assert not any(issubclass(k, POOLS) for k in kinds), "no pooling, no upsampling layers"
    assert nn.Linear not in kinds, "no fully connected layers"
    g = list(model.generator.net)
    g_convs = [m for m in g if isinstance(m, nn.ConvTranspose2d)]
    n = {28: 3, 32: 3, 64: 4}[shape[1]]  # stride-2 layers from 4x4 to the working size
    assert len(g_convs) == n + 1
    assert g_convs[0].kernel_size == (4, 4) and g_convs[0].in_channels == 6  # z -> 4x4
    assert all(c.stride == (2, 2) for c in g_convs[1:])
    assert g_convs[-1].out_channels == shape[0] and g[-1] is g_convs[-1], "no BN on G's output"
    for conv in g_convs[:-1]:  # every hidden layer: conv -> batch norm -> ReLU
        i = g.index(conv)
        assert isinstance(g[i + 1], nn.BatchNorm2d) and isinstance(g[i + 2], nn.ReLU)
    assert not any(isinstance(m, nn.LeakyReLU | nn.Tanh) for m in g)  # ReLU only; tanh after
    d = list(model.discriminator.body)
    d_convs = [m for m in d if isinstance(m, nn.Conv2d)]
    assert len(d_convs) == n and all(c.stride == (2, 2) for c in d_convs)
    assert d_convs[0].in_channels == shape[0]
    assert isinstance(d[1], nn.LeakyReLU), "no BN on D's input layer"
    for conv in d_convs[1:]:
        i = d.index(conv)
        assert isinstance(d[i + 1], nn.BatchNorm2d) and isinstance(d[i + 2], nn.LeakyReLU)
    assert all(m.negative_slope == 0.2 for m in d if isinstance(m, nn.LeakyReLU))
    assert not any(isinstance(m, nn.ReLU) for m in d)
    # The output is tanh of G's last layer: sample == (tanh(G(z)) + 1) / 2 for the same z.
    model.eval()
    torch.manual_seed(5)
    x = model.sample(3)
    torch.manual_seed(5)
    z = torch.rand(3, 6) * 2 - 1  # the paper's U(-1, 1)
    want = (torch.tanh(model.generator(z)) + 1) / 2
    assert torch.allclose(x, want, atol=1e-6)


def test_the_paper_preset_is_the_papers_64x64_network():
    model = genlab.create("dcgan", shape=(3, 64, 64), preset="paper")
    chans = [m.out_channels for m in model.generator.net if isinstance(m, nn.ConvTranspose2d)]
    assert chans == [1024, 512, 256, 128, 3]
    chans = [m.out_channels for m in model.discriminator.body if isinstance(m, nn.Conv2d)]
    assert chans == [128, 256, 512, 1024]
    assert model.optimizer_settings("g")["betas"] == (0.5, 0.999)
    train = genlab.MODELS["dcgan"].presets["paper"]["train"]
    assert train["batch_size"] == 128 and train["lr"] == 2e-4


def test_weights_start_from_n_0_002():
    model = genlab.create("dcgan", shape=(1, 28, 28), width=32)
    w = model.generator.net[3].weight.detach()  # 128 -> 64 channels, 131k weights
    assert abs(float(w.mean())) < 1e-3 and float(w.std()) == pytest.approx(0.02, rel=0.02)
    bn = model.generator.net[1]
    assert float(bn.weight.detach().mean()) == pytest.approx(1.0, abs=0.01) and not bn.bias.any()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 28, 28), (1, 32, 32), (3, 32, 32),
                                   (1, 64, 64), (3, 64, 64)])
def test_shapes_and_the_encoding_size(shape):
    model = make(shape, width=4).eval()
    x = model.sample(2)
    assert x.shape == (2, *shape) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert model.discriminate(x).shape == (2,)
    # Each of D's n layers (4, 8, 16, ... channels) max-pooled to 4x4.
    n = {28: 3, 32: 3, 64: 4}[shape[1]]
    assert model.encode(x).shape == (2, sum(4 * 2**i for i in range(n)) * 16)


def test_encode_is_every_layer_max_pooled_to_4x4():
    model = make((3, 28, 28), seed=1).eval()
    x = tiny_batch(model, 3)["x"]
    # By hand: pad 28 -> 32 with black (-1), run D's layers, pool each activated map with a
    # kernel of (side / 4).
    y = F.pad(x * 2 - 1, (2, 2, 2, 2), value=-1.0)
    want = []
    for layer in model.discriminator.body:
        y = layer(y)
        if isinstance(layer, nn.LeakyReLU):
            k = y.shape[-1] // 4
            want.append(F.max_pool2d(y, k).flatten(1))
    assert [w.shape[1] for w in want] == [4 * 16, 8 * 16, 16 * 16]
    assert torch.allclose(model.encode(x), torch.cat(want, 1))
    assert torch.allclose(model.discriminate(x), model.discriminator(x * 2 - 1))


def test_running_statistics_sample_each_image_from_its_own_z():
    model = make().eval()
    torch.manual_seed(2)
    z = model.noise(8, torch.device("cpu"))
    assert float(z.min()) >= -1 and float(z.max()) <= 1 and float(z.min()) < -0.5
    both = model.generate(z)
    assert torch.allclose(both[:1], model.generate(z[:1]), atol=1e-6)
    assert make(noise="normal").noise(10000, torch.device("cpu")).abs().max() > 1


def test_batch_statistics_sample_with_the_batch_and_keep_the_running_ones():
    model = make(sample_stats="batch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    x = model.sample(6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"sampling changed {k}"
    # The same z through train-mode batch norm (on a copy, whose running stats may move).
    train = copy.deepcopy(model.generator).train()
    torch.manual_seed(3)
    z = model.noise(6, torch.device("cpu"))
    assert torch.allclose(x, (torch.tanh(train(z)) + 1) / 2, atol=1e-6)
    running = (torch.tanh(model.generator(z)) + 1) / 2  # eval mode: running statistics
    assert not torch.allclose(x, running, atol=1e-3)


def test_settings_are_checked():
    for bad in ({"noise": "gaussian"}, {"sample_stats": "mean"}, {"objective": "wgan"},
                {"objective": "bce"}, {"width": 0}):
        with pytest.raises(ValueError):
            make(**bad)


@pytest.mark.parametrize("objective", ["ns", "hinge", "lsgan"])
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 10)])
def test_one_step_per_player_changes_only_its_parameters_with_batch_norm(objective, shape):
    model = make(shape, objective=objective)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.discriminator.modules())
    one_step_per_player(model, tiny_batch(model))


def test_save_load_and_resume_are_exact_with_batch_norm(tmp_path):
    data = synthetic("bars", n=64, shape=(1, 16, 16), seed=1)
    kw = dict(steps=12, batch_size=8, ckpt_every=6, log_every=1, progress=False, seed=5,
              lr=1e-2, sample_every=0)
    full = make(ema=0.9)
    fit(full, data, out=tmp_path / "full", **kw)
    half = make(ema=0.9)
    fit(half, data, out=tmp_path / "run", **{**kw, "steps": 6})
    resumed = make(ema=0.9, seed=7)
    fit(resumed, data, out=tmp_path / "run", resume=True, **kw)
    state = resumed.state_dict()
    assert any("running_var" in k for k in state)
    for k, v in full.state_dict().items():
        assert torch.equal(v, state[k]), k
    loaded = genlab.load(tmp_path / "run")
    torch.manual_seed(1)
    a = resumed.eval().sample(4)
    torch.manual_seed(1)
    assert torch.equal(a, loaded.sample(4))


def test_builds_on_the_meta_device_with_batch_norm():
    with torch.device("meta"):
        skeleton = genlab.create("dcgan", shape=(3, 16, 16), width=4)
    real = genlab.create("dcgan", shape=(3, 16, 16), width=4).state_dict()
    fake = skeleton.state_dict()
    assert list(fake) == list(real)
    assert all(t.is_meta and t.shape == real[k].shape for k, t in fake.items())


def test_r1_adds_gamma_over_two_times_the_real_gradient_norm():
    """D's loss with r1 = gamma is the loss without it plus gamma / 2 E||grad_x D(x)||^2 on
    the real batch (same weights, same noise); the step still changes only D; r1 < 0 refused."""
    model = make((3, 16, 16), r1=0.0)
    batch = tiny_batch(model)
    added = loss_added_by(model, batch, "d", seed=3, r1=4.0)
    penalty = r1_by_hand(model.discriminator, batch["x"] * 2 - 1)
    assert penalty > 0
    torch.testing.assert_close(added, 2.0 * penalty, rtol=1e-4, atol=1e-6)
    one_step_per_player(model, batch)
    with pytest.raises(ValueError, match="r1"):
        make(r1=-1.0)
