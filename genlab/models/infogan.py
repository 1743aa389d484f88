"""InfoGAN (Chen et al. 2016, arXiv:1606.03657): a GAN whose generator input is split into
incompressible noise z and a structured *latent code* c, trained so that c stays readable in
the image, i.e. so that the mutual information I(c; G(z, c)) is high.

On MNIST, G takes z (62 numbers ~ N(0, 1)), a 10-way categorical code (one-hot) and 2
continuous codes ~ U[-1, 1]. Nothing says what the codes mean: the information term alone makes
the categorical code pick up the digit class and the continuous ones rotation and stroke width.

I(c; G(z, c)) needs the intractable posterior p(c | x). The paper bounds it from below with an
auxiliary distribution Q(c | x) (variational information maximisation, Barber & Agakov 2003):

    L_I(G, Q) = E_{c ~ p(c), x ~ G(z, c)} [log Q(c | x)] + H(c)  <=  I(c; G(z, c)),

tight when Q is the true posterior. Q is a small head on the discriminator's convolutional body,
so it costs almost nothing beyond the GAN: the categorical code gets a softmax over 10 logits,
each continuous code a Gaussian with a predicted mean (and a unit standard deviation, as in the
authors' released MNIST code, or a predicted one with ``learn_std``). H(c) = ln 10 + 2 ln 2
is a constant, so the bound on the categorical part alone, ln 10 - cross-entropy, lies in
[-inf, ln 10] and approaches ln 10 = 2.303 when Q reads the category back perfectly.

Who trains the bound: both G and Q want it high (min_{G,Q} V(D, G) - lambda L_I(G, Q)). As in the
authors' released code, -lambda L_I is added to the discriminator's loss (training Q's head and
the body D and Q share, on G's images with G held fixed) and to the generator's loss (with D and
Q frozen). A third "info" player owning G, the body and Q (as some ports do) would need a third
forward and backward pass through both networks per step and would let an info step move D's
body, which then no longer belongs to one player; folding the term into the two players costs no
extra pass and keeps the ownership of every weight with one optimizer. lambda is 1 for the
categorical code (the paper's choice for discrete codes) and 1 for the continuous codes with a
fixed unit std (the released MNIST code); with a learned std the paper advises a smaller lambda
(e.g. 0.1), as log-densities then grow without bound.

``encode`` is Q's posterior: (categorical probabilities, continuous means). Its argmax labels
MNIST digits without ever seeing a label: :func:`unsupervised_error` scores it after the best
one-to-one matching of categories to classes (the paper: 5% error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.metrics.clustering import check_clusters, cluster_probabilities, clustering_error
from genlab.models.adversarial import Adversarial, check_objective, d_loss, g_loss
from genlab.nn import ConvDiscriminator, ConvGenerator, dcgan_init, frozen

LOG_2PI = math.log(2 * math.pi)


@dataclass
class InfoGANConfig:
    noise: int = 62  # incompressible noise z ~ N(0, I)
    categories: int = 10  # one categorical code with this many values (0: none)
    continuous: int = 2  # continuous codes ~ U[-1, 1]
    width: int = 64  # channels of G's last and D's first convolution (DCGAN-style blocks)
    q_hidden: int = 128  # Q's hidden layer on D's body (the paper: FC 128, BN, leaky ReLU)
    lambda_cat: float = 1.0  # weight of the categorical code's information term
    lambda_cont: float = 1.0  # weight of the continuous codes' term (see the docstring)
    learn_std: bool = False  # Q predicts each continuous code's std too (else it is 1)
    lr_d: float | None = None  # learning rate of D and Q (None: the trainer's lr)
    lr_g: float | None = None  # learning rate of G (the paper: 1e-3 G, 2e-4 D)
    objective: str = "ns"  # the adversarial losses (genlab.models.adversarial)
    ema: float = 0.0  # decay of the generator's moving average used for sampling (0: off)
    arch: str = "dcgan"  # "dcgan": genlab's DCGAN blocks; "paper": the paper's MNIST nets
    # True: every convolution and linear weight from N(0, 0.02), as in the authors' code (and
    # DCGAN's: genlab.nn.dcgan_init); False: torch's default, uniform with std 1/sqrt(3 fan-in):
    # 0.007 for D's 6,272-input layer, 0.07 for G's first, 0.14 for D's first convolution.
    normal_init: bool = False


def _quarter(shape: tuple[int, int, int]) -> tuple[int, int]:
    """(H/4, W/4): the side of the paper's nets' 7x7 map for 28x28 images, after two halvings."""
    _, h, w = shape
    if h % 4 or w % 4:
        raise ValueError(f"arch=paper needs a height and width divisible by 4, got {h}x{w}; "
                         "--set arch=dcgan takes any size")
    return h // 4, w // 4


class PaperDiscriminator(nn.Module):
    """The paper's MNIST discriminator body (its appendix C.1): x (B, C, H, W) in [-1, 1] ->
    4x4 stride-2 convolutions of 64 and 128 channels (batch norm on the second, leaky ReLU 0.1)
    -> FC 1024, batch norm, leaky ReLU -> (B, 1024) features, which D's logit and Q share. The
    fully connected layer is what the DCGAN blocks lack: Q reads the code from 1,024 global
    features instead of a 4x4 map."""

    def __init__(self, shape: tuple[int, int, int], width: int = 64, hidden: int = 1024) -> None:
        super().__init__()
        h4, w4 = _quarter(shape)
        self.out_dim = hidden
        self.body = nn.Sequential(
            nn.Conv2d(shape[0], width, 4, 2, 1), nn.LeakyReLU(0.1),  # (B, 64, H/2, W/2)
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.1), nn.Flatten(),  # (B, 128 * H/4 * W/4)
            nn.Linear(2 * width * h4 * w4, hidden, bias=False),
            nn.BatchNorm1d(hidden), nn.LeakyReLU(0.1),  # (B, 1024)
        )
        self.head = nn.Linear(hidden, 1)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, 1024)


class PaperGenerator(nn.Module):
    """The paper's MNIST generator: (B, latent) -> FC 1024 -> FC 128 x H/4 x W/4 (batch norm and
    ReLU after each) -> 4x4 stride-2 transposed convolutions to 64 channels (batch norm, ReLU)
    and to C channels: (B, C, H, W) pre-activations (the caller applies tanh)."""

    def __init__(self, latent: int, shape: tuple[int, int, int], width: int = 64,
                 hidden: int = 1024) -> None:
        super().__init__()
        self.start = (2 * width, *_quarter(shape))
        self.fc = nn.Sequential(
            nn.Linear(latent, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, math.prod(self.start), bias=False),
            nn.BatchNorm1d(math.prod(self.start)), nn.ReLU(),
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(), nn.ConvTranspose2d(width, shape[0], 4, 2, 1),  # (B, C, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(self.fc(z).view(-1, *self.start))


# The (generator, discriminator) pair of each ``arch``.
ARCHES = {"dcgan": (ConvGenerator, ConvDiscriminator),
          "paper": (PaperGenerator, PaperDiscriminator)}


class InfoGAN(Adversarial):
    """InfoGAN on grey/colour images in [0, 1] (rescaled to [-1, 1] inside, tanh output)."""

    name = "infogan"
    paper = ("Chen et al. 2016, InfoGAN: Interpretable Representation Learning by Information "
             "Maximizing Generative Adversarial Nets (arXiv:1606.03657)")
    Config = InfoGANConfig
    data_kind = "grey"
    owners = {"d": ("discriminator", "q"), "g": ("generator",)}
    cluster_setting = "categories"  # the setting that gives a run clusters (for messages)
    presets = {
        # MNIST on one CPU core: the paper's networks, initialisation, learning rates and batch
        # size; 3,000 steps (6 epochs, about 25 minutes of one core beside another job).
        # genlab's DCGAN blocks (``arch="dcgan"``, width 32) cost a third of the arithmetic per
        # step (6.8 against 20.1 GFLOP at batch 64) but leave the categories mixed; torch's
        # default initialisation let G collapse early in some seeds (benchmarks/RESULTS.md,
        # InfoGAN).
        "cpu": {
            "model": {"arch": "paper", "normal_init": True, "width": 64, "q_hidden": 128,
                      "lr_d": 2e-4, "lr_g": 1e-3},
            "train": {"batch_size": 100, "lr": 2e-4, "steps": 3000, "binarize": None},
        },
        # The paper's MNIST settings (its appendix C.1): its networks (``arch="paper"``: D two
        # 4x4 stride-2 convolutions of 64 and 128 channels and FC 1024, G FC 1024, FC 7x7x128 and
        # two transposed convolutions), 62 noise variables, one 10-way and two continuous codes,
        # Adam with lr 2e-4 for D and 1e-3 for G, batch 100, Q = FC 128-BN-lReLU on D's body;
        # 50 epochs of the 60k images.
        "paper": {
            "model": {"arch": "paper", "normal_init": True, "width": 64, "q_hidden": 128,
                      "lr_d": 2e-4, "lr_g": 1e-3},
            "train": {"batch_size": 100, "lr": 2e-4, "steps": 30000, "binarize": None},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: InfoGANConfig | None = None) -> None:
        config = config if config is not None else InfoGANConfig()
        super().__init__(shape, config)
        if config.noise < 0 or config.categories < 0 or config.continuous < 0:
            raise ValueError("noise, categories and continuous must be 0 or more")
        if config.categories == 1:
            raise ValueError("a categorical code needs at least 2 categories (0: none)")
        if config.noise + config.categories + config.continuous < 1:
            raise ValueError("the generator needs at least one input (noise or a code)")
        if config.width < 1 or config.q_hidden < 1:
            raise ValueError("width and q_hidden must be at least 1")
        check_objective(config.objective)
        if config.arch not in ARCHES:
            raise ValueError(f"arch must be one of {sorted(ARCHES)}, got {config.arch!r}")
        if config.objective == "wgan":  # a critic without its gradient penalty: not this model
            raise ValueError("objective wgan needs a gradient penalty: use progan or stargan")
        self.code_dim = config.categories + config.continuous  # one-hot + continuous
        generator, discriminator = ARCHES[config.arch]
        self.generator = generator(config.noise + self.code_dim, self.shape, config.width)
        self.discriminator = discriminator(self.shape, config.width)
        # Q reads the codes from the body D's logit also uses (the shared feature map).
        per_code = 2 if config.learn_std else 1
        self.q = nn.Sequential(
            nn.Linear(self.discriminator.out_dim, config.q_hidden),
            nn.BatchNorm1d(config.q_hidden), nn.LeakyReLU(0.2),
            nn.Linear(config.q_hidden, config.categories + per_code * config.continuous),
        )
        if config.normal_init:
            dcgan_init(self)
        self.keep_average()

    # ---- the latent code ---------------------------------------------------------------------
    def draw(self, n: int, cond: dict[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Generator input (n, noise + K + continuous), category (n,) and continuous codes
        (n, continuous) from the prior, unless ``cond`` fixes ``"c"`` (n,) or ``"code"``."""
        cfg, dev = self.config, self.device
        cond = cond or {}
        z = torch.randn(n, cfg.noise, device=dev)  # (n, noise)
        if "c" in cond:
            if not cfg.categories:
                raise ValueError(f"{self.name} has no categorical code to fix (categories=0)")
            c = torch.as_tensor(cond["c"], device=dev).long().expand(n).clone()  # (n,)
            if bool(((c < 0) | (c >= cfg.categories)).any()):
                raise ValueError(f"cond['c'] must be categories in 0..{cfg.categories - 1}")
        else:
            c = torch.randint(0, max(cfg.categories, 1), (n,), device=dev)  # (n,)
        if "code" in cond:
            u = torch.as_tensor(cond["code"], device=dev, dtype=torch.float32)
            u = u.expand(n, cfg.continuous).clone()  # (n, continuous)
        else:
            u = torch.rand(n, cfg.continuous, device=dev) * 2 - 1  # (n, continuous) ~ U[-1, 1]
        one_hot = F.one_hot(c, cfg.categories).float() if cfg.categories else z[:, :0]
        return torch.cat([z, one_hot, u], 1), c, u

    def posterior(self, feature_map: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q on D's body output: category logits (B, K), means (B, L), log-stds (B, L)."""
        out = self.q(feature_map.flatten(1))  # (B, K + L or K + 2L)
        k, n = self.config.categories, self.config.continuous
        logits, mean = out[:, :k], out[:, k : k + n]
        log_std = out[:, k + n :] if self.config.learn_std else torch.zeros_like(mean)
        return logits, mean, log_std

    def information(self, feature_map: Tensor, c: Tensor,
                    u: Tensor) -> tuple[Tensor, dict[str, float]]:
        """-lambda * (E log Q(c | x)) on G's images (the loss term: H(c) is a constant) and the
        lower bounds on I(c; x), in nats, of the categorical and the continuous codes."""
        cfg = self.config
        logits, mean, log_std = self.posterior(feature_map)
        term = feature_map.new_zeros(())
        logs: dict[str, float] = {}
        if cfg.categories:
            log_q_cat = -F.cross_entropy(logits.float(), c)  # E log Q(c_cat | x)
            term = term - cfg.lambda_cat * log_q_cat
            logs["mi_cat"] = float(log_q_cat.detach()) + math.log(cfg.categories)
        if cfg.continuous:
            # log N(u; mean, std) summed over the codes; H(U[-1, 1]) = ln 2 per code.
            err = (u - mean.float()) * torch.exp(-log_std.float())  # (B, L)
            log_q_cont = (-0.5 * err**2 - log_std.float() - 0.5 * LOG_2PI).sum(1).mean()
            term = term - cfg.lambda_cont * log_q_cont
            logs["mi_cont"] = float(log_q_cont.detach()) + cfg.continuous * math.log(2)
        return term, logs

    # ---- the training protocol (players "d" (with Q) and "g", Adam beta1 0.5) ---------------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        d, objective = self.discriminator, self.config.objective
        latent, c, u = self.draw(x.shape[0])  # (B, noise + K + L), (B,), (B, L)
        if player == "d":
            with torch.no_grad():  # D's step must not build (or backprop into) G's graph
                fake = torch.tanh(self.generator(latent))  # (B, C, H, W)
            real_logit = d.head(d.feature_map(x * 2 - 1)).flatten()  # (B,)
            fake_map = d.feature_map(fake)  # (B, F_c, 4, 4): shared by D's logit and Q
            fake_logit = d.head(fake_map).flatten()  # (B,)
            info, logs = self.information(fake_map, c, u)
            loss = d_loss(objective, real_logit, fake_logit) + info
            return loss, {"d_real": float(torch.sigmoid(real_logit).detach().mean()),
                          "d_fake": float(torch.sigmoid(fake_logit).detach().mean()), **logs}
        if player == "g":
            with frozen(self.discriminator, self.q):  # G's step must not touch D's or Q's weights
                fake_map = d.feature_map(torch.tanh(self.generator(latent)))
                fake_logit = d.head(fake_map).flatten()  # (B,)
                info, logs = self.information(fake_map, c, u)
            loss = g_loss(objective, fake_logit) + info
            return loss, {"d_fake": float(torch.sigmoid(fake_logit).detach().mean()), **logs}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1], codes drawn from the prior unless ``cond`` fixes
        the category ``"c"`` (an int or (n,) ints) or the continuous codes ``"code"`` ((L,) or
        (n, L) values; the prior is U[-1, 1], beyond it the generator extrapolates)."""
        latent, _, _ = self.draw(n, cond)
        return (torch.tanh(self.sampler(latent)) + 1) / 2

    # ---- capabilities ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Q's posterior of the codes (B, K + L): the categorical probabilities, then the
        continuous codes' means."""
        self.check_input(x)
        logits, mean, _ = self.posterior(self.discriminator.feature_map(x * 2 - 1))
        return torch.cat([logits.softmax(1), mean], 1)

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """The most probable category (B,) under Q: an unsupervised label."""
        return self.encode(x)[:, : self.config.categories].argmax(1)

    @property
    def n_clusters(self) -> int:
        return int(self.config.categories)

    @torch.no_grad()
    def cluster(self, x: Tensor) -> Tensor:
        """Q's category probabilities (B, K): the categorical code as clusters of images
        (genlab.metrics.clustering)."""
        return self.encode(x)[:, : check_clusters(self)]

    # ---- pictures ---------------------------------------------------------------------------
    @torch.no_grad()
    def traversal(self, code: int, steps: int = 9, span: float = 2.0) -> Tensor:
        """(K * steps, C, H, W): one row per category, continuous code ``code`` going from
        -span to span along the row, the other codes at 0 and the noise fixed for the grid."""
        cfg, dev = self.config, self.device
        k = max(cfg.categories, 1)
        z = torch.randn(1, cfg.noise, device=dev).expand(k * steps, -1)  # one z for all
        c = torch.arange(k, device=dev).repeat_interleave(steps)  # (K * steps,)
        u = torch.zeros(k * steps, cfg.continuous, device=dev)
        u[:, code] = torch.linspace(-span, span, steps, device=dev).repeat(k)
        one_hot = F.one_hot(c, cfg.categories).float() if cfg.categories else z[:, :0]
        return (torch.tanh(self.sampler(torch.cat([z, one_hot, u], 1))) + 1) / 2

    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """``traversal.png`` (continuous code 1) and ``traversal-2.png``, ... (the others): rows
        are the categories, columns the code from -2 to 2 (the prior covers [-1, 1])."""
        from genlab.images import save_grid

        paths = []
        for i in range(self.config.continuous):
            name = "traversal.png" if i == 0 else f"traversal-{i + 1}.png"
            paths.append(save_grid(self.traversal(i), Path(folder) / name, nrow=9))
        return paths


def unsupervised_error(model: InfoGAN, data: Any, batch_size: int = 500) -> float:
    """Classification error of the categorical code on labelled ``data`` after the best
    one-to-one matching of categories to classes (the paper's 5% on MNIST); the other namings
    of the clusters: :func:`genlab.metrics.clustering.cluster_report`."""
    if data.y is None:
        raise ValueError(f"the unsupervised error needs labels: {data.describe()} has none")
    k = check_clusters(model)
    codes = cluster_probabilities(model, data, batch_size).argmax(1)  # (N,)
    labels = data.y.long()
    return clustering_error(codes, labels, k, max(int(labels.max()) + 1, k))
