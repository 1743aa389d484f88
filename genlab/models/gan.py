"""Generative adversarial network (Goodfellow et al. 2014, arXiv:1406.2661).

A generator G maps noise z ~ N(0, I) to an image; a discriminator D scores how likely an image
is to be real. The two are trained against each other: D to tell data from G's samples, G to
make D call its samples real. G uses the paper's "non-saturating" loss -log D(G(z)) rather than
log(1 - D(G(z))), whose gradient vanishes early on when D rejects every sample. Both are MLPs
here; D's last hidden layer, trained only to tell real from fake, doubles as a learned image
representation (``encode``). There is no likelihood: ``log_prob`` is unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genlab.models.adversarial import Adversarial, check_objective, d_loss, g_loss
from genlab.nn import frozen, mlp


@dataclass
class GANConfig:
    latent: int = 100
    hidden: tuple[int, ...] = (256, 512)  # generator layers; the discriminator mirrors them
    dropout: float = 0.0  # after each hidden layer of D (the paper used 0.5 with maxout units)
    slope: float = 0.2  # of D's LeakyReLU, which keeps gradients flowing to G for all inputs
    objective: str = "ns"  # the losses (genlab.models.adversarial): ns, hinge, lsgan
    ema: float = 0.0  # decay of the generator's moving average used for sampling (0: off)


class _Discriminator(nn.Module):
    """x (B, D) in [-1, 1] -> features (B, hidden[-1]) -> one logit (B,)."""

    def __init__(self, d: int, hidden: tuple[int, ...], dropout: float, slope: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip((d, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Linear(a, b), nn.LeakyReLU(slope)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden[-1], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(-1)


class GAN(Adversarial):
    """MLP GAN on grey images in [0, 1] (rescaled to [-1, 1] inside, tanh output)."""

    name = "gan"
    paper = "Goodfellow et al. 2014, Generative Adversarial Nets (arXiv:1406.2661)"
    Config = GANConfig
    data_kind = "grey"
    presets = {
        # MNIST grey levels on one CPU core: digits appear after ~10k steps and are clearly
        # recognisable (with some speckle, as usual for MLP GANs) by 25k, about 4 minutes.
        "cpu": {
            "model": {},
            "train": {"batch_size": 64, "lr": 2e-4, "steps": 25000, "binarize": None},
        },
        # The paper's MNIST generator had two 1200-unit ReLU layers; D used maxout + dropout,
        # approximated here by LeakyReLU + dropout 0.5. The paper trained with SGD + momentum;
        # the protocol's optimizer is Adam.
        "paper": {
            "model": {"hidden": (1200, 1200), "dropout": 0.5},
            "train": {"batch_size": 100, "lr": 2e-4, "steps": 100000, "binarize": None},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: GANConfig | None = None) -> None:
        config = config if config is not None else GANConfig()
        super().__init__(shape, config)
        hidden = tuple(int(h) for h in config.hidden)
        if config.latent < 1 or not hidden:
            raise ValueError("latent must be at least 1 and hidden must name at least one layer")
        check_objective(config.objective)
        if config.objective == "wgan":  # a critic without its gradient penalty: not this model
            raise ValueError("objective wgan needs a gradient penalty: use progan or stargan")
        d = self.n_pixels
        self.generator = mlp([config.latent, *hidden, d], nn.ReLU, final=nn.Tanh())
        self.discriminator = _Discriminator(d, hidden[::-1], config.dropout, config.slope)
        self.keep_average()

    # ---- the training protocol (players "d" and "g", Adam beta1 0.5: Adversarial) ---------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        b = x.shape[0]
        if player == "d":
            # G's fakes keep their graph: the "g" player of this step, next, backpropagates
            # through them instead of running G again (D's step does not change G's weights).
            # D's own loss sees them detached, so it never reaches G.
            fake = self.generator(torch.randn(b, self.config.latent, device=x.device))  # (B, D)
            self.hand_over(batch, detach=False, fake=fake)
            real_logit = self.discriminator(x.flatten(1) * 2 - 1)  # (B,)
            fake_logit = self.discriminator(fake.detach())  # (B,)
            loss = d_loss(self.config.objective, real_logit, fake_logit)
            return loss, {"d_real": float(torch.sigmoid(real_logit).detach().mean()),
                          "d_fake": float(torch.sigmoid(fake_logit).detach().mean())}
        if player == "g":
            handed = self.take_over(batch, graph=True)  # D's fakes, when D stepped first
            fake = handed["fake"] if handed is not None else self.generator(
                torch.randn(b, self.config.latent, device=x.device))  # (B, D)
            with frozen(self.discriminator):  # G's step must not touch D's weights
                fake_logit = self.discriminator(fake)  # (B,)
            loss = g_loss(self.config.objective, fake_logit)  # ns: -log D(G(z))
            return loss, {"d_fake": float(torch.sigmoid(fake_logit).detach().mean())}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) with grey levels in [0, 1]."""
        z = torch.randn(n, self.config.latent, device=self.device)  # (n, latent)
        return ((self.sampler(z) + 1) / 2).view(n, *self.shape)

    # ---- capabilities ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """D's last hidden layer (B, hidden[0]): features learned by telling real from fake."""
        self.check_input(x)
        return self.discriminator.features(x.flatten(1) * 2 - 1)

    @torch.no_grad()
    def discriminate(self, x: Tensor) -> Tensor:
        """D's logit (B,) for images ``x`` in [0, 1]: how real D finds them. A score learned
        against this generator's fakes, not a likelihood (genlab.metrics.detection uses it)."""
        self.check_input(x)
        return self.discriminator(x.flatten(1) * 2 - 1)
