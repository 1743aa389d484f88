"""The protocol every genlab model follows, and saving/loading of run folders.

A model is an ``nn.Module`` with a config dataclass, a registry name and one or more
*players* (one optimizer each). The trainer only ever calls ``players_at``, ``on_step``,
``after_step``, ``parameters_for``, ``optimizer_settings`` and ``loss``; everything
model-specific stays in the model's own file. Capabilities (``log_prob``, ``encode``) exist
only where a subclass defines them; on the others the base methods raise :class:`Unsupported`
naming the models that have it.

Completion (``sample(n, cond={"x", "mask"})``) is shared: every subclass's own ``sample`` is its
plain sampler (copying given pixels in as it reaches them) and is wrapped, when the class is
created, by :func:`genlab.completion.completing`. That wrapper keeps the model's draw for the
rows ``completes_exactly`` vouches for and runs ``mcmc_completion`` (Gibbs sweeps on
``log_prob`` unless the model brings its own kernel) on the others.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch
from torch import Tensor, nn

from genlab.completion import DEFAULT_SWEEPS, Request, completing, gibbs


class Unsupported(NotImplementedError):
    """A model was asked for a capability it does not have (e.g. ``log_prob`` on a GAN)."""


# The most sub-pixels C*H*W a model takes (3x1024x1024 fits): orderings and masks are built
# per sub-pixel, so a shape from a stranger's config must be bounded before anything is built.
MAX_SUBPIXELS = 2**22

# Capabilities that follow the gradient rule of GenerativeModel (see _grad_rule).
_EVALUATORS = ("log_prob", "encode", "translate")
# The optional capabilities, in the order `genlab list` shows them.
CAPABILITIES = ("sample", "log_prob", "encode", "translate")


def _grad_rule(method: Any) -> Any:
    """Wrap ``log_prob``/``encode``/``translate``: in eval mode they run under
    ``torch.no_grad()`` unless the input itself requires grad; in training mode autograd
    records as usual."""

    @functools.wraps(method)
    def wrapper(self: GenerativeModel, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.training or (isinstance(x, Tensor) and x.requires_grad):
            return method(self, x, *args, **kwargs)
        with torch.no_grad():
            return method(self, x, *args, **kwargs)

    wrapper.follows_grad_rule = True  # type: ignore[attr-defined]
    return wrapper


class Trainable(nn.Module):
    """What :func:`genlab.fit` needs of anything it trains, with the defaults of one player:
    ``players`` (one optimizer each, stepped in order), ``parameters_for``,
    ``optimizer_settings``, ``players_at``, ``on_step``, ``after_step``; a subclass adds
    ``loss(batch, player)``. Generative models build on it, and so do genlab's own feature
    networks."""

    name: ClassVar[str] = ""
    players: ClassVar[tuple[str, ...]] = ("model",)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

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

    def after_step(self, step: int, player: str) -> None:
        """Hook run after ``player``'s update at ``step`` (moving averages, weight clipping)."""


