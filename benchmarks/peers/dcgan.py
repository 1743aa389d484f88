"""A straightforward PyTorch DCGAN to time genlab's ``dcgan`` against, written in the style of
the widely used single-script GAN collections (PyTorch-GAN's ``implementations/dcgan``): two
``nn.Module``s, a sigmoid + BCE loss, one generator step then one discriminator step that
reuses the generated batch, N(0, 0.02) initialisation, Adam(2e-4, betas 0.5, 0.999).

Architecture (MNIST resized to 1x32x32, z ~ N(0, I) of 100 numbers): as in that script, G
projects z with a linear layer to 128 x 8 x 8, then upsamples (nearest, x2) and convolves 3x3
twice (128 -> 128 at 16x16, 128 -> 64 at 32x32, batch norm + LeakyReLU 0.2 after each), then a
3x3 convolution to the image and tanh; D has four stride-2 3x3 convolution blocks (16, 32, 64,
128 channels; LeakyReLU 0.2, dropout 0.25, batch norm on all but the first and last) and a
linear layer on the 2x2 map.

``GENLAB`` is the closest genlab ``dcgan``: the paper's architecture at width 64 (G: z -> 256 x
4x4 by a transposed convolution, then stride-2 4x4 transposed convolutions to 128 x 8x8, 64 x
16x16 and 1 x 32x32; D: stride-2 4x4 convolutions to 64 x 16x16, 128 x 8x8, 256 x 4x4 and a
4x4 convolution to the logit). It differs where the paper differs from that script: transposed
convolutions instead of upsampling + convolution in G and no linear layers in either net,
ReLU (not LeakyReLU) in G, no dropout in D, batch norm with the usual eps 1e-5 (the script's
``BatchNorm2d(c, 0.8)`` sets eps to 0.8), one D step on separate real and fake batches with a
fresh z (the script reuses G's batch). Both train on 32x32 (genlab pads 28x28 MNIST to 32x32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GENLAB = ("dcgan", {"latent": 100, "width": 64, "noise": "normal"})
SHAPE = (1, 32, 32)
LATENT = 100


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d | nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, channels: int = 1, size: int = 32) -> None:
        super().__init__()
        self.start = size // 4
        self.project = nn.Linear(LATENT, 128 * self.start**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128, 0.8), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64, 0.8), nn.LeakyReLU(0.2),
            nn.Conv2d(64, channels, 3, 1, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(z.shape[0], 128, self.start, self.start))


class Discriminator(nn.Module):
    def __init__(self, channels: int = 1, size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, bn in ((channels, 16, False), (16, 32, True), (32, 64, True),
                                (64, 128, False)):
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.LeakyReLU(0.2), nn.Dropout2d(0.25)]
            layers += [nn.BatchNorm2d(c_out, 0.8)] if bn else []
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(128 * (size // 16) ** 2, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def reference_step(batch_size: int) -> Callable[[], None]:
    """One full training iteration (G step, then D step) on a random batch of SHAPE images."""
    g, d = Generator(SHAPE[0], SHAPE[1]), Discriminator(SHAPE[0], SHAPE[1])
    g.apply(_init)
    d.apply(_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    real = torch.rand(batch_size, *SHAPE) * 2 - 1
    ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)

    def step() -> None:
        opt_g.zero_grad()
        fake = g(torch.randn(batch_size, LATENT))
        bce(d(fake), ones).backward()
        opt_g.step()
        opt_d.zero_grad()
        loss = 0.5 * (bce(d(real), ones) + bce(d(fake.detach()), zeros))
        loss.backward()
        opt_d.step()

    return step


if __name__ == "__main__":
    reference_step(8)()
    print("one reference DCGAN step ran")
