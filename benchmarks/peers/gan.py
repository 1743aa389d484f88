"""The MLP GAN written straightforwardly: two nn.Sequential nets, two Adam optimizers, the
loop PyTorch-GAN's ``implementations/gan`` uses (BCE on D's sigmoid output, G's step through
D), with genlab's ``cpu`` architecture (G 100-256-512-784, D 784-512-256-1, LeakyReLU 0.2 in D;
no batch norm, which genlab's GAN does not have)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GENLAB = ("gan", {})
SHAPE = (1, 28, 28)


def reference_step(batch_size: int) -> Callable[[], None]:
    latent, d = 100, 28 * 28
    generator = nn.Sequential(nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
                              nn.Linear(512, d), nn.Tanh())
    discriminator = nn.Sequential(nn.Linear(d, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256),
                                  nn.LeakyReLU(0.2), nn.Linear(256, 1), nn.Sigmoid())
    bce = nn.BCELoss()
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch_size, d) * 2 - 1
    ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)

    def step() -> None:
        opt_g.zero_grad()
        fake = generator(torch.randn(batch_size, latent))
        bce(discriminator(fake), ones).backward()
        opt_g.step()
        opt_d.zero_grad()
        loss = bce(discriminator(real), ones) + bce(discriminator(fake.detach()), zeros)
        (loss / 2).backward()
        opt_d.step()

    return step
