"""Progressive growing of GANs (Karras et al. 2018, arXiv:1710.10196).

Training a GAN straight at a high resolution asks D and G to find large-scale structure and
fine detail at once, and the gradients that tell G apart from the data are easy to get lost in
the detail. The paper grows both networks instead: training starts at 4x4, and each time the
resolution doubles a new block is added to G's output end and, mirrored, to D's input end.
A new block is faded in: for ``phase`` images its output is blended with alpha rising from 0 to
1 into the old path (G: the previous level's to-RGB, upsampled; D: the image average-pooled
into the previous level's from-RGB), then the level trains stable for another ``phase``
images. The real images D sees are faded the same way (downsampled to the current resolution,
and during a fade blended with their upsampled half-resolution version), so D always compares
like with like. The schedule is ``genlab.models.adversarial.growth`` of the number of images
shown, step * batch size: a pure function of the step, so a run killed mid-fade resumes on it.

The paper's other stabilisers, all here:

- no batch norm; *pixel-wise feature normalisation* in G after every convolution (each pixel's
  feature vector rescaled to unit root mean square), which keeps G's and D's magnitudes from
  escalating against each other;
- a *minibatch standard deviation* feature map before D's last block: D sees how varied the
  batch is, so G is pushed to keep its samples varied (against mode collapse);
- an *equalised learning rate*: weights drawn from N(0, 1) and scaled at run time by He's
  constant sqrt(2 / fan_in) (``genlab.nn.EqualizedConv2d`` / ``EqualizedLinear``), so Adam's
  scale-free updates move every layer equally fast;
- the WGAN-GP loss (Gulrajani et al. 2017; lambda 10, one critic step per generator step) with
  a small *drift* term 0.001 * D(x)^2 that keeps the critic's output near zero;
- Adam with lr 0.001 and betas (0, 0.99), and samples from an exponential moving average of
  G's weights (decay 0.999).

Images are grey levels or colours in [0, 1], any number of channels, mapped to [-1, 1]. The
networks work on the power-of-two square ``working_size`` of the image (MNIST's 28x28 is padded
with black to 32x32); samples are cropped back. Before growth is complete, samples are drawn at
the current level and upsampled to the full size. G's output is linear, as in the paper;
samples are clamped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.images import save_grid
from genlab.models.adversarial import Adversarial, d_loss, g_loss, gradient_penalty, growth
from genlab.nn import (
    EqualizedConv2d,
    EqualizedLinear,
    crop_to,
    frozen,
    minibatch_std,
    pad_to,
    pixel_norm,
    working_size,
)


@dataclass
class ProGANConfig:
    latent: int = 512
    # Feature maps at resolution r: min(max_channels, base // r): the paper's 512 up to 32x32,
    # then halving with each doubling (256 at 64x64 ... 16 at 1024x1024).
    max_channels: int = 512
    base: int = 16384
    phase: int = 800_000  # images per phase: the first level, then each fade and each stable
    slope: float = 0.2  # LeakyReLU in both networks
    gp: float = 10.0  # lambda of the gradient penalty
    drift: float = 0.001  # epsilon_drift: the critic's output on real images is pulled to 0
    ema: float = 0.999  # decay of G's moving average, used for sampling (0: off)


def _up(x: Tensor, factor: int = 2) -> Tensor:
    """(B, C, r, r) -> (B, C, factor*r, factor*r): nearest-neighbour upsampling."""
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


class _Generator(nn.Module):
    """z (B, latent) at level l with fade alpha -> (B, C, 4 * 2**l, 4 * 2**l), linear output."""

    def __init__(self, latent: int, channels: list[int], out: int, slope: float) -> None:
        super().__init__()
        self.slope = slope
        c0 = channels[0]
        self.dense = EqualizedLinear(latent, c0 * 16)  # z -> the 4x4 map ("conv 4x4" of z)
        self.first = EqualizedConv2d(c0, c0, 3)
        self.blocks = nn.ModuleList(  # level l >= 1: upsample, conv 3x3, conv 3x3
            nn.ModuleList([EqualizedConv2d(a, b, 3), EqualizedConv2d(b, b, 3)])
            for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        # One to-RGB (1x1, linear: gain 1) per level: each level's map is an image by itself.
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, out, 1, gain=1.0) for c in channels)

    def act(self, x: Tensor) -> Tensor:
        return pixel_norm(F.leaky_relu(x, self.slope))

    def block(self, level: int, h: Tensor) -> Tensor:
        """The map at level - 1 (B, c, r, r) -> the map at ``level`` (B, c', 2r, 2r)."""
        first, second = self.blocks[level - 1]
        return self.act(second(self.act(first(_up(h)))))

    def forward(self, z: Tensor, level: int, alpha: float) -> Tensor:
        h = self.dense(pixel_norm(z)).view(z.shape[0], -1, 4, 4)  # z on the unit sphere first
        h = self.act(self.first(self.act(h)))  # (B, c0, 4, 4)
        for lv in range(1, level):
            h = self.block(lv, h)
        if level == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[level](self.block(level, h))  # (B, C, r, r)
        if alpha >= 1:
            return new
        old = _up(self.to_rgb[level - 1](h))  # the previous level's image, upsampled
        return torch.lerp(old, new, alpha)  # alpha 0: exactly the previous level's output


class _Discriminator(nn.Module):
    """x (B, C, r, r) at level l with fade alpha -> features (B, c0) -> one score (B,)."""

    def __init__(self, channels: list[int], inp: int, slope: float) -> None:
        super().__init__()
        self.slope = slope
        c0 = channels[0]
        self.from_rgb = nn.ModuleList(EqualizedConv2d(inp, c, 1) for c in channels)
        self.blocks = nn.ModuleList(  # level l >= 1: conv 3x3, conv 3x3, average-pool
            nn.ModuleList([EqualizedConv2d(b, b, 3), EqualizedConv2d(b, a, 3)])
            for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.last = EqualizedConv2d(c0 + 1, c0, 3)  # after the minibatch-std map
        self.dense = EqualizedLinear(c0 * 16, c0)  # the paper's 4x4 "valid" convolution
        self.head = EqualizedLinear(c0, 1, gain=1.0)

    def act(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.slope)

    def features(self, x: Tensor, level: int, alpha: float) -> Tensor:
        h = self.act(self.from_rgb[level](x))  # (B, c_l, r, r)
        for lv in range(level, 0, -1):
            for conv in self.blocks[lv - 1]:
                h = self.act(conv(h))
            h = F.avg_pool2d(h, 2)
            if lv == level and alpha < 1:  # mirrored fade: the image into the old from-RGB
                old = self.act(self.from_rgb[level - 1](F.avg_pool2d(x, 2)))
                h = torch.lerp(old, h, alpha)
        h = self.act(self.last(minibatch_std(h)))  # (B, c0, 4, 4)
        return self.act(self.dense(h.flatten(1)))  # (B, c0)

    def forward(self, x: Tensor, level: int, alpha: float) -> Tensor:
        return self.head(self.features(x, level, alpha)).squeeze(-1)  # (B,)


class ProGAN(Adversarial):
    """Progressive GAN on images in [0, 1] with any number of channels."""

    name = "progan"
    paper = ("Karras et al. 2018, Progressive Growing of GANs for Improved Quality, Stability, "
             "and Variation (arXiv:1710.10196)")
    Config = ProGANConfig
    data_kind = "grey"
    betas = (0.0, 0.99)  # the paper's Adam: no first-moment momentum against a moving opponent
    presets = {
        # MNIST padded to 32x32 (4 levels: 4, 8, 16, 32) on one idle CPU core in under 15
        # minutes: 48, 48, 32, 16 feature maps, phases of 8k images (4x4 for 8k, then per level
        # an 8k-image fade and 8k stable), 6k more at 32x32: 62k images = 3875 steps of 16.
        # The average of G decays at 0.99, not 0.999: with 500 steps per phase a 1000-step
        # horizon would still hold the newest block's first weights at the end.
        # A growing model ends with its last weights, not the best-validating ones: an earlier
        # checkpoint is a smaller model whose upsampled images may score better for a while.
        "cpu": {
            "model": {"latent": 128, "max_channels": 48, "base": 512, "phase": 8000,
                      "ema": 0.99},
            "train": {"batch_size": 16, "lr": 1e-3, "steps": 3875, "binarize": None,
                      "restore_best": False},
        },
        # The paper: 512 latents and feature maps up to 32x32, 800k images per phase, Adam lr
        # 0.001 betas (0, 0.99), minibatch 16 (its size up to 128x128; it shrank the batch at
        # higher resolutions to fit memory, which one batch size here cannot do). On a 32x32
        # working size: 800k at 4x4, 1.6M per later level (fade + stable), 5.6M images in all.
        "paper": {
            "model": {},
            "train": {"batch_size": 16, "lr": 1e-3, "steps": 350_000, "binarize": None,
                      "restore_best": False},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: ProGANConfig | None = None) -> None:
        config = config if config is not None else ProGANConfig()
        super().__init__(shape, config)
        if min(config.latent, config.max_channels, config.base) < 1 or config.phase < 0:
            raise ValueError("latent, max_channels and base must be positive, phase >= 0")
        c, h, w = self.shape
        self.side = working_size(h, w)  # 4 * 2**(levels - 1)
        self.levels = self.side.bit_length() - 2  # 4x4 is level 0
        channels = [max(1, min(config.max_channels, config.base // (4 << lv)))
                    for lv in range(self.levels)]
        self.generator = _Generator(config.latent, channels, c, config.slope)
        self.discriminator = _Discriminator(channels, c, config.slope)
        # Images shown so far, saved with the weights: a loaded model samples at its level.
        self.register_buffer("shown", torch.zeros((), dtype=torch.long))
        self._step: int | None = None
        self.keep_average()

    # ---- the growth schedule ------------------------------------------------------------------
    def on_step(self, step: int) -> None:
        self._step = step

    def stage(self, images: int | None = None) -> tuple[int, float]:
        """(level, alpha) after ``images`` images (default: those shown so far)."""
        shown = int(self.shown) if images is None else images
        return growth(shown, int(self.config.phase), self.levels)

    def real(self, x: Tensor, level: int, alpha: float) -> Tensor:
        """Data (B, C, H, W) in [0, 1] -> (B, C, r, r) in [-1, 1] as D sees it at this stage:
        padded, downsampled to the level's side r, faded like G's output during a fade."""
        x = pad_to(x * 2 - 1, self.side, -1.0)  # (B, C, S, S)
        r = 4 << level
        y = F.avg_pool2d(x, self.side // r) if r < self.side else x
        if level > 0 and alpha < 1:
            y = torch.lerp(_up(F.avg_pool2d(y, 2)), y, alpha)
        return y

    def images(self, z: Tensor, level: int, alpha: float, net: nn.Module | None = None) -> Tensor:
        """G's (default: the sampler's) images at a stage, upsampled to full size, in [0, 1]."""
        net = self.sampler if net is None else net
        y = net(z, level, alpha)  # (n, C, r, r)
        y = _up(y, self.side // y.shape[-1])  # (n, C, S, S)
        return ((crop_to(y, *self.shape[1:]) + 1) / 2).clamp(0, 1)

    # ---- the training protocol (players "d" and "g"; Adversarial) ---------------------------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        b = x.shape[0]
        if self._step is not None:  # in training: images shown = step * batch size
            images = self._step * b
            self.shown.fill_(images)
            level, alpha = self.stage(images)
        else:
            level, alpha = self.stage()
        z = torch.randn(b, self.config.latent, device=x.device)  # (B, latent)
        logs = {"level": float(level), "alpha": float(alpha)}
        if player == "d":
            def critic(t: Tensor) -> Tensor:
                return self.discriminator(t, level, alpha)

            with torch.no_grad():
                fake = self.generator(z, level, alpha)  # (B, C, r, r)
            real = self.real(x, level, alpha)  # (B, C, r, r)
            real_score, fake_score = critic(real), critic(fake)  # (B,), (B,)
            wasserstein = d_loss("wgan", real_score, fake_score)
            penalty = gradient_penalty(critic, real, fake)
            drift = real_score.float().pow(2).mean()
            loss = wasserstein + self.config.gp * penalty + self.config.drift * drift
            return loss, {**logs, "d_wgan": float(wasserstein.detach()),
                          "d_gp": float(penalty.detach())}
        if player == "g":
            with frozen(self.discriminator):  # G's step must not touch D's weights
                fake_score = self.discriminator(self.generator(z, level, alpha), level, alpha)
            return g_loss("wgan", fake_score), logs
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1], from the averaged G at the current level."""
        z = torch.randn(n, self.config.latent, device=self.device)  # (n, latent)
        return self.images(z, *self.stage())

    @torch.no_grad()
    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """One grid per resolution reached, ``grid-4x4.png`` ...: the same 64 latents through
        the averaged G at each level (alpha 1 below the current level), upsampled to full size."""
        level, alpha = self.stage()
        z = torch.randn(64, self.config.latent, device=self.device)  # (64, latent)
        paths = []
        for lv in range(level + 1):
            r = 4 << lv
            x = self.images(z, lv, alpha if lv == level else 1.0)
            paths.append(save_grid(x.float().cpu(), Path(folder) / f"grid-{r}x{r}.png"))
        return paths

    # ---- capabilities ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """D's last hidden layer (B, c0) at the current stage."""
        self.check_input(x)
        level, alpha = self.stage()
        return self.discriminator.features(self.real(x, level, alpha), level, alpha)

    @torch.no_grad()
    def discriminate(self, x: Tensor) -> Tensor:
        """D's score (B,) for images ``x`` in [0, 1] at the current stage: a Wasserstein
        critic's value (higher: more real), not a likelihood."""
        self.check_input(x)
        level, alpha = self.stage()
        return self.discriminator(self.real(x, level, alpha), level, alpha)
