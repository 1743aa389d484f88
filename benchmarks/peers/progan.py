"""The progressive GAN at its final resolution, written straightforwardly: a ``Generator`` and a
``Critic`` module of ``nn.Sequential`` blocks, one Adam(1e-3, betas 0, 0.99) per network, the
WGAN-GP loop with the drift term (lambda 10, epsilon_drift 0.001) and one critic step then one
generator step per iteration. genlab's ``cpu`` preset (latent 128; 48, 48, 32, 16 feature maps
at 4x4, 8x8, 16x16, 32x32) on MNIST padded with black to 1x32x32:

- G: z pixel-normalised, an equalised linear layer to 48 x 4x4, then a 3x3 convolution; per
  level up to 32x32 nearest upsampling and two 3x3 convolutions; LeakyReLU 0.2 and pixel norm
  after every layer, a linear 1x1 to-RGB convolution at the end;
- D: a 1x1 from-RGB convolution, per level two 3x3 convolutions and 2x2 average pooling down
  to 4x4, the minibatch standard deviation as one more map, a 3x3 convolution, an equalised
  linear layer on the 4x4 map (the paper's 4x4 "valid" convolution) and a linear one to the
  score; LeakyReLU 0.2 throughout, no normalisation;
- equalised learning rate: weights from N(0, 1), zero biases, and each layer's input scaled by
  He's constant gain / sqrt(fan_in) (sqrt 2, and 1 for the to-RGB and score layers) at run
  time, the same function as scaling the weight.

A growing model keeps a to-RGB and a from-RGB layer for every resolution; after growth only
the 32x32 ones are used, and the others take no gradient (in either implementation): they are
kept so the two sides hold the same parameters. genlab's model is put at the end of growth by
``phase = 0``, for which ``growth`` gives the last level with alpha 1 from step 0 (the harness
steps it from step 0, which with the preset's phase would be 4x4). Its moving average of G is
off (``ema = 0``): the harness never calls ``after_step``, which updates it, and the peer has
none. ProGAN's ``players_at`` is the default, both players every step, as here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GENLAB = ("progan", {"latent": 128, "max_channels": 48, "base": 512, "phase": 0, "ema": 0.0})
SHAPE = (1, 28, 28)
LATENT = 128
CHANNELS = (48, 48, 32, 16)  # feature maps at 4x4, 8x8, 16x16, 32x32


class WSConv2d(nn.Module):
    """nn.Conv2d ('same' padding) with the equalised learning rate."""

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = 2**0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        nn.init.normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = gain / (cin * kernel**2) ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x * self.scale)


class WSLinear(nn.Module):
    """nn.Linear with the equalised learning rate."""

    def __init__(self, cin: int, cout: int, gain: float = 2**0.5) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        nn.init.normal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.scale = gain / cin**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.scale)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()


def lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2)


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c0 = CHANNELS[0]
        self.dense = WSLinear(LATENT, c0 * 16)
        self.first = nn.Sequential(lrelu(), PixelNorm(), WSConv2d(c0, c0, 3), lrelu(),
                                   PixelNorm())
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Upsample(scale_factor=2), WSConv2d(a, b, 3), lrelu(), PixelNorm(),
                          WSConv2d(b, b, 3), lrelu(), PixelNorm())
            for a, b in zip(CHANNELS[:-1], CHANNELS[1:], strict=True)])
        self.to_rgb = nn.ModuleList(WSConv2d(c, 1, 1, gain=1.0) for c in CHANNELS)
        self.norm = PixelNorm()

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, LATENT) -> (B, 1, 32, 32)
        h = self.dense(self.norm(z)).view(len(z), CHANNELS[0], 4, 4)
        return self.to_rgb[-1](self.blocks(self.first(h)))


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c0 = CHANNELS[0]
        self.from_rgb = nn.ModuleList(WSConv2d(1, c, 1) for c in CHANNELS)
        # Listed from 8x8 up, as genlab's (and G's) blocks; applied from 32x32 down.
        self.blocks = nn.ModuleList(
            nn.Sequential(WSConv2d(b, b, 3), lrelu(), WSConv2d(b, a, 3), lrelu(),
                          nn.AvgPool2d(2))
            for a, b in zip(CHANNELS[:-1], CHANNELS[1:], strict=True))
        self.last = WSConv2d(c0 + 1, c0, 3)
        self.dense = WSLinear(c0 * 16, c0)
        self.head = WSLinear(c0, 1, gain=1.0)
        self.act = lrelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 32, 32) -> (B,)
        h = self.act(self.from_rgb[-1](x))
        for block in reversed(self.blocks):
            h = block(h)  # (B, C, 4, 4) at the end
        # the minibatch standard deviation, averaged over features and pixels, as a map
        std = (h - h.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean()
        h = torch.cat([h, std.expand(len(h), 1, 4, 4)], 1)
        h = self.act(self.last(h)).flatten(1)
        return self.head(self.act(self.dense(h))).squeeze(1)


def reference_step(batch_size: int) -> Callable[[], None]:
    generator, critic = Generator(), Critic()
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.99))
    real = F.pad(torch.rand(batch_size, *SHAPE) * 2 - 1, (2, 2, 2, 2), value=-1.0)

    def step() -> None:
        # the critic: WGAN-GP with the drift term
        opt_d.zero_grad()
        with torch.no_grad():
            fake = generator(torch.randn(batch_size, LATENT))
        real_score, fake_score = critic(real), critic(fake)
        alpha = torch.rand(batch_size, 1, 1, 1)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss_d = (fake_score.mean() - real_score.mean() + 10 * penalty
                  + 0.001 * real_score.pow(2).mean())
        loss_d.backward()
        opt_d.step()
        # the generator
        opt_g.zero_grad()
        (-critic(generator(torch.randn(batch_size, LATENT))).mean()).backward()
        opt_g.step()  # D's weights got gradients too; its optimizer zeroes them first

    return step
