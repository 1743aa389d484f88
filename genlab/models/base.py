"""The protocol every genlab model follows, and saving/loading of run folders.

A model is an ``nn.Module`` with a config dataclass, a registry name and one or more
*players* (one optimizer each). The trainer only ever calls ``players_at``, ``on_step``,
``parameters_for``, ``optimizer_settings`` and ``loss``; everything model-specific stays in the
model's own file. Capabilities (``log_prob``, ``encode``) exist only where a subclass defines
them; on the others the base methods raise :class:`Unsupported` naming the models that have it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class Unsupported(NotImplementedError):
    """A model was asked for a capability it does not have (e.g. ``log_prob`` on a GAN)."""


class GenerativeModel(nn.Module):
    """Base class: subclasses set ``name``, ``Config``, ``paper``, implement ``sample``."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # "Authors Year, Title (arXiv:xxxx.xxxxx)"
    Config: ClassVar[type] = object  # a dataclass holding the paper's defaults
    players: ClassVar[tuple[str, ...]] = ("model",)
    # Data the model consumes: "binary" ({0,1} pixels), "grey" (levels in [0,1]), "continuous".
    data_kind: ClassVar[str] = "binary"
    # True when log_prob is exact (autoregressive, baselines); False for estimates (VAE).
    exact: ClassVar[bool] = False
    # What log_prob computes when it is not exact, as reports name it.
    estimate: ClassVar[str] = "importance-weighted estimate"
    # Presets: {"cpu": {"model": {...config overrides}, "train": {...fit kwargs}}, "paper": {...}}.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {"cpu": {}, "paper": {}}

    def __init__(self, shape: tuple[int, int, int], config: Any) -> None:
        super().__init__()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
        self.shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.config = config

    # ---- sizes -------------------------------------------------------------------------
    @property
    def n_pixels(self) -> int:
        """Number of sub-pixels C*H*W (the 'dimensions' of bits/dim)."""
        c, h, w = self.shape
        return c * h * w

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ---- the training protocol ------------------------------------------------------------
    def parameters_for(self, player: str) -> Iterator[nn.Parameter]:
        """Parameters owned by ``player``'s optimizer (single-player models: all of them)."""
        if player != "model":
            raise KeyError(f"{self.name} has players {self.players}, not {player!r}")
        return self.parameters()

    def optimizer_settings(self, player: str) -> dict[str, Any]:
        """Adam settings for ``player`` that the model insists on (e.g. GANs' betas)."""
        return {}

    def players_at(self, step: int) -> tuple[str, ...]:
        """Players stepped at ``step`` (e.g. a critic schedule); default all, in order."""
        return self.players

    def on_step(self, step: int) -> None:
        """Hook run before each step (growth schedules, mask resampling...)."""

    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss for ``player`` on ``batch`` and a dict of numbers to log.

        Likelihood models get this for free: their loss *is* the mean negative log-likelihood,
        so training and evaluation cannot drift apart.
        """
        if not self.has("log_prob"):
            raise NotImplementedError(f"{type(self).__name__} must implement loss()")
        nll = -self.log_prob(batch["x"]).mean()
        return nll, {"nll": float(nll.detach())}

    def sample(self, n: int, cond: dict[str, Tensor] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1]; binary models give {0, 1}.

        ``cond`` carries conditioning as a dict: for completion/inpainting
        ``{"x": (n, C, H, W) image, "mask": (n, C, H, W) bool, True where the pixel is given}``;
        class labels come as ``"y"`` and other conditions under their batch keys.
        """
        raise NotImplementedError

    # ---- optional capabilities -------------------------------------------------------------
    def log_prob(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Log-likelihood in nats per image, shape (B,)."""
        raise Unsupported(_unsupported_message(self, "log_prob"))

    def encode(self, x: Tensor) -> Tensor:
        """Features (B, d) for representation learning."""
        raise Unsupported(_unsupported_message(self, "encode"))

    @classmethod
    def has(cls, capability: str) -> bool:
        """True when the class really implements ``capability`` ("log_prob", "encode", "sample")."""
        return getattr(cls, capability) is not getattr(GenerativeModel, capability)

    @classmethod
    def capabilities(cls) -> list[str]:
        return [c for c in ("sample", "log_prob", "encode") if cls.has(c)]

    # ---- checks shared by all models ---------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """One clear error for a wrong shape or wrong values, before any computation."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            got = "x".join(map(str, x.shape[1:])) if x.dim() == 4 else str(tuple(x.shape))
            want = "x".join(map(str, self.shape))
            raise ValueError(
                f"{self.name} expects images of shape (B, {want.replace('x', ', ')})"
                f" i.e. {want}, got {got}"
            )
        if self.data_kind == "binary" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                f"{self.name} models binary images: binarize the data first "
                "(--binarize static|dynamic|threshold)"
            )

    # ---- run folders ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` atomically into folder ``path``."""
        from safetensors.torch import save_file

        from genlab import __version__

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config = read_config(folder) if (folder / "config.json").exists() else {}
        config.update(
            {
                "model": self.name,
                "shape": list(self.shape),
                "model_config": self.config_dict(),
                "genlab_version": __version__,
                "torch_version": torch.__version__,
            }
        )
        if extra:
            config.update(extra)
        # safetensors refuses shared/non-contiguous storage: store each tensor as its own copy.
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
        atomic_write(
            folder / "config.json",
            lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True)),
        )
        return folder


def _unsupported_message(model: GenerativeModel, capability: str) -> str:
    from genlab.models import MODELS

    have = sorted(name for name, cls in MODELS.items() if cls.has(capability))
    return f"{model.name} has no {capability}(); models that do: {', '.join(have)}"


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A run folder's config.json, or one clear RunError if it is missing or unreadable."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise RunError(f"{folder} is not a run folder: config.json is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from None


class RunError(RuntimeError):
    """A run folder is missing, incomplete or corrupt."""


def no_space(error: BaseException) -> bool:
    """True when ``error`` (or what caused it) is a full disk or an exhausted quota."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # Rust writers (safetensors) report it as text: "No space left on device (os error 28)".
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp)``, then rename it over ``path``: a kill never leaves half a file.

    The file gets the permissions of any new file (0o666 less the umask, as the user chose),
    not the 0o600 of mkstemp (or of writers that make their own temporary file, as safetensors
    does), so others can read a shared run folder. A full disk is one RunError naming the
    file; the file it would have replaced stays as it was.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and no_space(e):
            raise RunError(f"no space left on device writing {path}") from None
        raise


def load(path: str | os.PathLike) -> GenerativeModel:
    """Rebuild a model from a run folder (needs only config.json and model.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from genlab.models import create

    folder = Path(path)
    if not folder.is_dir():
        raise RunError(
            f"no run folder at {folder}: train one with `genlab train MODEL --out {folder}`"
        )
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).exists():
            raise RunError(f"{folder} is not a complete run: {name} is missing")
    config = read_config(folder)
    try:
        model = create(config["model"], shape=tuple(config["shape"]), **config["model_config"])
    except KeyError as e:
        raise RunError(f"{folder / 'config.json'} lacks the field {e}") from None
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RunError(f"{folder / 'model.safetensors'} is corrupt or truncated ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RunError(
            f"{folder / 'model.safetensors'} does not match its config: {first}"
        ) from None
    model.eval()
    return model
