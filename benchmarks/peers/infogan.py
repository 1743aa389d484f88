"""InfoGAN written straightforwardly, in the manner of PyTorch-GAN's ``implementations/infogan``
(plain nn.Sequential nets, one Adam per network, the loop spelled out), with the paper's MNIST
networks, genlab's ``cpu`` architecture (``arch="paper"``): G FC 1024-BN-ReLU, FC 7x7x128-BN-
ReLU, 4x4 stride-2 transposed convolutions to 64 channels (BN, ReLU) and to 1; D 4x4 stride-2
convolutions of 64 and 128 channels (BN on the second, leaky ReLU 0.1), FC 1024-BN-lReLU and a
linear logit; Q = FC 128-BN-lReLU-FC(10 + 2) on D's 1,024 features; lr 2e-4 (D, Q) and 1e-3
(G), beta1 0.5.

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

GENLAB = ("infogan", {"arch": "paper", "width": 64, "q_hidden": 128, "lr_d": 2e-4,
                      "lr_g": 1e-3})
SHAPE = (1, 28, 28)


def reference_step(batch_size: int) -> Callable[[], None]:
    noise, k, n_cont = 62, 10, 2
    generator = nn.Sequential(
        nn.Linear(noise + k + n_cont, 1024, bias=False), nn.BatchNorm1d(1024), nn.ReLU(),
        nn.Linear(1024, 128 * 7 * 7, bias=False), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
    body = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.1),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1024, bias=False), nn.BatchNorm1d(1024),
        nn.LeakyReLU(0.1))
    adv = nn.Linear(1024, 1)
    q = nn.Sequential(nn.Linear(1024, 128), nn.BatchNorm1d(128),
                      nn.LeakyReLU(0.2), nn.Linear(128, k + n_cont))
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*body.parameters(), *adv.parameters(), *q.parameters()],
                             lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch_size, *SHAPE) * 2 - 1

    def codes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = torch.randint(0, k, (batch_size,))
        u = torch.rand(batch_size, n_cont) * 2 - 1
        z = torch.cat([torch.randn(batch_size, noise), F.one_hot(c, k).float(), u], 1)
        return z, c, u

    def info(h: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = q(h)
        nll_cont = (0.5 * (u - out[:, k:]) ** 2 + 0.5 * math.log(2 * math.pi)).sum(1).mean()
        return F.cross_entropy(out[:, :k], c) + nll_cont

    def step() -> None:
        z, c, u = codes()
        opt_d.zero_grad()
        with torch.no_grad():
            fake = generator(z)
        h = body(fake)
        loss = (F.softplus(-adv(body(real))).mean() + F.softplus(adv(h)).mean()
                + info(h, c, u))
        loss.backward()
        opt_d.step()
        z, c, u = codes()
        opt_g.zero_grad()
        h = body(generator(z))
        (F.softplus(-adv(h)).mean() + info(h, c, u)).backward()  # D's grads: zeroed next step
        opt_g.step()

    return step
