"""InfoGAN written straightforwardly, in the manner of PyTorch-GAN's ``implementations/infogan``
(plain nn.Sequential nets, one Adam per network, the loop spelled out), with genlab's ``cpu``
architecture: G a DCGAN stack 74 -> 128x4x4 -> 64x8x8 -> 32x16x16 -> 1x32x32 cropped to 28x28,
D 32-64-128 stride-2 convolutions on the image padded to 32x32 with a 4x4 convolution for the
logit, Q = FC 64-BN-lReLU-FC(10 + 2) on D's body; lr 2e-4 (D, Q) and 1e-3 (G), beta1 0.5.

Where it differs from PyTorch-GAN: that script steps a third "info" optimizer over G and D
after the two adversarial steps (a third pass through both nets); like the InfoGAN authors'
code and genlab, this one adds the information term to D's and G's losses, so both sides do
the same work per step. The continuous codes' term is the Gaussian log-density with unit std
(PyTorch-GAN: an MSE weighted 0.1, the same up to scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GENLAB = ("infogan", {"width": 32, "q_hidden": 64, "lr_d": 2e-4, "lr_g": 1e-3})
SHAPE = (1, 28, 28)


def reference_step(batch_size: int) -> Callable[[], None]:
    noise, k, n_cont = 62, 10, 2
    generator = nn.Sequential(
        nn.ConvTranspose2d(noise + k + n_cont, 128, 4, 1, 0, bias=False), nn.BatchNorm2d(128),
        nn.ReLU(), nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64),
        nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32),
        nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh())
    body = nn.Sequential(
        nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2))
    adv = nn.Conv2d(128, 1, 4)
    q = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 64), nn.BatchNorm1d(64),
                      nn.LeakyReLU(0.2), nn.Linear(64, k + n_cont))
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*body.parameters(), *adv.parameters(), *q.parameters()],
                             lr=2e-4, betas=(0.5, 0.999))
    real = F.pad(torch.rand(batch_size, *SHAPE) * 2 - 1, (2, 2, 2, 2), value=-1.0)

    def codes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = torch.randint(0, k, (batch_size,))
        u = torch.rand(batch_size, n_cont) * 2 - 1
        z = torch.cat([torch.randn(batch_size, noise), F.one_hot(c, k).float(), u], 1)
        return z[:, :, None, None], c, u

    def info(h: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = q(h)
        nll_cont = (0.5 * (u - out[:, k:]) ** 2 + 0.5 * math.log(2 * math.pi)).sum(1).mean()
        return F.cross_entropy(out[:, :k], c) + nll_cont

    def step() -> None:
        z, c, u = codes()
        opt_d.zero_grad()
        with torch.no_grad():
            fake = F.pad(generator(z)[:, :, 2:30, 2:30], (2, 2, 2, 2), value=-1.0)
        h = body(fake)
        loss = (F.softplus(-adv(body(real))).mean() + F.softplus(adv(h)).mean()
                + info(h, c, u))
        loss.backward()
        opt_d.step()
        z, c, u = codes()
        opt_g.zero_grad()
        h = body(F.pad(generator(z)[:, :, 2:30, 2:30], (2, 2, 2, 2), value=-1.0))
        (F.softplus(-adv(h)).mean() + info(h, c, u)).backward()  # D's grads: zeroed next step
        opt_g.step()

    return step
