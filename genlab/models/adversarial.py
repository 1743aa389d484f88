"""What every adversarial model shares: players that own sub-networks, the losses, the
generator's moving average, and schedules that are pure functions of the step.

A GAN is a game: each player (the discriminator or critic ``"d"``, the generator ``"g"``, and
for some models more) has its own optimizer and owns some sub-modules. :class:`Adversarial`
declares that ownership once (``owners``), so ``parameters_for`` is generic, and sets Adam's
beta1 to 0.5 (Radford et al. 2015: a long momentum lags behind a moving opponent). The losses
below take the discriminator's logits; a model picks one by name (its config's
``objective``). When a config's ``ema`` is above 0 the model keeps an exponential moving
average of its generator, updated in ``after_step`` after each generator step and used by
``sample`` (Karras et al. 2018; Yazici et al. 2019): it is a sub-module like any other, so it
is saved with the weights, checkpointed and resumed exactly.

Schedules (critic steps per generator step, progressive growth) are functions of the step
number alone: a run killed anywhere resumes on the same schedule, with nothing to restore.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.base import GenerativeModel
from genlab.nn import ema_update

# ---- losses: functions of D's logits on real and generated images ------------------------------
#
# "ns": the non-saturating GAN loss (Goodfellow et al. 2014): D minimises -log D(x) -
#       log(1 - D(G(z))), G minimises -log D(G(z)) (log sigmoid(t) = -softplus(-t)).
# "hinge": Lim & Ye 2017 / Miyato et al. 2018.
# "lsgan": least squares (Mao et al. 2017), targets 1 for real and 0 for fake.
# "wgan": the Wasserstein critic (Arjovsky et al. 2017), used with a gradient penalty.

OBJECTIVES = ("ns", "hinge", "lsgan", "wgan")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def d_loss(objective: str, real: Tensor, fake: Tensor) -> Tensor:
    """The discriminator's loss from its logits on real (B,) and generated (B,) images."""
    if objective == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if objective == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if objective == "lsgan":
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    if objective == "wgan":
        return fake.mean() - real.mean()
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def g_loss(objective: str, fake: Tensor) -> Tensor:
    """The generator's loss from D's logits (B,) on its images."""
    if objective == "ns":
        return F.softplus(-fake).mean()
    if objective in ("hinge", "wgan"):
        return -fake.mean()
    if objective == "lsgan":
        return 0.5 * ((fake - 1) ** 2).mean()
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def _input_gradient(critic: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """d critic(x).sum() / dx (B, ...), with a graph, so a penalty on it can be trained."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x D(x_hat)|| - 1)^2] at points x_hat drawn
    uniformly on the segments between real and generated images; multiply by lambda (10)."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)  # (B, 1, ...)
    between = eps * real.detach() + (1 - eps) * fake.detach()
    grad = _input_gradient(critic, between).flatten(1)  # (B, D)
    return ((grad.norm(dim=1) - 1) ** 2).mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] on real images; multiply by gamma / 2."""
    return _input_gradient(critic, real).flatten(1).pow(2).sum(1).mean()


# ---- schedules: pure functions of the step ------------------------------------------------------


def critic_schedule(step: int, n_critic: int, critic: str = "d",
                    generator: str = "g") -> tuple[str, ...]:
    """The players at ``step`` when the critic takes ``n_critic`` steps per generator step:
    the critic every step, the generator after every ``n_critic``-th critic step."""
    if n_critic <= 1 or (step + 1) % n_critic == 0:
        return (critic, generator)
    return (critic,)


def growth(images: int, phase: int, levels: int) -> tuple[int, float]:
    """Progressive growth (Karras et al. 2018) after ``images`` training images: the level
    reached (0 = the first resolution, ``levels`` - 1 the last) and the fade-in alpha of that
    level's new layers. Level 0 trains for ``phase`` images; each later level fades in over
    ``phase`` images (alpha 0 -> 1), then trains stable for ``phase`` more; the last level stays.
    """
    if phase <= 0:
        return levels - 1, 1.0
    if images < phase:
        return 0, 1.0
    level, into = divmod(images - phase, 2 * phase)
    level += 1
    if level >= levels:
        return levels - 1, 1.0
    return level, min(1.0, into / phase)


# ---- the base class ----------------------------------------------------------------------------


class Adversarial(GenerativeModel):
    """A model trained as a game. Subclasses set ``players`` and ``owners`` (player -> names of
    the sub-modules its optimizer updates), build their networks, then call ``keep_average()``
    at the end of ``__init__`` so the generator's moving average starts from its first weights.
    ``sampler`` is the network to sample with: the average when the config's ``ema`` > 0."""

    players: ClassVar[tuple[str, ...]] = ("d", "g")
    owners: ClassVar[dict[str, tuple[str, ...]]] = {"d": ("discriminator",), "g": ("generator",)}
    # The sub-module whose weights are averaged, and the player whose step moves it.
    averaged: ClassVar[str] = "generator"
    averaged_by: ClassVar[str] = "g"
    betas: ClassVar[tuple[float, float]] = (0.5, 0.999)

    def __init__(self, shape: tuple[int, int, int], config: Any) -> None:
        super().__init__(shape, config)
        for player in self.players:  # the per-player learning rates (see optimizer_settings)
            lr = getattr(config, f"lr_{player}", None)
            if lr is not None and not lr > 0:
                raise ValueError(f"lr_{player} must be a positive number (or None), got {lr}")
        gamma = getattr(config, "r1", 0.0)  # the R1 weight of a model that offers it
        if not gamma >= 0:
            raise ValueError(f"r1 must be 0 (off) or more, got {gamma}")

    def parameters_for(self, player: str) -> Iterator[nn.Parameter]:
        if player not in self.owners:
            raise KeyError(f"{self.name} has players {self.players}, not {player!r}")
        seen: set[int] = set()
        for name in self.owners[player]:
            for p in getattr(self, name).parameters():
                if id(p) not in seen:  # a module shared by two names is updated once
                    seen.add(id(p))
                    yield p

    def optimizer_settings(self, player: str) -> dict[str, Any]:
        """Adam's betas for every player; a config field ``lr_<player>`` (``lr_d``, ``lr_g``,
        ``lr_ae``), when set, replaces the trainer's learning rate for that player: the
        two-time-scale rule a GAN whose D wins early needs (InfoGAN's G learns 5x faster)."""
        lr = getattr(self.config, f"lr_{player}", None)
        return {"betas": self.betas, **({"lr": lr} if lr else {})}

    # ---- the generator's exponential moving average -----------------------------------------
    @property
    def ema_decay(self) -> float:
        return float(getattr(self.config, "ema", 0.0) or 0.0)

    def keep_average(self) -> None:
        """Start the moving average (a frozen copy of the averaged network) if ``ema`` > 0."""
        decay = self.ema_decay
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0 turns it off), got {decay}")
        if decay > 0:
            average = copy.deepcopy(getattr(self, self.averaged))
            average.requires_grad_(False)
            self.average = average

    @property
    def sampler(self) -> nn.Module:
        """The averaged network when ``ema`` is on, else the one being trained."""
        average = getattr(self, "average", None)
        return average if average is not None else getattr(self, self.averaged)

    # ---- a step's generated images, handed from the generator's player to the critic's ------
    def hand_over(self, batch: dict[str, Tensor], *, detach: bool = True,
                  **images: Tensor) -> None:
        """Keep images a player generated from ``batch`` for the next player of the same step,
        so it need not draw them again. Detached (the default), they serve a critic stepped
        after the generator, as the usual G-then-D loop does. With ``detach=False`` they keep
        the generator's graph, for a generator stepped after the critic (the D-then-G loop of
        the DCGAN reference code): valid because the critic's step does not touch the weights
        that graph was built with."""
        kept = {k: v.detach() if detach else v for k, v in images.items()}
        self._handed = (batch["x"], kept)

    def take_over(self, batch: dict[str, Tensor], *,
                  graph: bool = False) -> dict[str, Tensor] | None:
        """The images handed over for this very ``batch`` (once), in the batch's dtype (the
        giver may have run under autocast, the taker not), or None: a player stepped alone,
        or first, draws its own. A taker that backpropagates through them asks for ``graph``:
        images handed without one (the giver ran under ``torch.no_grad``) are then refused."""
        handed, self._handed = getattr(self, "_handed", None), None
        if handed is None or handed[0] is not batch["x"]:
            return None
        images = handed[1]
        if graph and torch.is_grad_enabled() and not all(v.requires_grad
                                                         for v in images.values()):
            return None
        return {k: v.to(batch["x"].dtype) for k, v in images.items()}

    def after_step(self, step: int, player: str) -> None:
        if player == self.averaged_by and self.ema_decay > 0:
            ema_update(self.average, getattr(self, self.averaged), self.ema_decay)