class GenerativeModel(Trainable):
    """Base class: subclasses set ``name``, ``Config``, ``paper``, implement ``sample``.

    Gradients: ``log_prob`` and ``encode`` record an autograd graph only when the model is in
    training mode (``model.train()``, as ``fit`` sets it) or the input ``x`` requires grad (a
    gradient with respect to the image: saliency, adversarial inputs, autoregressive checks).
    In eval mode (``genlab.load`` returns models in eval mode) they run under
    ``torch.no_grad()``: scores and features come back detached, using no graph memory.
    Subclasses get this rule for free; none repeats it.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # "Authors Year, Title (arXiv:xxxx.xxxxx)"
    Config: ClassVar[type] = object  # a dataclass holding the paper's defaults
    # Data the model consumes: "binary" ({0,1} pixels), "grey" (levels in [0,1]), "continuous".
    data_kind: ClassVar[str] = "binary"
    # True when log_prob is exact (autoregressive, baselines); False for estimates (VAE).
    exact: ClassVar[bool] = False
    # What log_prob computes when it is not exact, as reports name it.
    estimate: ClassVar[str] = "importance-weighted estimate"
    # Presets: {"cpu": {"model": {...config overrides}, "train": {...fit kwargs},
    #                  "data": "source name" (optional: `genlab train`'s default --data)}, ...}.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {"cpu": {}, "paper": {}}

    # Batch fields the model's loss reads; `genlab train` refuses data lacking one in one
    # line (e.g. ("x", "x_b") for a translation model on a one-domain source).
    needs: ClassVar[tuple[str, ...]] = ("x",)
    # Keys of `sample`'s cond beyond completion that the model understands: "y", "attrs",
    # "text" (a list of raw strings; tokenize with genlab.data.captions.tokenize), "patches"
    # (with "patch_valid"). `genlab sample --text/--patches` refuses models without them.
    conditions: ClassVar[tuple[str, ...]] = ()

    # MCMC sweeps of a completion whose mask the model cannot complete exactly (``sample``'s
    # ``sweeps`` overrides it; see genlab.completion for what a sweep costs).
    completion_sweeps: ClassVar[int] = DEFAULT_SWEEPS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for capability in _EVALUATORS:
            method = cls.__dict__.get(capability)
            if method is not None and not getattr(method, "follows_grad_rule", False):
                setattr(cls, capability, _grad_rule(method))
        if "sample" in cls.__dict__:  # each class's own sampler, once: completion for free
            cls.sample = completing(cls.__dict__["sample"])  # type: ignore[method-assign]

    def __init__(self, shape: tuple[int, int, int], config: Any) -> None:
        super().__init__()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
        if math.prod(shape) > MAX_SUBPIXELS:
            raise ValueError(
                f"shape {'x'.join(map(str, shape))} has {math.prod(shape):,} sub-pixels; genlab "
                f"models take at most {MAX_SUBPIXELS:,} (e.g. 3x1024x1024)"
            )
        self.shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.config = config

    # ---- sizes -------------------------------------------------------------------------
    @property
    def n_pixels(self) -> int:
        """Number of sub-pixels C*H*W (the 'dimensions' of bits/dim)."""
        c, h, w = self.shape
        return c * h * w

    # ---- the training protocol (defaults in Trainable) ---------------------------------------
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
        Translation-only models (which need a source image) do not define it.
        """
        raise Unsupported(_unsupported_message(self, "sample"))

    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """Figures of a finished run that only this model can draw (a 2-D code scatter, a
        latent traversal, one grid per resolution...), written into run ``folder``; ``data``
        is the run's validation (else training) Dataset. ``fit`` calls it once at the end, in
        eval mode, with the RNG seeded; returns the paths written. By default none."""
        return []

    # ---- completion (see genlab.completion) -------------------------------------------------
    def completes_exactly(self, known: Tensor, cond: dict[str, Any]) -> Tensor:
        """(n,) bool: rows whose given sub-pixels ``known`` (n, D) this model's own ``sample``
        completes from the exact conditional. By default only rows with nothing given."""
        return ~known.any(1)

    def mcmc_completion(self, x: Tensor, request: Request, **options: Any) -> Tensor:
        """The rows ``x`` (B, C, H, W) that ``sample`` drew, moved towards p(hidden | given) by
        ``request.sweeps`` MCMC sweeps; by default Gibbs sweeps on ``log_prob`` over the
        model's ``levels`` values per sub-pixel (2 for binary models)."""
        levels = getattr(self, "levels", 2 if self.data_kind == "binary" else None)
        if levels is None:
            raise Unsupported(f"{self.name}: Gibbs completion needs a finite set of values per "
                              "sub-pixel (a `levels` attribute); override mcmc_completion")
        return gibbs(self, x, request, int(levels))

    # ---- optional capabilities -------------------------------------------------------------
    def log_prob(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Log-likelihood in nats per image, shape (B,)."""
        raise Unsupported(_unsupported_message(self, "log_prob"))

    def encode(self, x: Tensor) -> Tensor:
        """Features (B, d) for representation learning."""
        raise Unsupported(_unsupported_message(self, "encode"))

    def translate(self, x: Tensor, cond: dict[str, Any]) -> Tensor:
        """Images ``x`` (B, C, H, W) turned into others of the same shape: to the other domain
        (``cond={"to": "b"}`` or ``"a"``) or to attributes (``cond={"attrs": (B, k) int64}``,
        see :func:`genlab.data.attributes.parse_attrs`). Gradients as ``encode``."""
        raise Unsupported(_unsupported_message(self, "translate"))

    @classmethod
    def has(cls, capability: str) -> bool:
        """True when the class really implements ``capability`` (one of CAPABILITIES)."""
        return getattr(cls, capability) is not getattr(GenerativeModel, capability)

    @classmethod
    def capabilities(cls) -> list[str]:
        return [c for c in CAPABILITIES if cls.has(c)]

    # ---- checks shared by all models ---------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """One clear error for a wrong shape, device or values, before any computation."""
        if x.device != self.device:
            raise ValueError(
                f"{self.name} is on {self.device} but the images are on {x.device}: "
                "pass x.to(model.device)"
            )
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
        # safetensors refuses shared/non-contiguous storage: store each tensor as its own copy,
        # on the CPU, so that a run trained on a GPU loads on any machine.
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in
                 self.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
        atomic_write(
            folder / "config.json",
            lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True)),
        )
        return folder


def _unsupported_message(model: GenerativeModel | type[GenerativeModel], capability: str) -> str:
    from genlab.models import MODELS

    have = sorted(name for name, cls in MODELS.items() if cls.has(capability))
    return f"{model.name} has no {capability}(); models that do: {', '.join(have)}"


def _condition_message(model: GenerativeModel | type[GenerativeModel], key: str) -> str:
    from genlab.models import MODELS

    have = sorted(name for name, cls in MODELS.items() if key in cls.conditions)
    return (f"{model.name} does not sample conditioned on {key!r}; models that do: "
            f"{', '.join(have) or 'none yet'}")


def require_condition(model: GenerativeModel | type[GenerativeModel], key: str) -> None:
    """Raise :class:`Unsupported` unless ``model.sample`` understands ``cond[key]``."""
    if key not in model.conditions:
        raise Unsupported(_condition_message(model, key))


def check_fields(model: GenerativeModel | type[GenerativeModel], fields: Any,
                 source: str) -> None:
    """ValueError in one line unless the data's ``fields`` hold every field the model needs."""
    missing = [k for k in model.needs if k not in fields]
    if missing:
        preset = model.presets.get("cpu", {}).get("data")
        hint = f" (e.g. --data {preset})" if preset else ""
        raise ValueError(
            f"{model.name} needs batch fields {', '.join(model.needs)} but {source} has "
            f"{', '.join(fields)}: choose a source that holds {', '.join(missing)}{hint}"
        )


def require(model: GenerativeModel | type[GenerativeModel], capability: str) -> None:
    """Raise :class:`Unsupported` (naming the models that have it) unless ``model`` has
    ``capability``: lets a command refuse before it loads any data."""
    if not model.has(capability):
        raise Unsupported(_unsupported_message(model, capability))


class RunError(RuntimeError):
    """A run folder is missing, incomplete or corrupt."""


def check_new_run(folder: str | os.PathLike) -> None:
    """RunError if ``folder`` already holds a run (a fresh run must not overwrite one)."""
    if (Path(folder) / "trainer.pt").exists():
        raise RunError(
            f"{folder} already holds a run: resume it (--resume) or choose another --out"
        )


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


# ---- reading run folders from strangers -----------------------------------------------------
# Everything in a run folder is checked before it is believed: a config.json or weights file
# that is not a regular file, is absurdly large, or describes a model other than the one its
# weights hold is refused in one line, before anything of the size it claims is allocated.

MAX_CONFIG_BYTES = 2**20  # a config.json is a few KB; more is not a genlab config
MAX_HEADER_BYTES = 2**24  # safetensors' JSON header: ~100 bytes per tensor

# safetensors' dtype names (its format spec) for the dtypes genlab models hold.
_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_TORCH_DTYPES = {name: _dtype_name(dtype) for dtype, name in _SAFETENSORS_DTYPES.items()}


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _open_regular(path: Path, missing: str, limit: int | None = None) -> tuple[BinaryIO, int]:
    """``path`` opened for binary reading, and its size; one RunError unless it is a regular file
    (a symlink to one is fine) of at most ``limit`` bytes. ``missing``: the message if absent."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer. The checks run on the opened
        # file itself (fstat), so nothing can be swapped in between the check and the read.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RunError(missing) from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunError(f"{path} is {_file_kind(info.st_mode)}, not a regular file")
        if limit is not None and info.st_size > limit:
            raise RunError(
                f"{path} is {info.st_size:,} bytes, more than the {limit:,} a genlab "
                f"{path.name} can be: it is not one"
            )
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A run folder's config.json, or one clear RunError if it is missing or unreadable."""
    path = Path(folder) / "config.json"
    f, _ = _open_regular(
        path, f"{folder} is not a run folder: config.json is missing", MAX_CONFIG_BYTES
    )
    with f:
        text = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grew since the check
    if len(text) > MAX_CONFIG_BYTES:
        raise RunError(f"{path} is larger than the {MAX_CONFIG_BYTES:,} bytes a config can be")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, absurd nesting or digits
        raise RunError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise RunError(f"cannot read {path}: it holds a JSON {kind}, not an object")
    return config


def read_safetensors_header(
    path: str | os.PathLike,
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """(tensor table, where the data starts, file size) of a ``.safetensors`` file, read without
    loading the tensors.

    The format: an 8-byte little-endian length N, N bytes of JSON ``{name: {"dtype": "F32",
    "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data.
    """
    path = Path(path)
    f, size = _open_regular(path, f"{path.parent} is not a complete run: {path.name} is missing")
    corrupt = f"{path} is corrupt or truncated"
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise RunError(f"{corrupt} ({size} bytes, shorter than any header)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise RunError(f"{corrupt} (its header claims {n:,} bytes of a {size:,}-byte file)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise RunError(f"{corrupt} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise RunError(f"{corrupt} (its header is not a table of tensors)")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (not isinstance(shape, list) or not isinstance(entry.get("dtype"), str)
                or not all(isinstance(s, int) and s >= 0 for s in shape)):
            raise RunError(f"{corrupt} (its header entry for {name!r} is malformed)")
    return header, 8 + n, size


class _TooManyTensors(Exception):
    """Raised inside a skeleton's construction once it has more tensors than the file holds."""


def _skeleton(name: str, shape: tuple[int, ...], settings: dict[str, Any],
              max_tensors: int) -> GenerativeModel:
    """The model on the meta device: names, shapes and dtypes, no memory. Construction stops
    early when it registers far more tensors than ``max_tensors`` (a config asking for 10^8
    layers costs as little as one asking for the right number)."""
    from torch.nn.modules import module as nn_module

    from genlab.models import create

    count = 0

    def tally(*_: Any) -> None:
        nonlocal count
        count += 1
        if count > 2 * max_tensors + 64:  # slack for non-persistent buffers and re-assignment
            raise _TooManyTensors

    hooks = [nn_module.register_module_parameter_registration_hook(tally),
             nn_module.register_module_buffer_registration_hook(tally)]
    try:
        with torch.device("meta"):
            return create(name, shape=shape, **settings)
    finally:
        for hook in hooks:
            hook.remove()


def _dims(shape: Any) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _mismatch(expected: dict[str, Tensor], header: dict[str, dict[str, Any]]) -> str | None:
    """The first difference between a model's state_dict and a weights file's header."""
    missing = [k for k in expected if k not in header]
    if missing:
        more = f" and {len(missing) - 1} more tensors" if len(missing) > 1 else ""
        return f"it lacks {missing[0]}{more}"
    extra = [k for k in header if k not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        return f"it holds {extra[0]}, which the model has not{more}"
    for key, want in expected.items():
        got = header[key]
        if tuple(got["shape"]) != tuple(want.shape):
            have, need = _dims(got["shape"]), _dims(want.shape)
            return f"{key} is {have} in the file, the config needs {need}"
        if got["dtype"] != _SAFETENSORS_DTYPES.get(want.dtype):
            have = _TORCH_DTYPES.get(got["dtype"], got["dtype"])
            return f"{key} is {have} in the file, the model needs {_dtype_name(want.dtype)}"
    return None


def _model_spec(config: dict[str, Any], path: Path) -> tuple[str, tuple[int, int, int],
                                                             dict[str, Any]]:
    """(model name, shape, settings) from a config, each checked for its type."""
    for key in ("model", "shape", "model_config"):
        if key not in config:
            raise RunError(f"{path} lacks the field '{key}'")
    name, shape, settings = config["model"], config["shape"], config["model_config"]
    if not isinstance(name, str):
        raise RunError(f"{path}: 'model' must be a model name, got {name!r}")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                       for s in shape)):
        raise RunError(f"{path}: 'shape' must be [C, H, W] with positive sizes, got {shape!r}")
    if not isinstance(settings, dict):
        raise RunError(f"{path}: 'model_config' must be an object, got {settings!r}")
    return name, (shape[0], shape[1], shape[2]), settings


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a model from a run folder (needs only config.json and model.safetensors).

    Safe on folders from strangers: the config must describe a model whose every tensor (name,
    shape, dtype) is in the weights file's header and the file must be exactly that large,
    checked before the model is allocated; the weights must be finite.
    ``device`` as for ``fit`` ("auto", "cpu", "cuda", "cuda:N", "mps"); the CPU by default,
    where the data sets live, so a loaded model takes their tensors as they are.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from genlab.devices import resolve_device
    from genlab.models import create

    target = resolve_device(device)  # a missing GPU fails before any file is read
    folder = Path(path)
    if not folder.is_dir():
        raise RunError(
            f"no run folder at {folder}: train one with `genlab train MODEL --out {folder}`"
        )
    config_path, weights = folder / "config.json", folder / "model.safetensors"
    name, shape, settings = _model_spec(read_config(folder), config_path)
    header, data_start, size = read_safetensors_header(weights)
    try:
        skeleton = _skeleton(name, shape, settings, max_tensors=len(header))
    except _TooManyTensors:
        raise RunError(
            f"{config_path} describes a model with far more tensors than the {len(header)} "
            f"in {weights.name}: they do not belong together"
        ) from None
    except Exception as e:  # any setting create refuses: name the file it came from
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
        msg = msg.splitlines()[0] if msg else type(e).__name__
        raise RunError(f"{config_path} describes no model genlab can build: {msg}") from e
    expected = skeleton.state_dict()
    problem = _mismatch(expected, header)
    if problem is None:
        implied = data_start + sum(t.numel() * t.element_size() for t in expected.values())
        if size != implied:
            problem = f"it is {size:,} bytes, the config implies {implied:,}"
    if problem is not None:
        raise RunError(f"{weights} does not match {config_path.name}: {problem}")
    del skeleton

    model = create(name, shape=shape, **settings)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RunError(f"{weights} is corrupt or truncated ({e})") from None
    for key, t in state.items():
        if key not in expected or t.dtype != expected[key].dtype:  # the header said otherwise
            raise RunError(f"{weights} changed while it was being read: load it again")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise RunError(
                f"{weights} holds non-finite weights (NaN or inf in {bad:,} of the "
                f"{t.numel():,} values of {key}): the training diverged or the file is corrupt"
            )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RunError(f"{weights} does not match its config: {first}") from None
    model.to(target)
    model.eval()
    return model
