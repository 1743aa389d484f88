"""CycleGAN (Zhu et al. 2017, arXiv:1703.10593): image-to-image translation without pairs.

Two unaligned image collections A and B (coloured and grey digits, printed and hand-written
digits) and no pairs between them. A generator G_ab maps A to B and G_ba maps B to A; a
discriminator per domain (D_b, D_a) tells real images of its domain from translated ones. An
adversarial loss alone only makes G_ab(A) look like *some* B image; the paper's key idea is
**cycle consistency**: G_ba(G_ab(a)) should give back a (and G_ab(G_ba(b)) back b), an L1 loss
weighted by lambda = 10, which forces the translation to keep the content of the input. An
**identity loss** (weight 0.5 * lambda) asks G_ab(b) = b: a generator fed an image already in
its target domain leaves it alone, which keeps colours from drifting.

Choices of the paper kept here:
- least-squares adversarial losses (Mao et al. 2017; ``objective`` "lsgan"), which train more
  stably than the log loss. The paper's generator term is (D(G(x)) - 1)^2, twice the shared
  ``g_loss("lsgan")``, so it is doubled here to keep the paper's balance with lambda;
- generators of the Johnson et al. 2016 kind: a 7x7 convolution, two stride-2 convolutions
  down, residual blocks, two stride-2 transposed convolutions up, a 7x7 convolution and tanh,
  with instance normalisation (an image's statistics, not the batch's: a translation of one
  image must not depend on the others) and reflection padding;
- 70x70 PatchGAN discriminators: a few 4x4 convolutions giving a map of logits, each judging
  one patch, so D models texture and style and G keeps the layout;
- D learns from a history of 50 translated images per domain (Shrivastava et al. 2017) rather
  than only the latest ones: once full, each new image is returned as is or, with probability
  1/2, swapped for a stored one. It damps the oscillation of the two players. The history is
  registered buffers (images + count), so it is saved, checkpointed and resumed exactly, and it
  draws with the global torch RNG, which fit restores on resume;
- Adam(2e-4, beta1 0.5), the learning rate constant for the first half of training and
  decaying linearly to 0 over the second (fit's ``schedule="linear"``).

The model translates (``translate(x, {"to": "b"})`` A -> B, ``{"to": "a"}`` B -> A); it has no
unconditional sampler, so ``sample`` is not one of its capabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.adversarial import Adversarial, check_objective, d_loss, g_loss
from genlab.nn import crop_to, frozen, pad_to, working_size


@dataclass
class CycleGANConfig:
    width: int = 64  # channels of G's first layer (doubled at each down-sampling)
    downs: int = 2  # stride-2 down-samplings in G (fewer on images too small for them)
    blocks: int = 6  # residual blocks at G's lowest resolution (paper: 6 at 128x128, 9 at 256)
    d_width: int = 64  # channels of D's first layer
    d_downs: int = 3  # stride-2 convolutions in D (the 70x70 PatchGAN has 3)
    cycle: float = 10.0  # lambda: weight of the cycle-consistency L1 loss
    identity: float = 0.5  # weight of the identity loss, as a fraction of lambda (0: off)
    pool: int = 50  # translated images per domain kept for D (0: D sees only the latest)
    objective: str = "lsgan"  # the adversarial losses (genlab.models.adversarial)


def _levels(side: int, wanted: int, smallest: int) -> int:
    """How many halvings of ``side`` fit while keeping at least ``smallest`` pixels a side
    (instance norm needs more than one pixel)."""
    n = 0
    while n < wanted and side >> (n + 1) >= smallest:
        n += 1
    return n


class _Residual(nn.Module):
    """x + conv(relu(norm(conv(x)))): the block keeps the image unless it learns a change."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """x (B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1], worked on the padded square."""

    def __init__(self, shape: tuple[int, int, int], width: int, downs: int, blocks: int) -> None:
        super().__init__()
        c, self.h, self.w = shape
        self.side = working_size(self.h, self.w)
        n = _levels(self.side, downs, 2)
        chans = [width * 2**i for i in range(n + 1)]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(c, width, 7),
                                   nn.InstanceNorm2d(width), nn.ReLU()]
        for a, b in zip(chans, chans[1:], strict=False):  # (B, a, S, S) -> (B, b, S/2, S/2)
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.InstanceNorm2d(b), nn.ReLU()]
        layers += [_Residual(chans[-1]) for _ in range(blocks)]
        for a, b in zip(chans[::-1], chans[::-1][1:], strict=False):  # and back up
            layers += [nn.ConvTranspose2d(a, b, 3, 2, 1, output_padding=1),
                       nn.InstanceNorm2d(b), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, c, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # The edge pixels, not a constant, fill the border (28x28 -> 32x32): no edge invented.
        side = self.side
        dh, dw = side - self.h, side - self.w
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")
        return crop_to(self.net(x), self.h, self.w)  # (B, C, H, W)


class PatchDiscriminator(nn.Module):
    """x (B, C, H, W) in [-1, 1] -> a map of logits (B, 1, h, w), one per overlapping patch:
    stride-2 4x4 convolutions (``width`` channels first, doubling; instance norm on all but
    the first), one stride-1 4x4 convolution, then a 4x4 convolution to one channel."""

    def __init__(self, shape: tuple[int, int, int], width: int, downs: int) -> None:
        super().__init__()
        c, h, w = shape
        self.side = working_size(h, w)
        n = _levels(self.side, downs, 4)
        chans = [c] + [width * 2**i for i in range(n + 1)]
        layers: list[nn.Module] = []
        for i in range(n + 1):
            stride = 2 if i < n else 1
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 4, stride, 1))
            if i:
                layers.append(nn.InstanceNorm2d(chans[i + 1]))
            layers.append(nn.LeakyReLU(0.2))
        layers.append(nn.Conv2d(chans[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(pad_to(x, self.side, -1.0))  # (B, 1, h, w)


class History(nn.Module):
    """The image history of Shrivastava et al. 2017 (``size`` images of ``shape``): the first
    ``size`` images queried are stored and returned; after that each is returned with
    probability 1/2, else swapped for a uniformly chosen stored image, which it replaces."""

    def __init__(self, size: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))  # (size, C, H, W)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, new: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) for D: some new images, some from the history."""
        if self.size == 0:
            return new
        new = new.detach()
        stored = int(self.count)  # the one host read; the rest stays on the device
        k = min(new.shape[0], self.size - stored)
        if k > 0:  # still filling: keep and return
            self.images[stored : stored + k] = new[:k].to(self.images.dtype)
            self.count += k
        rest = new.shape[0] - k
        if rest <= 0:
            return new
        swap = torch.rand(rest, device=new.device) < 0.5  # (rest,)
        where = torch.randint(self.size, (rest,), device=new.device)  # (rest,)
        out = [new[:k]]
        for i in range(rest):  # one by one, as a repeated index must see the last swap
            fresh = new[k + i].to(self.images.dtype)
            old = self.images[where[i]].clone()
            out.append(torch.where(swap[i], old, fresh)[None].to(new.dtype))
            self.images[where[i]] = torch.where(swap[i], fresh, old)
        return torch.cat(out)


