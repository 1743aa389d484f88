"""The adversarial autoencoder written straightforwardly: three nn.Sequential nets, three Adam
optimizers and the loop of PyTorch-GAN's ``implementations/aae`` (a reconstruction step, then
D on prior draws against detached codes, with BCE on D's sigmoid output), with genlab's ``cpu``
architecture: encoder 784-512-512-8 and decoder 8-512-512-784 (ReLU, sigmoid output, binary
cross-entropy summed over pixels), D 8-512-512-1 (ReLU), an N(0, I) prior. Unlike that script
(which folds a 0.001-weighted adversarial term into the autoencoder's step, L1 reconstruction,
LeakyReLU and batch norm), the encoder takes its own regularisation step after D's, as in the
paper and in genlab."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GENLAB = ("aae", {"latent": 8, "hidden": (512, 512), "d_hidden": (512, 512)})
SHAPE = (1, 28, 28)


def reference_step(batch_size: int) -> Callable[[], None]:
    latent, d = 8, 28 * 28
    encoder = nn.Sequential(nn.Linear(d, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                            nn.Linear(512, latent))
    decoder = nn.Sequential(nn.Linear(latent, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                            nn.Linear(512, d), nn.Sigmoid())
    discriminator = nn.Sequential(nn.Linear(latent, 512), nn.ReLU(), nn.Linear(512, 512),
                                  nn.ReLU(), nn.Linear(512, 1), nn.Sigmoid())
    bce, pixel_bce = nn.BCELoss(), nn.BCELoss(reduction="sum")
    betas = (0.5, 0.999)
    opt_ae = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=2e-4,
                              betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=betas)
    opt_g = torch.optim.Adam(encoder.parameters(), lr=2e-4, betas=betas)
    real = torch.rand(batch_size, d)
    ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)

    def step() -> None:
        # reconstruction
        opt_ae.zero_grad()
        (pixel_bce(decoder(encoder(real)), real) / batch_size).backward()
        opt_ae.step()
        # regularisation: the discriminator on prior draws (real) against codes (fake)
        opt_d.zero_grad()
        codes = encoder(real)
        z = torch.randn(batch_size, latent)
        loss_d = bce(discriminator(z), ones) + bce(discriminator(codes.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        # regularisation: the encoder fools the discriminator
        opt_g.zero_grad()
        bce(discriminator(codes), ones).backward()
        opt_g.step()

    return step


if __name__ == "__main__":
    reference_step(8)()
    print("one reference AAE step ran")
