"""A straightforward PyTorch CycleGAN to time genlab's ``cyclegan`` against, written in the
style of the authors' reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix): a
ResNet generator and a PatchGAN discriminator per direction, least-squares losses, one
generator step on both generators (adversarial + 10 x cycle L1 + 5 x identity L1), then one
discriminator step on both discriminators (each half the MSE on real plus half on a fake drawn
from a 50-image history), Adam(2e-4, betas 0.5, 0.999).

Architecture, the same as ``GENLAB`` (genlab's cpu preset sizes, 3x32x32 images): G is a 7x7
convolution to 16 channels, two stride-2 3x3 convolutions (32, 64), 3 residual blocks of two
3x3 convolutions, two stride-2 3x3 transposed convolutions back (32, 16) and a 7x7
convolution to 3 channels with tanh; instance norm and ReLU after every inner convolution,
reflection padding for the 7x7 and residual convolutions. D: 4x4 convolutions with 32 (stride
2, no norm), 64 (stride 2) and 128 (stride 1) channels, instance norm + LeakyReLU 0.2, then a
4x4 convolution to a 6x6 map of logits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn

GENLAB = ("cyclegan", {"width": 16, "blocks": 3, "d_width": 32, "d_downs": 2})
SHAPE = (3, 32, 32)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def generator(c: int = 3, w: int = 16, blocks: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(c, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True),
        nn.Conv2d(w, 2 * w, 3, 2, 1), nn.InstanceNorm2d(2 * w), nn.ReLU(True),
        nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.InstanceNorm2d(4 * w), nn.ReLU(True),
        *[Residual(4 * w) for _ in range(blocks)],
        nn.ConvTranspose2d(4 * w, 2 * w, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(2 * w),
        nn.ReLU(True),
        nn.ConvTranspose2d(2 * w, w, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(w),
        nn.ReLU(True),
        nn.ReflectionPad2d(3), nn.Conv2d(w, c, 7), nn.Tanh())


def discriminator(c: int = 3, w: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w), nn.LeakyReLU(0.2, True),
        nn.Conv2d(2 * w, 4 * w, 4, 1, 1), nn.InstanceNorm2d(4 * w), nn.LeakyReLU(0.2, True),
        nn.Conv2d(4 * w, 1, 4, 1, 1))


class ImagePool:
    """The reference implementation's history of 50 generated images."""

    def __init__(self, size: int = 50) -> None:
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() > 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.stack(out)


def reference_step(batch_size: int) -> Callable[[], None]:
    """One full iteration (both generators, then both discriminators) on random batches of
    SHAPE images for each domain."""
    g_ab, g_ba = generator(), generator()
    d_a, d_b = discriminator(), discriminator()
    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], 2e-4, betas=(0.5, 0.999))
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    pool_a, pool_b = ImagePool(), ImagePool()
    real_a = torch.rand(batch_size, *SHAPE) * 2 - 1
    real_b = torch.rand(batch_size, *SHAPE) * 2 - 1

    def gan(logits: torch.Tensor, target: float) -> torch.Tensor:
        return mse(logits, torch.full_like(logits, target))

    def step() -> None:
        fake_b, fake_a = g_ab(real_a), g_ba(real_b)
        for d in (d_a, d_b):
            d.requires_grad_(False)
        opt_g.zero_grad()
        loss_g = (gan(d_b(fake_b), 1.0) + gan(d_a(fake_a), 1.0)
                  + 10 * (l1(g_ba(fake_b), real_a) + l1(g_ab(fake_a), real_b))
                  + 5 * (l1(g_ab(real_b), real_b) + l1(g_ba(real_a), real_a)))
        loss_g.backward()
        opt_g.step()
        for d in (d_a, d_b):
            d.requires_grad_(True)
        opt_d.zero_grad()
        old_b, old_a = pool_b.query(fake_b), pool_a.query(fake_a)
        loss_d = 0.5 * (gan(d_b(real_b), 1.0) + gan(d_b(old_b), 0.0)) + 0.5 * (
            gan(d_a(real_a), 1.0) + gan(d_a(old_a), 0.0))
        loss_d.backward()
        opt_d.step()

    return step


if __name__ == "__main__":
    reference_step(4)()
    print("one reference CycleGAN step ran")
