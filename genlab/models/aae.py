"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2015, arXiv:1511.05644).

An autoencoder whose code distribution is made to match a chosen prior p(z) by a GAN played in
code space. A deterministic encoder q(z|x) maps an image to its code, a decoder p(x|z) maps the
code back (sigmoid outputs, binary cross-entropy against the grey levels in [0, 1]), and a
discriminator D on codes tells draws from the prior ("real") from encoded images ("fake").
Each training step has two phases, three players here, stepped in this order:

1. ``"ae"`` (reconstruction): encoder and decoder minimise the reconstruction error;
2. ``"d"`` (regularisation, discriminator): D learns to tell z ~ p(z) from z = q(x);
3. ``"g"`` (regularisation, generator): the *encoder* -- the GAN's generator -- learns to
   make D call its codes prior draws.

When D can no longer tell, the aggregated posterior q(z) = E_x q(z|x) matches p(z) everywhere,
not only on average as the VAE's per-image KL term asks: there are no holes in code space, so
decoding any prior draw gives a plausible image (``sample``). The prior only has to be
sampled, never evaluated, so it can be anything: a Gaussian, a mixture of Gaussians on a circle
(the paper's 2-D figure), a uniform box, a swiss roll (all in :data:`PRIORS`).

Labels can shape the code too (the paper's "incorporating label information" figure): with the
``labelled_mog`` prior, class k's images must go to mixture component k, because D sees the
one-hot label beside the code, for prior draws (drawn from component y) and for encoded images
alike. An extra one-hot slot marks unlabelled images (label -1), whose prior draws come from the
whole mixture, so the same model trains semi-supervised.

Departures from the paper: Adam (beta1 = 0.5, as for every genlab game) instead of SGD with
momentum, and binary cross-entropy rather than a squared error for the reconstruction. There is
no likelihood: the paper scored samples with a Parzen window (``genlab eval --metrics parzen``).
With ``ema`` > 0 the *decoder* is averaged (after each reconstruction step) and ``sample``
decodes with the average; the encoder is not averaged: ``encode`` gives the codes D was
trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.adversarial import Adversarial, check_objective, d_loss, g_loss
from genlab.nn import frozen, mlp

# ---- priors: pure functions (n or labels, dim, settings) -> codes (n, dim) -------------------
#
# Each draws from ``generator`` when given (else the global RNG) on ``device``. The shaped priors
# (mixture, swiss roll) live in the first two code dimensions; further dimensions, if any, are
# N(0, std^2) around them so the prior still has a density everywhere in code space.


def gaussian(n: int, dim: int, *, scale: float = 1.0, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> Tensor:
    """(n, dim) draws of N(0, scale^2 I)."""
    return scale * torch.randn(n, dim, generator=generator, device=device)


def uniform(n: int, dim: int, *, scale: float = 1.0, generator: torch.Generator | None = None,
            device: torch.device | str | None = None) -> Tensor:
    """(n, dim) draws uniform on the box [-scale, scale]^dim."""
    return scale * (2 * torch.rand(n, dim, generator=generator, device=device) - 1)


def _need_2d(name: str, dim: int) -> None:
    if dim < 2:
        raise ValueError(f"the {name} prior is drawn in the plane: it needs latent >= 2, got {dim}")


def labelled_mog(y: Tensor, dim: int, *, components: int = 10, radius: float = 4.0,
                 std: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """(n, dim) draws of mixture component y[i] for each label in ``y`` (n,) int64; label -1
    (unlabelled) draws a component uniformly. Component k is N(c_k, std^2 I) with centre c_k at
    angle 2 pi k / components on the circle of ``radius`` in the first two dimensions."""
    _need_2d("mog", dim)
    n, device = y.shape[0], y.device
    pick = torch.randint(components, (n,), generator=generator, device=device)  # (n,)
    k = torch.where(y >= 0, y, pick)  # (n,)
    angle = 2 * math.pi * k.to(torch.float32) / components  # (n,)
    centre = torch.zeros(n, dim, device=device)
    centre[:, 0] = radius * torch.cos(angle)
    centre[:, 1] = radius * torch.sin(angle)
    return centre + std * torch.randn(n, dim, generator=generator, device=device)


def mog(n: int, dim: int, *, components: int = 10, radius: float = 4.0, std: float = 0.5,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None) -> Tensor:
    """(n, dim) draws of an equal-weight mixture of ``components`` Gaussians on a circle."""
    unlabelled = torch.full((n,), -1, dtype=torch.long, device=device)
    return labelled_mog(unlabelled, dim, components=components, radius=radius, std=std,
                        generator=generator)


def swiss_roll(n: int, dim: int, *, radius: float = 4.0, std: float = 0.5,
               generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """(n, dim) draws near a swiss roll in the first two dimensions: position s = sqrt(u),
    u ~ U(0, 1), along the spiral r = radius * s, angle = 3 pi s (one and a half turns, the
    density per unit length growing outwards), plus N(0, std^2) noise in every dimension."""
    _need_2d("swiss_roll", dim)
    s = torch.rand(n, generator=generator, device=device).sqrt()  # (n,)
    z = std * torch.randn(n, dim, generator=generator, device=device)
    z[:, 0] += radius * s * torch.cos(3 * math.pi * s)
    z[:, 1] += radius * s * torch.sin(3 * math.pi * s)
    return z


PRIORS: dict[str, Callable[..., Tensor]] = {
    "gaussian": gaussian, "uniform": uniform, "mog": mog, "swiss_roll": swiss_roll,
    "labelled_mog": labelled_mog,
}


@dataclass
class AAEConfig:
    latent: int = 8  # code dimensions (the paper's MNIST likelihood model: 8; its figures: 2)
    hidden: tuple[int, ...] = (1000, 1000)  # encoder's ReLU layers; the decoder mirrors them
    d_hidden: tuple[int, ...] = (1000, 1000)  # the code discriminator's ReLU layers
    prior: str = "gaussian"  # one of PRIORS: gaussian, uniform, mog, swiss_roll, labelled_mog
    scale: float = 1.0  # gaussian: std; uniform: half-width of the box
    components: int = 10  # mog: Gaussians on the circle; labelled_mog: classes (one each)
    radius: float = 4.0  # mog: the circle's radius; swiss_roll: the roll's outer radius
    std: float = 0.5  # mog: each Gaussian's std; swiss_roll: the noise around the roll
    objective: str = "ns"  # the regularisation game's losses (genlab.models.adversarial)
    ema: float = 0.0  # decay of the decoder's moving average used by sample (0: off)


class AAE(Adversarial):
    """MLP adversarial autoencoder on grey images in [0, 1] with a prior chosen by name."""

    name = "aae"
    paper = ("Makhzani et al. 2015, Adversarial Autoencoders (arXiv:1511.05644)")
    Config = AAEConfig
    data_kind = "grey"
    players = ("ae", "d", "g")
    owners = {"ae": ("encoder", "decoder"), "d": ("discriminator",), "g": ("encoder",)}
    averaged = "decoder"  # the network sample runs; moved by the reconstruction step
    averaged_by = "ae"
    presets = {
        # MNIST grey levels on one CPU core: an 8-D Gaussian prior as in the paper's likelihood
        # experiment, narrower networks (512 units) and 20k steps of 100 images: about 12
        # minutes of one core's time (validation included). Test FID about 15 (genlab's MNIST
        # features), Parzen log-likelihood about 299 nats (the paper's larger model: 340).
        "cpu": {
            "model": {"latent": 8, "hidden": (512, 512), "d_hidden": (512, 512)},
            "train": {"batch_size": 100, "lr": 2e-4, "steps": 20000, "binarize": None},
        },
        # The paper's MNIST likelihood model: 1000-1000 ReLU encoder and decoder, a 1000-1000
        # discriminator, an 8-D Gaussian prior, batch 100. It trained with SGD + momentum; the
        # protocol's optimizer is Adam. The paper states no step count: 300k steps are 600
        # epochs of the 50k training images.
        "paper": {
            "model": {"latent": 8, "hidden": (1000, 1000), "d_hidden": (1000, 1000)},
            "train": {"batch_size": 100, "lr": 2e-4, "steps": 300000, "binarize": None},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: AAEConfig | None = None) -> None:
        config = config if config is not None else AAEConfig()
        super().__init__(shape, config)
        hidden = tuple(int(h) for h in config.hidden)
        d_hidden = tuple(int(h) for h in config.d_hidden)
        if config.latent < 1 or not hidden or not d_hidden:
            raise ValueError("latent must be at least 1; hidden and d_hidden must name layers")
        if config.prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {config.prior!r}")
        if config.prior in ("mog", "swiss_roll", "labelled_mog"):
            _need_2d(config.prior, config.latent)
        if config.components < 1 or min(config.scale, config.std, config.radius) < 0:
            raise ValueError("components must be at least 1; scale, std and radius >= 0")
        check_objective(config.objective)
        if config.objective == "wgan":  # a critic without its gradient penalty: not this model
            raise ValueError("objective wgan needs a gradient penalty; use ns, hinge or lsgan")
        d = self.n_pixels
        self.encoder = mlp([d, *hidden, config.latent], nn.ReLU)  # x (B, D) -> z (B, L)
        self.decoder = mlp([config.latent, *hidden[::-1], d], nn.ReLU)  # z -> logits (B, D)
        # The labelled prior's D sees the label as one-hot beside the code, one slot more for
        # "unlabelled" (label -1): (B, L + K + 1).
        self.labelled = config.prior == "labelled_mog"
        extra = config.components + 1 if self.labelled else 0
        self.discriminator = mlp([config.latent + extra, *d_hidden, 1], nn.ReLU)
        self.keep_average()

    # ---- the prior ------------------------------------------------------------------------
    def prior_sample(self, n: int, y: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """(n, latent) draws of the prior on the model's device; for ``labelled_mog`` those of
        components ``y`` (n,) (-1 or None: any component)."""
        c = self.config
        if self.labelled:
            if y is None:
                y = torch.full((n,), -1, dtype=torch.long, device=self.device)
            return labelled_mog(y, c.latent, components=c.components, radius=c.radius,
                                std=c.std, generator=generator)
        settings: dict[str, Any] = {
            "gaussian": {"scale": c.scale}, "uniform": {"scale": c.scale},
            "mog": {"components": c.components, "radius": c.radius, "std": c.std},
            "swiss_roll": {"radius": c.radius, "std": c.std},
        }[c.prior]
        return PRIORS[c.prior](n, c.latent, generator=generator, device=self.device, **settings)

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The batch's labels (B,) for the labelled prior (checked), else None."""
        if not self.labelled:
            return None
        y = batch.get("y")
        if y is None:
            raise ValueError("the labelled_mog prior needs labels: batches must carry 'y' "
                             "(label -1 marks an unlabelled image)")
        if bool((y >= self.config.components).any()) or bool((y < -1).any()):
            raise ValueError(f"labels must be in [-1, {self.config.components}) for a "
                             f"{self.config.components}-component labelled prior")
        return y.to(self.device)

    def _judge(self, z: Tensor, y: Tensor | None) -> Tensor:
        """D's logit (B,) for codes z (B, L), with the one-hot label (B, K + 1) when labelled."""
        if y is not None:
            slot = torch.where(y >= 0, y, torch.full_like(y, self.config.components))
            z = torch.cat([z, F.one_hot(slot, self.config.components + 1).to(z.dtype)], 1)
        return self.discriminator(z).squeeze(-1)

    # ---- the training protocol: "ae", then "d", then "g" (Adam beta1 0.5: Adversarial) --------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        xf = x.flatten(1)  # (B, D)
        y = self._labels(batch)
        if player == "ae":
            logits = self.decoder(self.encoder(xf))  # (B, D)
            # Nats per image: the Bernoulli cross-entropy of the grey levels, summed over pixels.
            rec = F.binary_cross_entropy_with_logits(logits.float(), xf, reduction="none").sum(1)
            loss = rec.mean()
            return loss, {"rec": float(loss.detach())}
        if player == "d":
            with torch.no_grad():  # D's step must not build (or backprop into) the encoder
                fake = self.encoder(xf)  # (B, L)
            real_logit = self._judge(self.prior_sample(x.shape[0], y).to(fake.dtype), y)  # (B,)
            fake_logit = self._judge(fake, y)  # (B,)
            loss = d_loss(self.config.objective, real_logit, fake_logit)
            return loss, {"d_real": float(torch.sigmoid(real_logit).detach().mean()),
                          "d_fake": float(torch.sigmoid(fake_logit).detach().mean())}
        if player == "g":
            with frozen(self.discriminator):  # the encoder's step must not touch D's weights
                fake_logit = self._judge(self.encoder(xf), y)  # (B,)
            loss = g_loss(self.config.objective, fake_logit)  # ns: -log D(q(x))
            return loss, {"d_fake": float(torch.sigmoid(fake_logit).detach().mean())}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    # ---- sampling and codes -----------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Mean images (n, C, H, W) in [0, 1] of codes z (n, latent) (the averaged decoder
        when ``ema`` > 0)."""
        return torch.sigmoid(self.sampler(z).float()).view(z.shape[0], *self.shape)

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W): decoded prior draws, shown as the decoder's means (grey
        levels in [0, 1]). For ``labelled_mog``, ``cond={"y": (n,) classes}`` picks each
        draw's component; by default the components are uniform."""
        y = None
        if self.labelled and cond is not None and cond.get("y") is not None:
            y = torch.as_tensor(cond["y"], device=self.device).long().expand(n)
            if bool((y >= self.config.components).any()) or bool((y < -1).any()):
                raise ValueError(f"cond['y'] must be in [-1, {self.config.components})")
        return self.decode(self.prior_sample(n, y))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The code (B, latent) of images x (B, C, H, W): the deterministic q(z|x)."""
        self.check_input(x)
        return self.encoder(x.flatten(1))

    # ---- the finished run's figure: the code space --------------------------------------------
    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """With a 2-D code: ``codes.png``, the prior's draws beside the codes of up to 10,000
        of ``data``'s images coloured by class, on the same axes. Other codes: nothing."""
        if self.config.latent != 2:
            return []
        x = data.x[:10_000]
        y = data.y[:10_000] if getattr(data, "y", None) is not None else None
        codes = torch.cat([self.encode(chunk.to(self.device)).float().cpu()
                           for chunk in x.split(1000)])  # (N, 2)
        prior = self.prior_sample(len(x), y.to(self.device) if (y is not None and self.labelled)
                                  else None).float().cpu()  # (N, 2)
        path = Path(folder) / "codes.png"
        scatter_codes(prior, codes, y, getattr(data, "classes", None), path,
                      title=f"{self.config.prior} prior")
        return [path]


def scatter_codes(prior: Tensor, codes: Tensor, y: Tensor | None, classes: list[str] | None,
                  path: Path, title: str) -> None:
    """Two panels on shared axes: the prior's draws (N, 2) in grey and the codes (N, 2)
    coloured by class ``y`` (N,), with a legend (one colour when there are no labels)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharex=True, sharey=True)
    axes[0].scatter(prior[:, 0], prior[:, 1], s=2, c="0.4", alpha=0.4, linewidths=0)
    axes[0].set_title(f"{title}: {len(prior):,} draws")
    if y is None:
        axes[1].scatter(codes[:, 0], codes[:, 1], s=2, alpha=0.5, linewidths=0)
    else:
        cmap = plt.get_cmap("tab10" if int(y.max()) < 10 else "tab20")
        for k in sorted(set(y.tolist())):
            pick = y == k
            label = classes[k] if classes is not None and 0 <= k < len(classes) else str(k)
            axes[1].scatter(codes[pick, 0], codes[pick, 1], s=2, alpha=0.6, linewidths=0,
                            color=cmap(k % cmap.N), label=label)
        axes[1].legend(markerscale=6, loc="upper right", fontsize=8, title="class")
    axes[1].set_title(f"codes of {len(codes):,} images")
    for ax in axes:
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("z1")
    axes[0].set_ylabel("z2")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # titles and labels inside the file
    plt.close(fig)
