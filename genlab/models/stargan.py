"""StarGAN (Choi et al. 2018, arXiv:1711.09020): one generator for translation between many
attribute values.

Earlier translation models (pix2pix, CycleGAN) learn one generator per pair of domains: k
domains need k(k-1) of them. StarGAN trains a single generator G(x, c) that takes the image
and the *target* attributes c, one-hot per attribute, concatenated and tiled over the image as
extra input channels, so every translation shares the same weights. Three losses make it work:

- adversarial: a critic D_src says how real G(x, c) looks. The paper trains it as a
  Wasserstein critic with a gradient penalty (WGAN-GP, lambda_gp = 10), five critic steps per
  generator step;
- domain classification: D has a second head D_cls, one softmax per attribute. D learns it on
  real images with their true attributes; G is trained so that D_cls finds the *target*
  attributes in G(x, c) (lambda_cls = 1). That is what makes G obey c;
- reconstruction: translating back, G(G(x, c_trg), c_org), must give x again (L1,
  lambda_rec = 10), a cycle-consistency that keeps everything c does not ask to change (the
  digit, its identity) in place.

The networks follow the paper's shapes scaled to 32x32: G is an encoder (a 7x7 convolution,
two stride-2 convolutions) - residual blocks - decoder (two stride-2 transposed convolutions,
a 7x7 convolution, tanh), with instance norm in the paper (the ``paper`` preset). By default
G here uses batch norm (``norm``, see ``_norm``) and blends its output into the input through
an attention mask (``masked``, see ``_Generator``). D is a PatchGAN body (stride-2 4x4 convolutions,
LeakyReLU 0.01, no normalisation, as a gradient penalty asks) with a 3x3 critic head giving one
score per patch (averaged per image) and a classifier head covering the whole last map.

The model translates, it does not sample: it has no noise input and needs a source image, so
``sample`` is not one of its capabilities (``translate`` is). The mask vector that lets the
paper train on several datasets with different attribute sets at once is not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from genlab.models.adversarial import (
    Adversarial,
    check_objective,
    critic_schedule,
    d_loss,
    g_loss,
    gradient_penalty,
)
from genlab.nn import crop_to, frozen, pad_to, working_size

# What G translates by default: the attributes that change the stroke itself (colour),
# its shape (thickness) and its geometry (rotation): one of each kind, 8 + 3 + 3 values.
DEFAULT_ATTRIBUTES = ("colour", "thickness", "rotation")


@dataclass
class StarGANConfig:
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES  # of genlab.data.attributes.ATTRIBUTES
    width: int = 32  # G's first channels (the paper: 64), doubled by each down-sampling
    blocks: int = 3  # G's residual blocks (the paper: 6)
    norm: str = "batch"  # G's normalisation, of NORMS (the paper: instance; see _norm)
    masked: bool = True  # G's output blends a painted image into x by a mask (paper: False)
    d_width: int = 32  # D's first channels (the paper: 64), doubled by each layer
    objective: str = "wgan"  # the paper: WGAN-GP
    lambda_gp: float = 10.0
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    n_critic: int = 5  # critic steps per generator step
    ema: float = 0.0  # decay of G's moving average used for translation (0: off)


def tile_attributes(attrs: Tensor, sizes: tuple[int, ...], h: int, w: int) -> Tensor:
    """(B, k) value indices -> (B, sum(sizes), h, w): each attribute one-hot, concatenated,
    and repeated over every pixel (the extra input channels of G)."""
    onehot = torch.cat([F.one_hot(attrs[:, j], s) for j, s in enumerate(sizes)], 1)
    return onehot.to(torch.float32)[:, :, None, None].expand(-1, -1, h, w)


def classification_loss(logits: Tensor, attrs: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Sum over attributes of the mean cross-entropy of ``attrs`` (B, k) under the per-attribute
    softmaxes of ``logits`` (B, sum(sizes))."""
    parts = logits.float().split(list(sizes), dim=1)
    return sum(F.cross_entropy(p, attrs[:, j]) for j, p in enumerate(parts))  # type: ignore[return-value]


NORMS = ("instance", "batch")


