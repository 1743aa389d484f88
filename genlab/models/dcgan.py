"""Deep convolutional GAN (Radford, Metz & Chintala 2015, arXiv:1511.06434).

The GAN game of Goodfellow et al. (genlab.models.gan) with convolutional players, made stable
by a handful of architectural rules the paper found after extensive search:

- no pooling: D downsamples with stride-2 convolutions, G upsamples with stride-2 transposed
  ("fractionally-strided") convolutions, so each net learns its own spatial resampling;
- no fully connected hidden layers: z is projected to a 4x4 map (a transposed convolution
  over a 1x1 input is that projection) and D's logit is one convolution over its last 4x4 map;
- batch norm in every layer except G's output and D's input (normalising those made samples
  oscillate), which stops G from collapsing all z to one point;
- ReLU in G with a tanh output (images in [-1, 1]), LeakyReLU (slope 0.2) in D;
- Adam with lr 2e-4 and beta1 0.5 (the momentum of 0.9 oscillated); weights from N(0, 0.02).

Both nets (``genlab.nn.ConvGenerator`` / ``ConvDiscriminator``) work on the power-of-two
square around the image: 28x28 MNIST is padded to 32x32 in D and cropped from 32x32 in G;
64x64 (the paper's LSUN / faces / ImageNet size) gets one more layer in each. Any channel count
works: grey levels or colour, pixels in [0, 1] mapped to [-1, 1].

Batch norm at sampling time. G's batch norm is trained on batch statistics of the fakes; in
eval mode (``model.eval()``, as genlab samples) it uses the running averages of those
statistics instead, so each image depends on its own z alone. The paper's code sampled with
batch statistics. ``sample_stats`` chooses: "running" (default: eval-mode batch norm, with
samples independent of the batch they are drawn in) or "batch" (the batch's own statistics,
as during training); in training mode G always uses batch statistics. With the cpu preset on
MNIST the two give grids that cannot be told apart and the same FID (5.36 vs 5.34, 2,000
samples, genlab's MNIST features): the running averages track G well at lr 2e-4, so eval mode
costs nothing and keeps samples independent.

Representation (the paper's CIFAR-10 experiment): ``encode`` takes every layer of D, max-pools
each layer's map to a 4x4 grid (``min(4, side)`` on tiny images) and concatenates them,
flattened: width * (1 + 2 + ... + 2**(n-1)) * 16 numbers, e.g. (64 + 128 + 256) * 16 = 7168 for
32x32 images at width 64 (the paper: 28672 features from its wider ImageNet-trained D).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.adversarial import Adversarial, check_objective, d_loss, g_loss, r1_penalty
from genlab.nn import ConvDiscriminator, ConvGenerator, dcgan_init, frozen

NOISES = ("uniform", "normal")
SAMPLE_STATS = ("running", "batch")


@dataclass
class DCGANConfig:
    latent: int = 100  # the paper's z: 100 numbers
    width: int = 64  # channels of D's first layer and G's last hidden one, doubling inwards
    noise: str = "uniform"  # z ~ U(-1, 1) as in the paper, or "normal" N(0, I)
    slope: float = 0.2  # of D's LeakyReLU
    objective: str = "ns"  # the losses (genlab.models.adversarial): ns, hinge, lsgan
    ema: float = 0.0  # decay of the generator's moving average used for sampling (0: off)
    sample_stats: str = "running"  # G's batch norm when sampling in eval mode: running, batch
    r1: float = 0.0  # gamma of the R1 penalty on real images (Mescheder et al. 2018; 0: off)


@contextlib.contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s batch norms normalise with the batch's own statistics
    even in eval mode, and leave their running averages untouched (a batch norm without
    running buffers does exactly that)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [(m.running_mean, m.running_var) for m in norms]
    for m in norms:
        m.running_mean = m.running_var = None
    try:
        yield
    finally:
        for m, (mean, var) in zip(norms, kept, strict=True):
            m.running_mean, m.running_var = mean, var


class DCGAN(Adversarial):
    """DCGAN on images with levels in [0, 1], 1 or 3 (any) channels, any size up to 64x64 and
    beyond (sizes are padded to a power-of-two square)."""

    name = "dcgan"
    paper = ("Radford et al. 2015, Unsupervised Representation Learning with Deep "
             "Convolutional Generative Adversarial Networks (arXiv:1511.06434)")
    Config = DCGANConfig
    data_kind = "grey"
    presets = {
        # MNIST on one CPU core: width 32 (G: 128 -> 64 -> 32 channels at 4, 8, 16 pixels; D
        # mirrors it), batch 64, 6000 steps (7.7 epochs): about 650 training images/s on an
        # idle core, 10 minutes with the validation FIDs. Most digits are readable by 3000
        # steps. Fashion-MNIST trains with the same preset (--data fashion-mnist).
        "cpu": {
            "model": {"width": 32},
            "train": {"batch_size": 64, "lr": 2e-4, "steps": 6000, "binarize": None},
        },
        # The paper (LSUN, faces, ImageNet-1k at 64x64): G from z (100, uniform) to 4x4x1024,
        # then 512, 256, 128 channels and the image (width 128); D mirrors it with LeakyReLU
        # 0.2; minibatch 128, Adam lr 2e-4, beta1 0.5; N(0, 0.02) weights. The paper trained
        # LSUN for one to five epochs; 100k steps here.
        "paper": {
            "model": {"width": 128, "latent": 100, "noise": "uniform"},
            "train": {"batch_size": 128, "lr": 2e-4, "steps": 100000, "binarize": None},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: DCGANConfig | None = None) -> None:
        config = config if config is not None else DCGANConfig()
        super().__init__(shape, config)
        if config.latent < 1 or config.width < 1:
            raise ValueError("latent and width must be at least 1")
        if config.noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {config.noise!r}")
        if config.sample_stats not in SAMPLE_STATS:
            raise ValueError(f"sample_stats must be one of {', '.join(SAMPLE_STATS)}, "
                             f"got {config.sample_stats!r}")
        check_objective(config.objective)
        if config.objective == "wgan":  # a critic without its gradient penalty: not this model
            raise ValueError("objective wgan needs a gradient penalty: use progan or stargan")
        self.generator = ConvGenerator(config.latent, self.shape, config.width)
        self.discriminator = ConvDiscriminator(self.shape, config.width, slope=config.slope)
        dcgan_init(self)
        self.keep_average()

    # ---- the two networks on [-1, 1] images ------------------------------------------------
    def noise(self, n: int, device: torch.device) -> Tensor:
        """z (n, latent): U(-1, 1) as in the paper, or N(0, I)."""
        if self.config.noise == "uniform":
            return torch.rand(n, self.config.latent, device=device) * 2 - 1
        return torch.randn(n, self.config.latent, device=device)

    def generate(self, z: Tensor, net: nn.Module | None = None) -> Tensor:
        """z (B, latent) -> images (B, C, H, W) in [-1, 1] (tanh: the paper's output)."""
        return torch.tanh((net if net is not None else self.generator)(z))

    # ---- the training protocol (players "d" and "g", Adam beta1 0.5: Adversarial) ---------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        z = self.noise(x.shape[0], x.device)  # (B, latent)
        if player == "d":
            with torch.no_grad():  # D's step needs G's images, not G's graph
                fake = self.generate(z)  # (B, C, H, W)
            # Real and fake go through D as separate batches, so each has its own batch
            # statistics (the paper's and the reference code's practice).
            real = x * 2 - 1  # (B, C, H, W)
            real_logit = self.discriminator(real)  # (B,)
            fake_logit = self.discriminator(fake)  # (B,)
            loss = d_loss(self.config.objective, real_logit, fake_logit)
            if self.config.r1 > 0:
                loss = loss + self.config.r1 / 2 * r1_penalty(self.discriminator, real)
            return loss, {"d_real": float(torch.sigmoid(real_logit.detach()).mean()),
                          "d_fake": float(torch.sigmoid(fake_logit.detach()).mean())}
        if player == "g":
            with frozen(self.discriminator):  # through D, without changing D's weights
                fake_logit = self.discriminator(self.generate(z))  # (B,)
            return g_loss(self.config.objective, fake_logit), {
                "d_fake": float(torch.sigmoid(fake_logit.detach()).mean())}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) with levels in [0, 1]; see the module docstring for
        which batch-norm statistics G uses (``sample_stats``)."""
        z = self.noise(n, self.device)  # (n, latent)
        net = self.sampler
        batch = self.config.sample_stats == "batch"
        with batch_statistics(net) if batch else contextlib.nullcontext():
            return (self.generate(z, net) + 1) / 2  # (n, C, H, W)

    # ---- capabilities ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The paper's CIFAR-10 features (B, F): each of D's layers max-pooled to a 4x4 grid
        (smaller when the map is), flattened and concatenated, input side first."""
        self.check_input(x)
        maps = self.discriminator.layer_maps(x * 2 - 1)
        return torch.cat([F.adaptive_max_pool2d(m, min(4, m.shape[-1])).flatten(1)
                          for m in maps], dim=1)

    @torch.no_grad()
    def discriminate(self, x: Tensor) -> Tensor:
        """D's logit (B,) for images ``x`` in [0, 1]: how real D finds them. A score learned
        against this generator's fakes, not a likelihood (genlab.metrics.detection uses it)."""
        self.check_input(x)
        return self.discriminator(x * 2 - 1)