class CycleGAN(Adversarial):
    """Unpaired translation between domain A (batch field ``x``) and B (``x_b``)."""

    name = "cyclegan"
    paper = "Zhu et al. 2017, Unpaired Image-to-Image Translation using Cycle-Consistent " \
            "Adversarial Networks (arXiv:1703.10593)"
    Config = CycleGANConfig
    data_kind = "continuous"
    needs = ("x", "x_b")
    # G first, then D on G's translations of this step (handed over, not drawn again), as in
    # the authors' loop.
    players = ("g", "d")
    owners = {"d": ("d_a", "d_b"), "g": ("g_ab", "g_ba")}
    averaged = "g_ab"
    presets = {
        # Coloured MNIST -> grey MNIST at 32x32 on one CPU core: a narrow G (16 channels, 3
        # residual blocks) and D (2 downs), batch 8, 1500 steps (about 9 minutes on an idle
        # core); the learning rate decays linearly over the last 750.
        "cpu": {
            "model": {"width": 16, "blocks": 3, "d_width": 32, "d_downs": 2},
            "train": {"batch_size": 8, "lr": 2e-4, "steps": 1500, "schedule": "linear",
                      "binarize": None},
            "data": "mnist:mnist-colour",
        },
        # The paper: 6 residual blocks (its 128x128 generator), width 64, 70x70 PatchGAN,
        # batch 1, lr 2e-4 for 100 epochs then linear decay to 0 over 100 more (200 epochs of
        # the 10k training images = 2M steps).
        "paper": {
            "model": {},
            "train": {"batch_size": 1, "lr": 2e-4, "steps": 2_000_000, "schedule": "linear",
                      "binarize": None},
            "data": "mnist:mnist-colour",
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: CycleGANConfig | None = None) -> None:
        config = config if config is not None else CycleGANConfig()
        super().__init__(shape, config)
        check_objective(config.objective)
        if config.objective == "wgan":
            raise ValueError("objective wgan needs a gradient penalty: use lsgan, ns or hinge")
        if config.width < 1 or config.d_width < 1 or config.blocks < 0 or config.pool < 0:
            raise ValueError("width and d_width must be at least 1, blocks and pool at least 0")
        self.g_ab = ResnetGenerator(self.shape, config.width, config.downs, config.blocks)
        self.g_ba = ResnetGenerator(self.shape, config.width, config.downs, config.blocks)
        self.d_a = PatchDiscriminator(self.shape, config.d_width, config.d_downs)
        self.d_b = PatchDiscriminator(self.shape, config.d_width, config.d_downs)
        self.history_a = History(config.pool, self.shape)  # translations into A, for D_a
        self.history_b = History(config.pool, self.shape)
        self.keep_average()

    # ---- the training protocol ---------------------------------------------------------------
    def _adversarial(self, logits: Tensor) -> Tensor:
        loss = g_loss(self.config.objective, logits)
        return 2 * loss if self.config.objective == "lsgan" else loss  # (D(G(x)) - 1)^2

    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        self.check_input(batch["x"])
        self.check_input(batch["x_b"])
        a, b = batch["x"] * 2 - 1, batch["x_b"] * 2 - 1  # (B, C, H, W) in [-1, 1]
        obj = self.config.objective
        if player == "d":
            handed = self.take_over(batch)  # G's fakes of this step, when G went first
            if handed is None:
                with torch.no_grad():
                    handed = {"fake_b": self.g_ab(a), "fake_a": self.g_ba(b)}
            fake_b = self.history_b(handed["fake_b"])
            fake_a = self.history_a(handed["fake_a"])
            loss_a = d_loss(obj, self.d_a(a), self.d_a(fake_a))
            loss_b = d_loss(obj, self.d_b(b), self.d_b(fake_b))
            return loss_a + loss_b, {"d_a": float(loss_a.detach()),
                                     "d_b": float(loss_b.detach())}
        if player == "g":
            fake_b, fake_a = self.g_ab(a), self.g_ba(b)  # (B, C, H, W)
            self.hand_over(batch, fake_b=fake_b, fake_a=fake_a)  # D judges these next
            with frozen(self.d_a, self.d_b):
                adv = self._adversarial(self.d_b(fake_b)) + self._adversarial(self.d_a(fake_a))
            cycle = (self.g_ba(fake_b) - a).abs().mean() + (self.g_ab(fake_a) - b).abs().mean()
            loss = adv + self.config.cycle * cycle
            logs = {"g_adv": float(adv.detach()), "cycle": float(cycle.detach()) / 2}
            if self.config.identity > 0:
                same = (self.g_ab(b) - b).abs().mean() + (self.g_ba(a) - a).abs().mean()
                loss = loss + self.config.identity * self.config.cycle * same
                logs["identity"] = float(same.detach()) / 2
            return loss, logs
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    # ---- capabilities ----------------------------------------------------------------------
    def _generator(self, to: str) -> nn.Module:
        if to not in ("a", "b"):
            raise ValueError(f"cyclegan translates to domain 'a' or 'b', got {to!r}")
        return self.g_ab if to == "b" else self.g_ba

    def translate(self, x: Tensor, cond: dict[str, Any]) -> Tensor:
        """Images ``x`` (B, C, H, W) in [0, 1] of one domain as the other: ``cond["to"]`` "b"
        (G_ab) or "a" (G_ba)."""
        if "to" not in cond:
            raise ValueError("cyclegan translates between its two domains: cond={'to': 'a'|'b'}")
        self.check_input(x)
        return (self._generator(cond["to"])(x * 2 - 1) + 1) / 2

    @torch.no_grad()
    def cycle(self, x: Tensor, to: str) -> tuple[Tensor, Tensor]:
        """(translated, reconstructed) for ``x`` (B, C, H, W) in [0, 1] sent ``to`` the other
        domain and back."""
        back = "a" if to == "b" else "b"
        y = self.translate(x, {"to": to})
        return y, self.translate(y, {"to": back})

    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """``translations.png``: rows A, A -> B, back to A, then B, B -> A, back to B."""
        from genlab.images import save_grid

        n = min(8, len(data.x))
        a = data.x[:n].to(self.device)
        b = data.fields["x_b"][:n].to(self.device) if "x_b" in data.fields else a
        rows = [a, *self.cycle(a, "b"), b, *self.cycle(b, "a")]
        grid = torch.cat([r.float().cpu() for r in rows])
        return [save_grid(grid, Path(folder) / "translations.png", nrow=n)]
