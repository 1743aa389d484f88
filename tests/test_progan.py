"""Progressive GAN: the growth schedule, the paper's layers, fades, and its losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

import genlab
from genlab.models.adversarial import gradient_penalty, growth
from genlab.nn import EqualizedConv2d, EqualizedLinear, minibatch_std, pixel_norm


def build(shape=(1, 16, 16), **settings):
    torch.manual_seed(0)
    return genlab.create("progan", shape=shape, **{**TINY["progan"], **settings})


def test_growth_levels_and_alpha_across_a_fade():
    # phase 100, three levels (4x4, 8x8, 16x16): 4x4 for 100 images, then fade + stable each.
    want = {0: (0, 1.0), 99: (0, 1.0), 100: (1, 0.0), 150: (1, 0.5), 175: (1, 0.75),
            200: (1, 1.0), 299: (1, 1.0), 300: (2, 0.0), 325: (2, 0.25), 400: (2, 1.0),
            10**7: (2, 1.0)}
    for images, (level, alpha) in want.items():
        assert growth(images, 100, 3) == (level, pytest.approx(alpha)), images


def test_the_model_grows_with_step_times_batch_size():
    model = build()  # 16x16: levels 4, 8, 16; phase 96 images
    assert model.levels == 3
    x = torch.rand(8, 1, 16, 16)
    seen = []
    for step in (0, 11, 12, 18, 23, 24, 36, 42, 1000):
        model.on_step(step)
        _, logs = model.loss({"x": x}, "g")
        seen.append((logs["level"], logs["alpha"]))
        assert int(model.shown) == step * 8
    assert seen == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 88 / 96), (1, 1.0), (2, 0.0),
                    (2, 0.5), (2, 1.0)]


def test_equalized_layers_scale_their_weights_by_he_constant():
    torch.manual_seed(0)
    lin = EqualizedLinear(50, 7)
    x = torch.randn(3, 50)
    assert torch.allclose(lin(x), x @ (lin.weight * math.sqrt(2 / 50)).T + lin.bias, atol=1e-6)
    conv = EqualizedConv2d(3, 5, 3)
    with torch.no_grad():
        conv.bias.normal_()
    img = torch.randn(2, 3, 6, 6)
    want = F.conv2d(img, conv.weight * math.sqrt(2 / 27), conv.bias, padding=1)
    assert torch.allclose(conv(img), want, atol=1e-5)
    # Stored weights are N(0, 1), biases 0: the scale lives in the forward pass.
    big = EqualizedConv2d(64, 64, 3)
    assert abs(float(big.weight.detach().std()) - 1) < 0.02
    assert not big.bias.detach().any()


def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = torch.randn(4, 6, 3, 5) * torch.rand(4, 1, 3, 5) * 9
    y = pixel_norm(x)
    assert torch.allclose(y.pow(2).mean(1), torch.ones(4, 3, 5), atol=1e-5)
    assert torch.allclose(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))


def test_minibatch_std_adds_one_channel_with_the_batch_deviation():
    # Two images, one channel, 1x2 pixels: [0, 0] and [2, 4] -> deviations 1 and 2, mean 1.5.
    x = torch.tensor([[[[0.0, 0.0]]], [[[2.0, 4.0]]]])
    y = minibatch_std(x)
    assert y.shape == (2, 2, 1, 2)
    assert torch.equal(y[:, :1], x)
    assert torch.allclose(y[:, 1], torch.full((2, 1, 2), 1.5))


def test_fade_in_at_alpha_zero_is_the_previous_level_exactly():
    model = build()
    z = torch.randn(5, model.config.latent)
    for level in (1, 2):
        old = model.generator(z, level - 1, 1.0)
        faded = model.generator(z, level, 0.0)
        assert torch.equal(faded, F.interpolate(old, scale_factor=2, mode="nearest"))
        x = torch.randn(5, 1, 4 << level, 4 << level)
        assert torch.equal(model.discriminator(x, level, 0.0),
                           model.discriminator(F.avg_pool2d(x, 2), level - 1, 1.0))
        # ... and halfway, neither end.
        half = model.generator(z, level, 0.5)
        assert not torch.allclose(half, model.generator(z, level, 1.0))
    # The real images D sees fade the same way.
    x = torch.rand(5, 1, 16, 16)
    up = F.interpolate(model.real(x, 1, 1.0), scale_factor=2, mode="nearest")
    assert torch.allclose(model.real(x, 2, 0.0), up, atol=1e-6)
    assert torch.equal(model.real(x, 2, 1.0), x * 2 - 1)


def test_samples_before_full_growth_are_upsampled_and_cropped():
    model = build((3, 14, 14))  # padded to 16x16
    model.on_step(12)  # 96 images: the 8x8 level starts fading in
    model.loss({"x": torch.rand(8, 3, 14, 14)}, "g")
    model.on_step(24)  # 192 images: 8x8, stable
    model.loss({"x": torch.rand(8, 3, 14, 14)}, "g")
    assert model.stage() == (1, 1.0)
    x = model.sample(4)
    assert x.shape == (4, 3, 14, 14)
    # 16x16 made of 2x2 blocks, cropped by one pixel on each side: blocks start at odd rows.
    inner = x[..., 1:13, 1:13]
    assert torch.equal(inner[..., ::2, ::2], inner[..., 1::2, 1::2])


def test_d_loss_is_wgan_gp_with_drift():
    model = build()
    x = torch.rand(8, 1, 16, 16)
    torch.manual_seed(7)
    loss, _ = model.loss({"x": x}, "d")
    torch.manual_seed(7)
    z = torch.randn(8, model.config.latent)
    fake = model.generator(z, 0, 1.0)
    real = F.avg_pool2d(x * 2 - 1, 4)

    def critic(t):
        return model.discriminator(t, 0, 1.0)

    r, f = critic(real), critic(fake)
    want = f.mean() - r.mean() + 10 * gradient_penalty(critic, real, fake) + 0.001 * (r**2).mean()
    assert torch.allclose(loss, want, atol=1e-5)


def test_paper_settings():
    model = genlab.create("progan", shape=(1, 32, 32))
    assert model.optimizer_settings("d") == {"betas": (0.0, 0.99)}
    assert model.config.ema == 0.999 and model.config.gp == 10 and model.config.drift == 0.001
    assert model.config.phase == 800_000
    widths = [m.weight.shape[0] for m in model.generator.to_rgb]
    assert model.levels == 4 and model.generator.dense.weight.shape == (512 * 16, 512)
    assert [b[1].weight.shape[0] for b in model.generator.blocks] == [512] * 3 and widths == [1] * 4
    paper = genlab.MODELS["progan"].presets["paper"]["train"]
    assert paper["lr"] == 1e-3 and paper["batch_size"] == 16
    assert paper["steps"] * 16 == 7 * 800_000  # 4x4, then fade + stable for 8, 16, 32


def test_pictures_one_grid_per_resolution_reached(tmp_path):
    model = build()
    model.on_step(30)  # 240 images: the 8x8 level, stable
    model.loss({"x": torch.rand(8, 1, 16, 16)}, "g")
    model.eval()
    paths = model.pictures(tmp_path, None)
    assert [p.name for p in paths] == ["grid-4x4.png", "grid-8x8.png"]
    assert all(p.exists() for p in paths)