def _norm(kind: str, c: int) -> nn.Module:
    """G's normalisation: the paper's instance norm, or batch norm.

    Instance norm removes each image's own channel means and scales after every convolution.
    On photographs that is harmless; on a digit in two flat colours it erases the colours
    themselves (what is left of stroke and background is the sign of their difference), and
    the tiled target attributes, constant over the image, survive only at the zero-padded
    border. Batch norm subtracts the *batch's* statistics, so both pass through."""
    return nn.InstanceNorm2d(c, affine=True) if kind == "instance" else nn.BatchNorm2d(c)


class _Residual(nn.Module):
    def __init__(self, c: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), _norm(norm, c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), _norm(norm, c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _downs(side: int, most: int = 2) -> int:
    """Stride-2 steps that leave a map of at least 2x2 (instance norm needs > 1 pixel)."""
    return max(0, min(most, side.bit_length() - 2))


class _Generator(nn.Module):
    """x (B, C, H, W) in [-1, 1], c (B, A, H, W) -> (B, C, H, W) in [-1, 1].

    ``masked`` (GANimation, Pumarola et al. 2018, arXiv:1807.09251): G paints a colour image
    and an attention mask A in [0, 1], and returns A * colour + (1 - A) * x, so whatever the
    target does not ask to change is copied from the input instead of redrawn. With a few
    thousand steps instead of the paper's 200k, a G that must first learn to redraw the whole
    input has learned neither the identity nor the attributes (reconstruction L1 ~0.5 after
    1,500 steps); the masked G starts at the identity and spends its steps on the change."""

    def __init__(self, c: int, a: int, side: int, width: int, blocks: int, norm: str,
                 masked: bool) -> None:
        super().__init__()
        n = _downs(side)
        layers: list[nn.Module] = [nn.Conv2d(c + a, width, 7, 1, 3, bias=False),
                                   _norm(norm, width), nn.ReLU()]
        ch = width
        for _ in range(n):  # encoder: halve the side, double the channels
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1, bias=False), _norm(norm, 2 * ch),
                       nn.ReLU()]
            ch *= 2
        layers += [_Residual(ch, norm) for _ in range(blocks)]
        for _ in range(n):  # decoder: back up to the working size
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       _norm(norm, ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers)
        self.masked = masked
        # The image (C channels), and with ``masked`` one more: the attention logit.
        self.out = nn.Conv2d(ch, c + int(masked), 7, 1, 3)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        y = self.out(self.net(torch.cat([x, c.to(x.dtype)], 1)))  # (B, C [+1], S, S)
        if not self.masked:
            return torch.tanh(y)
        colour, attention = torch.tanh(y[:, :-1]), torch.sigmoid(y[:, -1:])
        return attention * colour + (1 - attention) * x


class _Discriminator(nn.Module):
    """x (B, C, S, S) in [-1, 1] -> (critic score (B,), attribute logits (B, A))."""

    def __init__(self, c: int, a: int, side: int, width: int) -> None:
        super().__init__()
        n = max(1, (side // 4).bit_length() - 1)  # down to 4x4 (2x2 on tiny images)
        layers: list[nn.Module] = []
        ch_in, ch = c, width
        for _ in range(n):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.01)]
            ch_in, ch = ch, 2 * ch
        self.body = nn.Sequential(*layers)
        last = side >> n
        self.src = nn.Conv2d(ch_in, 1, 3, 1, 1, bias=False)  # one score per patch
        self.cls = nn.Conv2d(ch_in, a, last, bias=False)  # the whole map -> attribute logits

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)  # (B, F, last, last)
        return self.src(h).flatten(1).mean(1), self.cls(h).flatten(1)


