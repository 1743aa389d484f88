"""Variational autoencoder (Kingma & Welling 2014, arXiv:1312.6114) with the importance-weighted
bound of Burda, Grosse & Salakhutdinov 2016 (arXiv:1509.00519).

An encoder q(z|x) = N(mu(x), diag sigma(x)^2) and a decoder p(x|z) = Bernoulli(sigmoid(f(z)))
with z ~ N(0, I) are trained together on a lower bound of log p(x). The ELBO
E_q[log p(x|z)] - KL(q(z|x) || p(z)) uses one reparameterised sample z = mu + sigma * eps and
the closed-form Gaussian KL. The IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i|x) with k samples
is tighter (k = 1 is the ELBO) and, used as the training objective, gives a better decoder.
Both are lower bounds, so ``log_prob`` is an *estimate*: the k-sample bound with large k.
Architecture defaults are Burda et al.'s one-stochastic-layer model: 784-200-200-50, tanh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.completion import Request, progress_bar
from genlab.models.base import GenerativeModel
from genlab.nn import mlp

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig:
    hidden: tuple[int, ...] = (200, 200)  # deterministic layers of the encoder (decoder mirrors)
    latent: int = 50
    objective: str = "elbo"  # "elbo" (Kingma & Welling) or "iwae" (Burda et al.)
    k_train: int = 1  # samples of z per image in the training loss
    warmup: int = 0  # steps over which the KL weight rises linearly from 0 to 1 (0: off)
    activation: str = "tanh"  # of the hidden layers: "tanh" (the paper), "elu" or "relu"


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU}


def _log_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def _log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last axis (stable for any logit)."""
    return (x * logits - F.softplus(logits)).sum(-1)


def _gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over the last axis."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


