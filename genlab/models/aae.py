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

Unsupervised clustering (the paper's section on clustering): with ``clusters`` K > 0 the
encoder's last layer gives K logits beside the style code z. Their softmax q(y|x) and z go
together to the decoder, and a second discriminator D_y, on the K probabilities, tells one-hot
draws of a uniform Categorical(K) from the encoder's softmax vectors. Fooling D_y forces
confident (nearly one-hot) and balanced assignments, fooling D_z makes z a prior draw: the
decoder must then carry in y what z cannot, the discrete factor of the data (for MNIST, mostly
the digit). The phases stay three: "d" steps both discriminators on the sum of their losses,
"g" makes the encoder fool both. ``cluster`` gives q(y|x) for the metrics of
:mod:`genlab.metrics.clustering` (the paper: K = 16, 9.55% MNIST test error; K = 30, 4.10%).

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

from genlab.metrics.clustering import check_clusters
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
    # K > 0: a softmax over K clusters beside the code, its own discriminator (d_hidden layers)
    # against one-hot draws of a uniform Categorical(K); 0: the plain AAE.
    clusters: int = 0
    # Learning rate of the reconstruction phase (None: the trainer's lr). With clusters, the
    # cluster logits need it above the games' (e.g. 1e-3 against 2e-4): at equal rates the
    # softmax saturates on one cluster within a few hundred steps and its gradient dies.
    lr_ae: float | None = None


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
    cluster_setting = "clusters"  # the setting that gives a run clusters (for messages)
    presets = {
        # MNIST grey levels on one CPU core: an 8-D Gaussian prior as in the paper's likelihood
        # experiment, narrower networks (512 units) and 20k steps of 100 images: about 12
        # minutes of one core's time (validation included). Test FID about 15 (genlab's MNIST
        # features), Parzen log-likelihood about 299 nats (the paper's larger model: 340).
        # Clustering (the paper: 3000-3000 ReLU layers, K = 16 or 30) on the same networks:
        # `genlab train aae --set clusters=16 --set latent=5 --set lr_ae=1e-3`, then
        # `genlab eval RUN --metrics clusters` for the test error of the clusters' labels
        # (without lr_ae the softmax settles on one cluster: see AAEConfig.lr_ae).
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
        self.labelled = config.prior == "labelled_mog"
        k = int(config.clusters)
        if k < 0 or k == 1:
            raise ValueError(f"clusters must be 0 (off) or at least 2, got {config.clusters}")
        if k and self.labelled:
            raise ValueError("clusters and the labelled_mog prior both shape the code by class; "
                             "pick one (clusters learn without labels)")
        d = self.n_pixels
        # x (B, D) -> the K cluster logits, then the code z: (B, K + L); z -> logits (B, D).
        self.encoder = mlp([d, *hidden, k + config.latent], nn.ReLU)
        self.decoder = mlp([k + config.latent, *hidden[::-1], d], nn.ReLU)
        # The labelled prior's D sees the label as one-hot beside the code, one slot more for
        # "unlabelled" (label -1): (B, L + K + 1).
        extra = config.components + 1 if self.labelled else 0
        self.discriminator = mlp([config.latent + extra, *d_hidden, 1], nn.ReLU)
        if k:  # D_y on the K probabilities; "d" owns it beside D_z
            self.cluster_discriminator = mlp([k, *d_hidden, 1], nn.ReLU)
            self.owners = {**self.owners, "d": ("discriminator", "cluster_discriminator")}
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

    def prior_code(self, n: int, y: Tensor | None = None,
                   cluster: Tensor | None = None) -> Tensor:
        """(n, K + latent) decoder inputs drawn from the prior: with ``clusters`` K > 0 the
        one-hot cluster (``cluster`` (n,), else uniform) before the code; else the code."""
        z = self.prior_sample(n, y)  # drawn first: the plain AAE's random stream is unchanged
        k = self.config.clusters
        if not k:
            return z
        if cluster is None:
            cluster = torch.randint(k, (n,), device=self.device)
        return torch.cat([F.one_hot(cluster, k).to(z.dtype), z], 1)

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

    def _encode(self, xf: Tensor) -> Tensor:
        """The decoder's input (B, K + L) for flat images xf (B, D): the softmax q(y|x) over
        the K clusters, then the code z (just z when K = 0)."""
        h = self.encoder(xf)
        k = self.config.clusters
        return torch.cat([h[:, :k].softmax(1), h[:, k:]], 1) if k else h

    def _judge(self, z: Tensor, y: Tensor | None) -> Tensor:
        """D's logit (B,) for codes z (B, L), with the one-hot label (B, K + 1) when labelled."""
        if y is not None:
            slot = torch.where(y >= 0, y, torch.full_like(y, self.config.components))
            z = torch.cat([z, F.one_hot(slot, self.config.components + 1).to(z.dtype)], 1)
        return self.discriminator(z).squeeze(-1)

    def _verdicts(self, code: Tensor, y: Tensor | None) -> tuple[Tensor, ...]:
        """Each game's logits (B,) on decoder inputs ``code`` (B, K + L): D_z's on the code,
        then, with clusters, D_y's on the cluster probabilities."""
        k = self.config.clusters
        if not k:
            return (self._judge(code, y),)
        return self._judge(code[:, k:], y), self.cluster_discriminator(code[:, :k]).squeeze(-1)

    # ---- the training protocol: "ae", then "d", then "g" (Adam beta1 0.5: Adversarial) --------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        xf = x.flatten(1)  # (B, D)
        y = self._labels(batch)
        games = ("d", "c")  # log prefixes: D_z on the code, D_y on the clusters
        if player == "ae":
            logits = self.decoder(self._encode(xf))  # (B, D)
            # Nats per image: the Bernoulli cross-entropy of the grey levels, summed over pixels.
            rec = F.binary_cross_entropy_with_logits(logits.float(), xf, reduction="none").sum(1)
            loss = rec.mean()
            return loss, {"rec": float(loss.detach())}
        if player == "d":  # both discriminators: the sum of their losses
            # The codes keep the encoder's graph for the "g" player of this step, next, which
            # backpropagates through them instead of encoding again: D's step does not change
            # the encoder. D's own loss sees them detached, so it never reaches the encoder.
            code = self._encode(xf)  # (B, K + L)
            self.hand_over(batch, detach=False, code=code)
            fake = code.detach()
            real = self._verdicts(self.prior_code(x.shape[0], y).to(fake.dtype), y)
            fakes = self._verdicts(fake, y)
            loss = sum(d_loss(self.config.objective, r, f) for r, f in zip(real, fakes,
                                                                            strict=True))
            logs = {}
            for game, r, f in zip(games, real, fakes, strict=False):
                logs[f"{game}_real"] = float(torch.sigmoid(r).detach().mean())
                logs[f"{game}_fake"] = float(torch.sigmoid(f).detach().mean())
            return loss, logs
        if player == "g":  # the encoder fools both
            handed = self.take_over(batch, graph=True)  # D's codes, when D stepped first
            code = handed["code"] if handed is not None else self._encode(xf)  # (B, K + L)
            with frozen(*self._discriminators()):  # its step must not touch D's weights
                fakes = self._verdicts(code, y)
            loss = sum(g_loss(self.config.objective, f) for f in fakes)  # ns: -log D(q(x))
            return loss, {f"{game}_fake": float(torch.sigmoid(f).detach().mean())
                          for game, f in zip(games, fakes, strict=False)}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    def _discriminators(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.owners["d"]]

    # ---- sampling and codes -----------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Mean images (n, C, H, W) in [0, 1] of decoder inputs z (n, K + latent): the code,
        after the cluster one-hots with clusters (the averaged decoder when ``ema`` > 0)."""
        return torch.sigmoid(self.sampler(z).float()).view(z.shape[0], *self.shape)

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W): decoded prior draws, shown as the decoder's means (grey
        levels in [0, 1]). ``cond={"y": (n,) ints}`` picks each draw's component for
        ``labelled_mog``, its cluster with ``clusters``; by default both are uniform."""
        y = cluster = None
        picked = cond.get("y") if cond is not None else None
        if picked is not None and (self.labelled or self.config.clusters):
            picked = torch.as_tensor(picked, device=self.device).long().expand(n)
            low, high = (-1, self.config.components) if self.labelled else (0, self.config.clusters)
            if bool((picked >= high).any()) or bool((picked < low).any()):
                raise ValueError(f"cond['y'] must be in [{low}, {high})")
            y, cluster = (picked, None) if self.labelled else (None, picked)
        return self.decode(self.prior_code(n, y, cluster))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The code of images x (B, C, H, W), the deterministic q(z|x): (B, latent); with
        clusters (B, K + latent), the cluster probabilities q(y|x) first (what the decoder
        takes)."""
        self.check_input(x)
        return self._encode(x.flatten(1))

    # ---- clusters (genlab.metrics.clustering) -------------------------------------------------
    @property
    def n_clusters(self) -> int:
        return int(self.config.clusters)

    @torch.no_grad()
    def cluster(self, x: Tensor) -> Tensor:
        """q(y|x) (B, K): each image's probabilities of the K clusters."""
        return self.encode(x)[:, : check_clusters(self)]

    # ---- the finished run's figures: the code space, the clusters ---------------------------
    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """With clusters: ``clusters.png``, one row per cluster, its one-hot decoded with the
        same 10 code draws (a column per draw: one style across the clusters), and
        ``cluster-members.png``, one row per cluster, the 10 of up to 10,000 of ``data``'s
        images it claims most surely (q(y_i|x) highest first: the first names the cluster in
        the paper's rule). With a 2-D code: ``codes.png``, the prior's draws beside the codes
        of those images coloured by class, on the same axes. Otherwise nothing."""
        from genlab.images import save_grid

        k, folder = self.config.clusters, Path(folder)
        if not k and self.config.latent != 2:
            return []
        x = data.x[:10_000]
        codes = torch.cat([self.encode(chunk.to(self.device)).float().cpu()
                           for chunk in x.split(1000)])  # (N, K + L)
        paths = []
        if k:
            cols = 10
            z = self.prior_sample(cols).repeat(k, 1)  # (K * 10, L): row i is cluster i
            one_hot = torch.eye(k, device=self.device).repeat_interleave(cols, 0)  # (K * 10, K)
            paths.append(save_grid(self.decode(torch.cat([one_hot, z], 1)),
                                   folder / "clusters.png", nrow=cols))
            surest = codes[:, :k].topk(min(cols, len(x)), dim=0).indices.T  # (K, <= 10)
            paths.append(save_grid(x[surest.flatten()], folder / "cluster-members.png",
                                   nrow=surest.shape[1]))
        if self.config.latent == 2:
            y = data.y[:10_000] if getattr(data, "y", None) is not None else None
            labelled = y is not None and self.labelled
            prior = self.prior_sample(len(x), y.to(self.device) if labelled else None)
            path = folder / "codes.png"
            scatter_codes(prior.float().cpu(), codes[:, k:], y, getattr(data, "classes", None),
                          path, title=f"{self.config.prior} prior")
            paths.append(path)
        return paths


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