class StarGAN(Adversarial):
    """Attribute translation of colour images in [0, 1] (rescaled to [-1, 1] inside)."""

    name = "stargan"
    paper = ("Choi et al. 2018, StarGAN: Unified Generative Adversarial Networks for "
             "Multi-Domain Image-to-Image Translation (arXiv:1711.09020)")
    Config = StarGANConfig
    data_kind = "continuous"
    needs = ("x", "attrs")
    presets = {
        # mnist-attrs on one CPU core: 5000 steps of batch 16 (1000 generator steps), 23
        # minutes on the shared machine. Two departures from the paper, both settings:
        # batch norm in G (see _norm) and the masked output (see _Generator); and
        # lambda_cls = 5: with 1, G settled on copying its input (reconstruction 0.02,
        # D_cls sure the attributes had not changed), as the identity is where the
        # reconstruction and adversarial losses both vanish.
        "cpu": {
            "model": {"lambda_cls": 5.0},
            "train": {"batch_size": 16, "lr": 1e-4, "steps": 5000, "binarize": None},
            "data": "mnist-attrs",
        },
        # The paper (CelebA 128x128): 64 channels, 6 residual blocks, batch 16, Adam lr 1e-4
        # (beta1 0.5), 200k iterations of five critic steps each, the learning rate decaying
        # linearly to 0 over the last half (schedule "linear").
        "paper": {
            "model": {"width": 64, "blocks": 6, "d_width": 64, "norm": "instance",
                      "masked": False},
            "train": {"batch_size": 16, "lr": 1e-4, "steps": 1_000_000, "schedule": "linear",
                      "binarize": None},
            "data": "mnist-attrs",
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: StarGANConfig | None = None) -> None:
        config = config if config is not None else StarGANConfig()
        super().__init__(shape, config)
        config.attributes = tuple(config.attributes)
        unknown = [a for a in config.attributes if a not in ATTRIBUTES]
        if unknown or not config.attributes or len(set(config.attributes)) < len(
                config.attributes):
            raise ValueError(f"attributes must be distinct names among {', '.join(ATTRIBUTES)}, "
                             f"got {config.attributes}")
        check_objective(config.objective)
        if config.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
        if config.n_critic < 1:
            raise ValueError(f"n_critic must be at least 1, got {config.n_critic}")
        # Columns of the (B, 6) attribute rows that G controls, and their numbers of values.
        self.columns = tuple(ATTRIBUTE_NAMES.index(a) for a in config.attributes)
        self.sizes = tuple(len(ATTRIBUTES[a]) for a in config.attributes)
        c, h, w = self.shape
        self.side = working_size(h, w)
        a = sum(self.sizes)
        self.generator = _Generator(c, a, self.side, config.width, config.blocks, config.norm,
                                    config.masked)
        self.discriminator = _Discriminator(c, a, self.side, config.d_width)
        self.keep_average()

    # ---- pieces ------------------------------------------------------------------------------
    def players_at(self, step: int) -> tuple[str, ...]:
        return critic_schedule(step, self.config.n_critic)

    def _controlled(self, attrs: Tensor) -> Tensor:
        """(B, 6) attribute rows -> (B, k) the columns this model translates."""
        return attrs[:, list(self.columns)].long()

    def _inside(self, x: Tensor) -> Tensor:
        """[0, 1] images (B, C, H, W) -> [-1, 1] on the working square (B, C, S, S)."""
        return pad_to(x * 2 - 1, self.side, -1.0)

    def _translate(self, g: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """G on working-square images x (B, C, S, S) in [-1, 1] to targets (B, k)."""
        return g(x, tile_attributes(target, self.sizes, self.side, self.side))

    def random_targets(self, n: int, device: torch.device) -> Tensor:
        """(n, k) target values, each attribute uniform over its values (the global RNG)."""
        return torch.stack([torch.randint(0, s, (n,), device=device) for s in self.sizes], 1)

    def reconstruction_loss(self, g: nn.Module, fake: Tensor, x: Tensor,
                            original: Tensor) -> Tensor:
        """Mean L1 between x and G(fake, original), where fake = G(x, c_trg): translated back to
        its own attributes an image must come back (all on the working square, in [-1, 1])."""
        back = self._translate(g, fake, original)
        return (back.float() - x.float()).abs().mean()

    # ---- the training protocol ---------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        cfg = self.config
        real = self._inside(x)  # (B, C, S, S)
        original = self._controlled(batch["attrs"].to(x.device))  # (B, k)
        target = self.random_targets(x.shape[0], x.device)  # (B, k)
        if player == "d":
            with torch.no_grad():  # D's step must not build (or backprop into) G's graph
                fake = self._translate(self.generator, real, target)
            src_real, cls_real = self.discriminator(real)
            src_fake, _ = self.discriminator(fake)
            adv = d_loss(cfg.objective, src_real.float(), src_fake.float())
            cls = classification_loss(cls_real, original, self.sizes)
            loss = adv + cfg.lambda_cls * cls
            logs = {"d_adv": float(adv.detach()), "d_cls": float(cls.detach())}
            if cfg.lambda_gp > 0:
                gp = gradient_penalty(lambda t: self.discriminator(t)[0], real, fake)
                loss = loss + cfg.lambda_gp * gp
                logs["gp"] = float(gp.detach())
            return loss, logs
        if player == "g":
            with frozen(self.discriminator):  # G's step must not touch D's weights
                fake = self._translate(self.generator, real, target)
                src_fake, cls_fake = self.discriminator(fake)
            adv = g_loss(cfg.objective, src_fake.float())
            cls = classification_loss(cls_fake, target, self.sizes)
            rec = self.reconstruction_loss(self.generator, fake, real, original)
            loss = adv + cfg.lambda_cls * cls + cfg.lambda_rec * rec
            return loss, {"g_adv": float(adv.detach()), "g_cls": float(cls.detach()),
                          "g_rec": float(rec.detach())}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    # ---- capabilities ------------------------------------------------------------------------
    def translate(self, x: Tensor, cond: dict[str, Any]) -> Tensor:
        """``x`` (B, C, H, W) in [0, 1] given the attributes ``cond["attrs"]`` (B, 6) int64
        (rows of :func:`genlab.data.attributes.parse_attrs`; columns this model does not
        translate are ignored) -> (B, C, H, W) in [0, 1]."""
        if "attrs" not in cond:
            raise ValueError(f"{self.name} translates to attributes: cond={{'attrs': (B, 6)}}, "
                             f"got keys {sorted(cond)}")
        self.check_input(x)
        attrs = torch.as_tensor(cond["attrs"], device=x.device)
        if attrs.dim() == 1:
            attrs = attrs.expand(x.shape[0], -1)
        if attrs.shape != (x.shape[0], len(ATTRIBUTE_NAMES)):
            raise ValueError(f"cond['attrs'] must be (B, {len(ATTRIBUTE_NAMES)}) for B = "
                             f"{x.shape[0]} images, got {tuple(attrs.shape)}")
        y = self._translate(self.sampler, self._inside(x), self._controlled(attrs))
        return crop_to((y.float() + 1) / 2, *self.shape[1:]).clamp(0, 1)

    @torch.no_grad()
    def classify(self, x: Tensor) -> dict[str, Tensor]:
        """D_cls's guess per attribute (argmax of each softmax) for images in [0, 1]: the
        model's own opinion of its translations, not an independent measure."""
        self.check_input(x)
        _, logits = self.discriminator(self._inside(x))
        parts = logits.split(list(self.sizes), dim=1)
        return {a: p.argmax(1) for a, p in zip(self.config.attributes, parts, strict=True)}

    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """``translations.png``: 8 inputs, one per row; the first column the input, then the
        input translated to each value of each attribute in turn (others kept as they were)."""
        from genlab.images import save_grid

        n = min(8, len(data))
        x = data.x[:n].to(self.device)
        attrs = data.fields["attrs"][:n].to(self.device)
        columns = [x]
        for col, size in zip(self.columns, self.sizes, strict=True):
            for v in range(size):
                target = attrs.clone()
                target[:, col] = v
                columns.append(self.translate(x, {"attrs": target}))
        grid = torch.stack(columns, 1).flatten(0, 1).cpu()  # row by row
        path = Path(folder) / "translations.png"
        save_grid(grid, path, nrow=len(columns))
        return [path]


# ---- measures of translations (functions of a classifier's predictions, so testable alone) ----


def attribute_accuracy(predicted: Tensor, requested: Tensor) -> float:
    """Share of translated images whose predicted attribute value (B,) is the requested one."""
    return float((predicted.long() == requested.long()).float().mean())


def digit_preservation(predicted: Tensor, source: Tensor) -> float:
    """Share of translated images whose predicted digit (B,) is the source image's digit."""
    return float((predicted.long() == source.long()).float().mean())
