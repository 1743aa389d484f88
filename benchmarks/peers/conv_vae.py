"""The convolutional VAE written straightforwardly, as the PyTorch examples write a VAE: one
``nn.Module`` holding an encoder and a decoder ``nn.Sequential``, the loss in its forward, one
Adam optimizer. genlab's ``cpu`` preset (latent 32, width 32, IWAE bound with k = 2 samples per
image) on binary 1x28x28 MNIST:

- encoder: the image in [-1, 1] padded with -1 to 32x32, stride-2 4x4 convolutions to 32, 64
  and 128 channels (LeakyReLU 0.2, no batch norm: genlab's VAE keeps ``log_prob`` independent
  of the batch), a 4x4 convolution over the 4x4 map to the 2 x 32 numbers of q(z|x)'s mean and
  log-variance;
- decoder: a 4x4 transposed convolution of z to 128 x 4x4, stride-2 4x4 transposed
  convolutions to 64 x 8x8, 32 x 16x16 and 1 x 32x32 (ReLU between), cropped to 28x28, plus a
  learned per-pixel bias started at the logits of the batch's pixel means (genlab sets it from
  its first training batch);
- objective: the importance-weighted bound log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) with
  Bernoulli pixels, z_i = mu + sigma * eps_i, maximised on average over the batch; the
  densities come from ``torch.distributions.Normal`` here, genlab writes them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

GENLAB = ("conv_vae", {"latent": 32, "width": 32, "objective": "iwae", "k_train": 2})
SHAPE = (1, 28, 28)
LATENT, WIDTH, SAMPLES = 32, 32, 2


class ConvVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, WIDTH, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(WIDTH, 2 * WIDTH, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * WIDTH, 4 * WIDTH, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * WIDTH, 2 * LATENT, 4), nn.Flatten())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(LATENT, 4 * WIDTH, 4), nn.ReLU(),
            nn.ConvTranspose2d(4 * WIDTH, 2 * WIDTH, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * WIDTH, WIDTH, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(WIDTH, 1, 4, 2, 1))
        self.bias = nn.Parameter(torch.zeros(1, *SHAPE))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The negative IWAE bound averaged over binary images x (B, 1, 28, 28), with the
        standard normal draws eps (K, B, LATENT) of the K samples per image."""
        k, b = eps.shape[:2]
        mu, logvar = self.encoder(F.pad(x * 2 - 1, (2, 2, 2, 2), value=-1.0)).chunk(2, 1)
        std = torch.exp(0.5 * logvar)  # (B, L)
        z = mu + std * eps  # (K, B, L)
        logits = self.decoder(z.view(k * b, LATENT, 1, 1))[:, :, 2:30, 2:30] + self.bias
        bce = F.binary_cross_entropy_with_logits(logits, x.repeat(k, 1, 1, 1), reduction="none")
        log_px = -bce.view(k, b, -1).sum(2)  # (K, B)
        log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(2) - Normal(mu, std).log_prob(z).sum(2)
        return -(torch.logsumexp(log_w, 0) - math.log(k)).mean()


def reference_step(batch_size: int) -> Callable[[], None]:
    model = ConvVAE()
    x = torch.bernoulli(torch.rand(batch_size, *SHAPE))
    with torch.no_grad():  # the decoder starts at the pixels' (smoothed) frequencies
        model.bias.copy_(torch.logit((x.sum(0) + 0.5) / (batch_size + 1)))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def step() -> None:
        opt.zero_grad()
        model(x, torch.randn(SAMPLES, batch_size, LATENT)).backward()
        opt.step()

    return step
