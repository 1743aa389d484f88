"""Convolutional variational autoencoder: the VAE of ``vae.py`` (Kingma & Welling 2014, with
Burda et al.'s importance-weighted bound) with convolutional networks and a likelihood for grey
and colour images.

An MLP encoder sees an image as an unordered list of pixels: every stroke position must be
learned anew. Convolutions share weights across positions, which is what users reach for on
Fashion-MNIST and colour images. The encoder is a strided convolutional body (the DCGAN
discriminator's, ``genlab.nn.ConvDiscriminator``, without batch norm: a VAE's ``log_prob`` must
not depend on the batch it is computed in) whose head gives the mean and log-variance of
q(z|x); the decoder is the DCGAN generator (``genlab.nn.ConvGenerator``, also without batch
norm) giving the parameters of each sub-pixel's distribution, independent given z:
- ``levels = 2``: Bernoulli pixels (binary data), as in ``vae``;
- ``levels = K > 2``, ``likelihood = "categorical"``: a softmax over the K grey levels
  k / (K - 1) (van den Oord et al. 2016), for grey and colour data;
- ``levels = K > 2``, ``likelihood = "logistic"``: a discretised logistic (Kingma et al. 2016,
  IAF, arXiv:1606.04934; Salimans et al. 2017, PixelCNN++, arXiv:1701.05517): a mean and a
  log-scale per sub-pixel instead of K logits, so with K = 256 the decoder's last layer has
  128 times fewer outputs and the loss no K-way softmax, and nearby grey levels share
  probability, which a softmax must learn.
A learned per-sub-pixel bias on the decoder's output starts at the data's marginals (the
categorical's frequencies, the logistic's mean and spread). Training
(ELBO or IWAE, KL warm-up), ``log_prob`` (the IWAE estimate), ``encode`` and completion
(Metropolis-within-Gibbs) are the VAE's own: only the networks and the likelihood differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genlab.models.vae import VAE
from genlab.nn import (
    ConvDiscriminator,
    ConvGenerator,
    discrete_log_prob,
    discrete_sample,
    levels_index,
    logistic_log_prob,
    logistic_mean,
    logistic_min_log_scale,
    logistic_sample,
)


@dataclass
class ConvVAEConfig:
    latent: int = 32
    width: int = 32  # channels of the encoder's first and the decoder's last hidden map
    levels: int = 2  # values per sub-pixel: 2 (Bernoulli) or K > 2 (grey levels)
    likelihood: str = "categorical"  # with K > 2: "categorical" or "logistic" (discretised)
    objective: str = "elbo"  # "elbo" or "iwae" (as in vae)
    k_train: int = 1
    warmup: int = 0  # KL warm-up steps (as in vae)


class ConvVAE(VAE):
    """VAE with a convolutional encoder and decoder; Bernoulli, categorical or discretised
    logistic sub-pixels."""

    name = "conv_vae"
    paper = ("Kingma & Welling 2014, Auto-Encoding Variational Bayes (arXiv:1312.6114), "
             "with DCGAN-style networks (Radford et al. 2015, arXiv:1511.06434)")
    Config = ConvVAEConfig
    completion_sweeps = 300
    presets = {
        # Binary MNIST (static binarisation, as vae's preset) on a 2-core CPU: 10 minutes on one
        # idle core. For Fashion-MNIST's grey levels: --data fashion-mnist --set levels=256
        # (the data then stays grey: binarization follows the model's data kind); add
        # --set likelihood=logistic for the discretised logistic, whose steps are far cheaper
        # than the 256-way softmax's.
        "cpu": {
            "model": {"latent": 32, "width": 32, "objective": "iwae", "k_train": 2},
            "train": {"batch_size": 128, "lr": 2e-3, "steps": 6000, "schedule": "cosine",
                      "binarize": "static"},
        },
        # No single paper: the widths of Radford et al.'s 64x64 nets, the IWAE bound of Burda
        # et al. with k = 5 on dynamically binarised data.
        "paper": {
            "model": {"latent": 100, "width": 64, "objective": "iwae", "k_train": 5},
            "train": {"batch_size": 64, "lr": 1e-3, "steps": 500_000, "binarize": "dynamic"},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: ConvVAEConfig | None = None) -> None:
        config = config if config is not None else ConvVAEConfig()
        if config.levels < 2 or config.width < 1:
            raise ValueError("levels must be at least 2 and width at least 1")
        if config.likelihood not in ("categorical", "logistic"):
            raise ValueError("likelihood must be 'categorical' or 'logistic', "
                             f"got {config.likelihood!r}")
        if config.likelihood == "logistic" and config.levels == 2:
            raise ValueError("likelihood='logistic' needs levels > 2 (levels=2 is Bernoulli)")
        self.levels = int(config.levels)
        self.logistic = config.likelihood == "logistic"
        # Decoder outputs per sub-pixel: 1 Bernoulli logit, K logits, or a mean and a log-scale.
        self.outputs = 2 if self.logistic else self.levels if self.levels > 2 else 1
        super().__init__(shape, config)
        # An instance attribute, as in the autoregressive models: the data kind follows levels.
        self.data_kind = "binary" if self.levels == 2 else "grey"

    def build_networks(self, config: ConvVAEConfig) -> None:
        c, h, w = self.shape
        k = self.outputs
        self.encoder = ConvDiscriminator(self.shape, config.width, batchnorm=False,
                                         outputs=2 * config.latent)
        self.decoder = ConvGenerator(config.latent, self.shape, config.width, batchnorm=False,
                                     out_channels=c * k)
        self.bias = nn.Parameter(torch.zeros(k, c, h, w))  # per sub-pixel, from the data
        if self.logistic:  # until data is seen: the mean and spread of a uniform grey
            self._set_logistic_bias(torch.full((c, h, w), 0.5), torch.full((c, h, w), 12**-0.5))

    # ---- the networks and the likelihood (the rest is the VAE's) ------------------------------
    def posterior(self, xf: Tensor) -> tuple[Tensor, Tensor]:
        x = xf.view(-1, *self.shape) * 2 - 1  # (B, C, H, W) in [-1, 1], as the body expects
        mu, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L) each
        return mu, logvar

    def _logits(self, z: Tensor) -> Tensor:
        """Decoder outputs for codes z (N, L): (N, C, H, W) Bernoulli logits, or (N, K, C, H, W)
        with K = levels logits or K = 2 (logistic): index 0 the mean, 1 the log-scale.

        The logistic's mean is the output itself, unbounded: the edge bins hold the tails, so a
        mean below 0 (above 1) is how a pixel becomes surely black (white), where a sigmoid
        onto [0, 1] would need an infinite input and vanish the gradient on the way."""
        c, h, w = self.shape
        y = self.decoder(z)  # (N, C * K, H, W)
        if self.levels == 2:
            return y + self.bias[0]
        # Channel j of the decoder is (colour j // K, output j % K).
        return y.view(len(z), c, self.outputs, h, w).transpose(1, 2) + self.bias

    def log_likelihood(self, xf: Tensor, z: Tensor) -> Tensor:
        lead = z.shape[:-1]  # (..., B)
        flat = z.reshape(-1, z.shape[-1])  # (N, L), N = prod(lead)
        x = xf.view(*[1] * (len(lead) - 1), -1, *self.shape)  # (1, ..., B, C, H, W)
        x = x.expand(*lead, *self.shape).reshape(-1, *self.shape)  # (N, C, H, W)
        out = self._logits(flat)
        if self.logistic:
            lp = logistic_log_prob(out[:, 0], out[:, 1], x, self.levels)
        else:
            lp = discrete_log_prob(out, x, self.levels)
        return lp.to(z.dtype).view(lead)

    def draw(self, z: Tensor, mean: bool = False) -> Tensor:
        logits = self._logits(z)  # (n, C, H, W) or (n, K, C, H, W)
        if self.logistic:
            if mean:  # exactly E[x], not the clamped logistic mean
                return logistic_mean(logits[:, 0], logits[:, 1], self.levels).flatten(1)
            u = torch.rand(len(z), *self.shape, device=z.device)
            return logistic_sample(logits[:, 0], logits[:, 1], self.levels, u).flatten(1)
        if not mean:
            u = torch.rand(len(z), *self.shape, device=z.device)
            return discrete_sample(logits, self.levels, u).flatten(1)  # (n, D)
        if self.levels == 2:
            return torch.sigmoid(logits).flatten(1)
        grid = torch.arange(self.levels, device=z.device, dtype=logits.dtype) / (self.levels - 1)
        return torch.einsum("nkchw,k->nchw", torch.softmax(logits, 1), grid).flatten(1)

    def activation_width(self) -> int:
        c, h, w = self.shape
        side = max(h, w)
        return max(self.n_pixels * self.outputs, self.config.width * side * side // 2)

    @torch.no_grad()
    def _init_output_bias(self, x: Tensor) -> None:
        """Start the outputs at the data's per-sub-pixel marginals (smoothed batch frequencies,
        or the logistic's mean and spread), so the untrained decoder need not first learn which
        pixels are always off."""
        if self.logistic:  # the count, sum and sum of squares, (3, C, H, W)
            counts = torch.stack([torch.full_like(x[0], len(x)), x.sum(0), x.pow(2).sum(0)])
        elif self.levels == 2:
            counts = torch.stack([x.shape[0] - x.sum(0), x.sum(0)])  # (2, C, H, W)
        else:
            index = levels_index(x, self.levels)  # (B, C, H, W)
            counts = torch.nn.functional.one_hot(index, self.levels).sum(0).movedim(-1, 0)
        counts = counts.to(self.bias.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # every rank starts from the same bias
        if self.logistic:
            n, total, squares = counts  # (C, H, W) each
            mean = total / n
            self._set_logistic_bias(mean, (squares / n - mean.pow(2)).clamp(min=0).sqrt())
        else:
            logp = torch.log(counts + 0.5)  # never log 0
            if self.levels == 2:
                self.bias.copy_((logp[1] - logp[0])[None])
            else:
                self.bias.copy_(logp - logp.logsumexp(0, keepdim=True))
        self._initialised.fill_(True)

    @torch.no_grad()
    def _set_logistic_bias(self, mean: Tensor, std: Tensor) -> None:
        """Logistic means and log-scales (C, H, W) matching a mean and a standard deviation
        (a logistic's is s pi / sqrt 3). The log-scale stays at least one above its clamp: a
        pixel constant in the first batch then starts with 95% of its mass on its value, yet not
        at the clamp, where the scale's gradient is zero."""
        log_scale = torch.log(std * 3**0.5 / math.pi)  # -inf for a constant pixel, clamped
        floor = logistic_min_log_scale(self.levels) + 1.0
        self.bias.copy_(torch.stack([mean, log_scale.clamp(min=floor)]))