class _Encoder(nn.Module):
    """x (B, D) -> mean and log-variance (B, L) of the diagonal Gaussian q(z|x)."""

    def __init__(self, d: int, hidden: tuple[int, ...], latent: int,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        self.net = mlp([d, *hidden, 2 * latent], activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class VAE(GenerativeModel):
    """VAE with a Bernoulli decoder; trains on the ELBO or on the k-sample IWAE bound."""

    name = "vae"
    paper = ("Kingma & Welling 2014, Auto-Encoding Variational Bayes (arXiv:1312.6114); "
             "Burda et al. 2016, Importance Weighted Autoencoders (arXiv:1509.00519)")
    Config = VAEConfig
    data_kind = "binary"
    exact = False
    # One sweep is one encoder and two decoder passes: cheap, so many (see mcmc_completion).
    completion_sweeps = 500
    presets = {
        # Static-binarised MNIST on a CPU: wider ELU layers learn much faster than tanh ones
        # here, large batches with a high, cosine-decayed learning rate use the time best, and
        # a few importance samples reduce overfitting to the fixed binarisation. About 3.5
        # minutes on one core; test NLL about 89.4 nats (importance-weighted, k = 5000).
        "cpu": {
            "model": {"hidden": (300, 300), "activation": "elu", "objective": "iwae",
                      "k_train": 3},
            "train": {"batch_size": 200, "lr": 3e-3, "steps": 12000, "schedule": "cosine",
                      "binarize": "static"},
        },
        # Burda et al.: batch 20, 3280 epochs of 50k images (lr decayed by hand in the paper),
        # dynamically binarised data; their best single-layer model uses k = 50.
        "paper": {
            "model": {"objective": "iwae", "k_train": 50},
            "train": {"batch_size": 20, "lr": 1e-3, "steps": 8_200_000, "binarize": "dynamic"},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: VAEConfig | None = None) -> None:
        config = config if config is not None else VAEConfig()
        super().__init__(shape, config)
        if config.objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be 'elbo' or 'iwae', got {config.objective!r}")
        if config.k_train < 1 or config.latent < 1:
            raise ValueError("k_train and latent must be at least 1")
        self.build_networks(config)
        # The output bias is set from the first training batch (see _init_output_bias); the
        # flag is a buffer so that loading or resuming a trained model never redoes it.
        self.register_buffer("_initialised", torch.tensor(False))
        self._kl_weight = 1.0  # set by on_step during a warm-up; 1 everywhere else

    def build_networks(self, config: VAEConfig) -> None:
        """The encoder and decoder: MLPs here (``conv_vae`` builds convolutional ones)."""
        if config.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, "
                             f"got {config.activation!r}")
        act = _ACTIVATIONS[config.activation]
        hidden = tuple(int(h) for h in config.hidden)
        d = self.n_pixels
        self.encoder = _Encoder(d, hidden, config.latent, act)
        self.decoder = mlp([config.latent, *reversed(hidden), d], act)  # -> logits (.., D)

    # ---- the parts a variant with other networks or another likelihood replaces -------------
    def posterior(self, xf: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance (B, L) each of q(z|x) for flattened images xf (B, D)."""
        return self.encoder(xf)

    def log_likelihood(self, xf: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) (...) for xf (B, D) and codes z (..., B, L)."""
        return _log_bernoulli(xf, self.decoder(z))

    def draw(self, z: Tensor, mean: bool = False) -> Tensor:
        """Images (n, D) drawn from p(x|z) for z (n, L), or their means when ``mean``."""
        probs = torch.sigmoid(self.decoder(z))
        return probs if mean else torch.bernoulli(probs)

    def activation_width(self) -> int:
        """The widest activation per image and sample, which sizes ``log_prob``'s chunks."""
        return max(self.n_pixels, *self.config.hidden, 1)

    # ---- the training protocol ------------------------------------------------------------
    def on_step(self, step: int) -> None:
        w = self.config.warmup
        self._kl_weight = min(1.0, (step + 1) / w) if w > 0 else 1.0

    def loss(self, batch: dict[str, Tensor], player: str = "model"
             ) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        if self.training and not bool(self._initialised):
            self._init_output_bias(x)
        xf = x.flatten(1)  # (B, D)
        mu, logvar = self.posterior(xf)  # (B, L) each
        eps = torch.randn(self.config.k_train, *mu.shape, device=mu.device)  # (k, B, L)
        rec, log_ratio = self._log_terms(xf, mu, logvar, eps)  # (k, B) each
        kl = _gaussian_kl(mu, logvar)  # (B,)
        elbo = rec.mean(0) - kl
        beta = self._kl_weight
        logs = {"rec": float(rec.detach().mean()), "kl": float(kl.detach().mean()),
                "elbo": float(elbo.detach().mean())}
        if self.config.objective == "iwae":
            k = self.config.k_train
            # During warm-up the prior/posterior ratio is down-weighted inside every weight.
            bound = torch.logsumexp(rec + beta * log_ratio, dim=0) - math.log(k)  # (B,)
            with torch.no_grad():
                iwae = torch.logsumexp(rec + log_ratio, dim=0) - math.log(k)
            logs["iwae"] = float(iwae.mean())
            return -bound.mean(), logs
        return -(rec.mean(0) - beta * kl).mean(), logs

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None, mean: bool = False) -> Tensor:
        """``n`` images (n, C, H, W) drawn from the decoder; ``mean=True`` gives its means
        instead. Completions (``cond``) come from ``mcmc_completion``, started from these."""
        z = torch.randn(n, self.config.latent, device=self.device)  # (n, L)
        return self.draw(z, mean).view(n, *self.shape)

    @torch.no_grad()
    def mcmc_completion(self, x: Tensor, request: Request, **options: object) -> Tensor:
        """Metropolis-within-Gibbs over (z, hidden pixels), the sampler of Mattei & Frellsen
        2018, Leveraging the Exact Likelihood of Deep Latent Variable Models (arXiv:1802.04826).

        The target is p(z, x_h | x_g), proportional to p(z) p(x_g | z) p(x_h | z): the VAE's own
        conditional, not its ELBO or importance-weighted estimate. One sweep: (1) propose z'
        from m(z' | x) = 1/2 q(z' | x) + 1/2 p(z'), the encoder on the current completed image
        mixed with the prior (a defensive mixture: full support and tails at least as heavy as
        the prior's, so a poor encoder slows the chain but cannot stall it), and accept with
        probability min(1, p(z') p(x | z') m(z | x) / (p(z) p(x | z) m(z' | x))); (2) draw x_h
        from the decoder's p(x_h | z), independent per sub-pixel, exactly. Both steps leave the
        target invariant and the chain is irreducible, so it converges to p(x_h | x_g).
        """
        known, given = request.known, request.given  # (B, D)
        xf = torch.where(known, given, x.flatten(1).to(given.dtype))  # (B, D)

        def log_joint(z: Tensor) -> Tensor:  # log p(z) + log p(x | z), (B,)
            return _log_normal(z) + self.log_likelihood(xf, z)

        def log_proposal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:  # log m(z | x)
            eps = (z - mu) * torch.exp(-0.5 * logvar)
            log_q = -0.5 * (eps.pow(2) + _LOG_2PI + logvar).sum(-1)
            return torch.logaddexp(log_q, _log_normal(z)) - math.log(2)

        mu, logvar = self.posterior(xf)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # (B, L): a start, any will do
        with progress_bar(request, 1, "Metropolis-within-Gibbs") as bar:
            for _ in range(request.sweeps):
                mu, logvar = self.posterior(xf)
                from_q = torch.rand(len(z), 1, device=z.device) < 0.5
                new = torch.where(from_q, mu + torch.exp(0.5 * logvar) * torch.randn_like(mu),
                                  torch.randn_like(mu))
                log_ratio = (log_joint(new) + log_proposal(z, mu, logvar)
                             - log_joint(z) - log_proposal(new, mu, logvar))
                take = (torch.rand_like(log_ratio).log() < log_ratio).unsqueeze(1)
                z = torch.where(take, new, z)
                xf = torch.where(known, given, self.draw(z).to(given.dtype))
                bar.update(1)
        return xf.view(x.shape)

    # ---- capabilities ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean E_q[z|x], shape (B, latent)."""
        self.check_input(x)
        return self.posterior(x.flatten(1))[0]

    @torch.no_grad()
    def elbo(self, x: Tensor) -> Tensor:
        """One-sample ELBO in nats per image, shape (B,): an unbiased estimate of a lower bound."""
        self.check_input(x)
        xf = x.flatten(1)
        mu, logvar = self.posterior(xf)
        rec, _ = self._log_terms(xf, mu, logvar, torch.randn_like(mu)[None])
        return rec[0] - _gaussian_kl(mu, logvar)

    @torch.no_grad()
    def log_prob(self, x: Tensor, k: int = 5000, chunk: int | None = None) -> Tensor:
        """Importance-weighted *estimate* of log p(x) in nats per image, shape (B,).

        Returns log (1/k) sum_i p(x, z_i) / q(z_i|x) with z_i ~ q(z|x): a stochastic lower bound
        of log p(x) in expectation (Burda et al.), which tightens as k grows; it is NOT the exact
        likelihood. All images are processed together, the k samples in chunks of ``chunk``
        (default: about 16M floats of activations) combined with a running float64 logsumexp,
        so memory stays bounded for any k. Noise is drawn one sample index at a time, so the
        result does not depend on ``chunk`` for a given random seed.
        """
        self.check_input(x)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        xf = x.flatten(1)  # (B, D)
        b = xf.shape[0]
        if chunk is None:
            chunk = max(1, 2**24 // (b * self.activation_width()))
        mu, logvar = self.posterior(xf)  # (B, L)
        total = torch.full((b,), -math.inf, dtype=torch.float64, device=xf.device)
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            eps = torch.stack([torch.randn_like(mu) for _ in range(c)])  # (c, B, L)
            rec, log_ratio = self._log_terms(xf, mu, logvar, eps)  # (c, B)
            lw = (rec + log_ratio).double()
            total = torch.logaddexp(total, torch.logsumexp(lw, dim=0))
        return (total - math.log(k)).to(x.dtype)

    # ---- internals ----------------------------------------------------------------------------
    def _log_terms(self, xf: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor
                   ) -> tuple[Tensor, Tensor]:
        """log p(x|z) and log p(z) - log q(z|x) for z = mu + sigma * eps, each (S, B).

        xf (B, D); mu, logvar (B, L); eps (S, B, L).
        """
        z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, L)
        rec = self.log_likelihood(xf, z)  # (S, B)
        # log q(z|x) written with eps, since (z - mu) / sigma = eps exactly.
        log_q = -0.5 * (eps.pow(2) + _LOG_2PI + logvar).sum(-1)
        return rec, _log_normal(z) - log_q

    @torch.no_grad()
    def _init_output_bias(self, x: Tensor) -> None:
        """Start the decoder at the data's pixel marginals: logit of the (smoothed) batch mean.

        Otherwise the untrained decoder first has to learn which pixels are (almost) always
        off. Done once, lazily, because the model never sees data when it is built.
        """
        total = x.flatten(1).sum(0)  # (D,)
        count = torch.tensor(float(x.shape[0]), device=x.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must start from the same bias, so pool the ranks' batches.
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        p = (total + 0.5) / (count + 1.0)  # never 0 or 1, so the logit is finite
        self.decoder[-1].bias.copy_(torch.logit(p))
        self._initialised.fill_(True)

