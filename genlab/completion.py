"""Completion (inpainting): the hidden pixels of images drawn from the model's p(hidden | given).

``model.sample(n, cond={"x": x, "mask": mask})``, ``mask`` (n, C, H, W) bool and True where a
sub-pixel is given, returns n images that keep the given sub-pixels and draw the others from
the model's own conditional, for any mask. Every model with ``log_prob`` gets this from here:
``GenerativeModel`` wraps each subclass's ``sample`` (which stays the model's ancestral sampler,
copying given pixels in as it reaches them) with :func:`completing`, which

1. checks the request: tensors of shape (n, C, H, W), a bool mask, given values on the model's
   grid (0/1, k/(K-1), k/255);
2. runs the model's sampler. For the rows the model completes *exactly*
   (``completes_exactly``: autoregressive models when the given sub-pixels come first in their
   order, the Markov chain by forward filtering-backward sampling, the independent and
   full-joint baselines always) that draw is the answer;
3. runs ``mcmc_completion`` on the other rows, started from that draw: by default
   :func:`gibbs`, ``sweeps`` Gibbs sweeps whose full conditionals come from ``log_prob``, so
   they are exact and the chains converge to p(hidden | given) as the sweeps grow. Each row
   is its own chain: ask for several completions of one image by repeating it.
   RNADE (continuous) and the VAE (no exact ``log_prob``) bring their own Metropolis-within-
   Gibbs kernels.

Why ancestral sampling alone is wrong: it draws each sub-pixel from p(x_i | x_<i), so a given
pixel that comes *later* in the order never influences the ones before it. With a 2-pixel
chain where x1 copies x0, given x1 = 1, it draws x0 = 1 half the time instead of 99%.

Cost. A Gibbs sweep makes one batched ``log_prob`` call per block of hidden sub-pixels (pairs
for binary images, see ``block_size``), on 3 images per chain for a binary pair: for 392 hidden
MNIST pixels, 196 calls. On a busy two-core machine a sweep of 40 chains took 11-14 s with
NADE (500 units) and about 100 s with a Gated PixelCNN (16 channels, 10 layers). ``sweeps`` trades
time for accuracy; since the chains start from the ancestral draw, already right for all that
the given pixels do not influence, a few sweeps go a long way. ``progress=True`` shows a bar.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from genlab.nn import levels_index
from genlab.orderings import split_cond

if TYPE_CHECKING:
    from genlab.models.base import GenerativeModel

# Sweeps when the caller gives none; converges on small images (tests/test_completion.py checks
# the distribution of completions of 6-pixel images against enumeration with this default).
DEFAULT_SWEEPS = 20
# Sub-pixels per log_prob call inside a sweep (about 1300 MNIST images): bounds memory (256
# levels x 40 chains would otherwise be one 10k-image batch), large enough to be efficient.
MAX_ELEMENTS = 2**20


@dataclass
class Request:
    """A checked completion request for B rows, flattened: what ``mcmc_completion`` receives."""

    given: Tensor  # (B, D) float: the given values, 0 where hidden
    known: Tensor  # (B, D) bool: True where given
    extras: dict[str, Tensor]  # other per-image conditioning of these rows (e.g. labels "y")
    sweeps: int
    progress: bool = False


def is_prefix(known: Tensor, orders: Tensor) -> Tensor:
    """(n,) bool: row i's given sub-pixels come first in every ordering of ``orders``.

    ``known`` (n, D) bool, ``orders`` (M, D) permutations (``order[d]`` = the d-th sub-pixel
    generated). Then ancestral sampling along any of them conditions on every given pixel.
    """
    ordered = known[:, orders].to(torch.int8)  # (n, M, D), in generation order
    return (ordered[..., 1:] <= ordered[..., :-1]).all(-1).all(-1)


def completing(sampler: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap a model's own ``sample(n, cond, ...)`` so that completion requests are exact or
    converge for any mask (see the module docstring). Applied by ``GenerativeModel`` to every
    subclass that defines ``sample``; other calls go straight to ``sampler``.
    """
    if getattr(sampler, "completes", False):
        return sampler

    @functools.wraps(sampler)
    def sample(self: GenerativeModel, n: int, cond: dict[str, Any] | None = None, *args: Any,
               sweeps: int | None = None, progress: bool = False, **kwargs: Any) -> Tensor:
        if cond is not None and not isinstance(cond, dict):
            raise ValueError(f"cond must be a dict (e.g. {{'x': images, 'mask': bool mask}}), "
                             f"got {type(cond).__name__}")
        if not cond or not {"x", "mask"} & set(cond):
            return sampler(self, n, cond, *args, **kwargs)
        return _complete(self, sampler, n, cond, sweeps, progress, args, kwargs)

    sample.completes = True  # type: ignore[attr-defined]
    sample.__doc__ = (sampler.__doc__ or "").rstrip() + _COMPLETION_DOC
    return sample


_COMPLETION_DOC = """

        Completion: ``cond={"x": (n, C, H, W), "mask": (n, C, H, W) bool, True = given}``
        keeps the given sub-pixels and draws the others from p(hidden | given) for any mask:
        exactly where the model allows it, else by ``sweeps`` MCMC sweeps (default: the
        model's ``completion_sweeps``; 0 = the ancestral draw alone) started from the ancestral
        draw; ``progress=True`` shows a progress bar. The sampler's own arguments (e.g. ``u``)
        drive that draw only. See ``genlab.completion``."""


def _complete(model: GenerativeModel, sampler: Callable[..., Tensor], n: int,
              cond: dict[str, Any], sweeps: int | None, progress: bool,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    from genlab.models.base import Unsupported, _unsupported_message

    if not model.has("log_prob"):
        raise Unsupported(f"completion draws from p(hidden | given), which needs log_prob: "
                          f"{_unsupported_message(model, 'log_prob')}")
    sweeps = model.completion_sweeps if sweeps is None else sweeps
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"sweeps must be a whole number >= 0, got {sweeps!r}")
    given, known = check_cond(model, n, cond)
    extras = _extras(model, n, cond)
    x = sampler(model, n, cond, *args, **kwargs)  # exact for some rows, a starting point for all
    rows = (~model.completes_exactly(known, cond)).nonzero().squeeze(1)  # (R,)
    if len(rows):  # even with sweeps = 0: the kernel's start puts the given pixels in place
        request = Request(given[rows], known[rows], {k: v[rows] for k, v in extras.items()},
                          sweeps, progress)
        x[rows] = model.mcmc_completion(x[rows], request, **kwargs).to(x.dtype)
    return x


def check_cond(model: GenerativeModel, n: int, cond: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """A completion request checked against ``model``: (given (n, D) float, known (n, D) bool),
    or a one-line ValueError naming what is wrong."""
    for key in ("x", "mask"):
        if not isinstance(cond.get(key), Tensor):
            got = type(cond.get(key)).__name__ if key in cond else "nothing"
            raise ValueError(f"cond['{key}'] must be a torch tensor of shape "
                             f"({n}, {', '.join(map(str, model.shape))}), got {got}")
    given, known = split_cond({"x": cond["x"], "mask": cond["mask"]}, n, model.shape,
                              model.device, levels=None)
    if not bool(torch.isfinite(given).all()):
        raise ValueError("cond['x'] holds NaN or infinite values where mask is True")
    try:  # the model's own check knows its grid (binary, k/(K-1), 8-bit)
        model.check_input(given.view(n, *model.shape))
    except ValueError as e:
        raise ValueError(f"cond['x'] where mask is True: {e}") from None
    return given, known


def _extras(model: GenerativeModel, n: int, cond: dict[str, Any]) -> dict[str, Tensor]:
    """The other conditioning in ``cond`` (e.g. class labels "y") as (n, ...) tensors, so each
    chain keeps its own; ``log_prob`` receives them as keyword arguments."""
    out = {}
    for key, value in cond.items():
        if key in ("x", "mask") or value is None:
            continue
        v = torch.as_tensor(value, device=model.device)
        v = v.expand(n) if v.dim() == 0 else v
        if len(v) != n:
            raise ValueError(f"cond['{key}'] must hold one value per image ({n}), got {len(v)}")
        out[key] = v
    return out


# ---- the generic sampler: Gibbs sweeps with full conditionals from log_prob ---------------------


@torch.no_grad()
def gibbs(model: GenerativeModel, x: Tensor, request: Request, levels: int) -> Tensor:
    """``request.sweeps`` Gibbs sweeps over the hidden sub-pixels of the chains ``x`` (B, C, H, W).

    A sweep cuts the hidden sub-pixels, taken in the model's order (``order``, else raster),
    into blocks of ``block_size(levels)`` neighbours at a random offset, and visits the blocks
    in a random order. A block's full conditional p(x_block = v | every other sub-pixel) is
    proportional to p(x with x_block = v): ``log_prob`` of the image with the block set to each
    of its K^b values, evaluated in batches (the values it holds now reuse the chain's current
    log-probability; values that would change a given sub-pixel get probability 0 and are not
    evaluated). Each update leaves p(hidden | given) invariant and the full conditionals are
    positive, so the chains converge to it. Pairs rather than single sub-pixels let a chain move
    two strongly coupled neighbours at once (a 0 -> 1 -> 0 path through an unlikely image is
    what stalls single-site Gibbs on peaked autoregressive models). Given sub-pixels never change.
    """
    b, d = len(x), model.n_pixels
    known = request.known
    xf = torch.where(known, request.given, x.reshape(b, d).to(request.given.dtype))  # (B, D)
    dev = xf.device
    size = block_size(levels)
    lp = _log_prob(model, xf, torch.arange(b, device=dev), request.extras)  # (B,) current
    order = getattr(model, "order", None)
    order = torch.arange(d, device=dev) if order is None else order.to(dev)
    hidden = order[(~known).any(0)[order]]  # sub-pixels hidden in some chain, in model order
    with progress_bar(request, len(hidden), "Gibbs") as bar:
        for _ in range(request.sweeps):
            offset = int(torch.randint(size, ()))
            cuts = list(range(-offset, len(hidden), size))
            for i in torch.randperm(len(cuts)).tolist():
                block = hidden[max(cuts[i], 0):cuts[i] + size]
                _update_block(model, xf, lp, known, block, levels, request.extras)
                bar.update(len(block))
    return xf.view(x.shape)


# A block of b sub-pixels with K values each costs K^b - 1 log_prob images per chain against
# b (K - 1) for b single-site updates: blocks are as large as keeps that ratio within 2 (pairs
# for binary and 3-level images, single sub-pixels from 4 levels on).
MAX_BLOCK_COST = 2


def block_size(levels: int) -> int:
    """Sub-pixels per Gibbs block for ``levels`` values each (see MAX_BLOCK_COST)."""
    b = 1
    while levels ** (b + 1) - 1 <= MAX_BLOCK_COST * (b + 1) * (levels - 1):
        b += 1
    return b


def _update_block(model: GenerativeModel, xf: Tensor, lp: Tensor, known: Tensor, block: Tensor,
                  levels: int, extras: dict[str, Tensor]) -> None:
    """One exact Gibbs update of the sub-pixels ``block`` (m,) in every chain where one of them
    is hidden, in place: states xf (B, D) and their log-probabilities lp (B,)."""
    m, dev = len(block), xf.device
    configs = levels**m
    place = levels ** torch.arange(m, device=dev)  # (m,): config index = sum digit * place
    digits = (torch.arange(configs, device=dev).unsqueeze(1) // place) % levels  # (K^m, m)
    rows = (~known[:, block]).any(1).nonzero().squeeze(1)  # (R,) chains that update
    now = levels_index(xf[rows][:, block], levels)  # (R, m) digits held now
    cur = (now * place).sum(1)  # (R,)
    alt = (cur.unsqueeze(1) + torch.arange(1, configs, device=dev)) % configs  # (R, K^m - 1)
    # A config may only differ from the current one where the sub-pixel is hidden.
    fixed = known[rows][:, block].unsqueeze(1)  # (R, 1, m)
    ok = ((digits[alt] == now.unsqueeze(1)) | ~fixed).all(2)  # (R, K^m - 1)
    r, a = ok.nonzero(as_tuple=True)
    cand = xf[rows[r]]  # (P, D): one image per allowed (chain, config)
    cand[:, block] = digits[alt[r, a]].to(xf.dtype) / (levels - 1)
    logits = torch.full((len(rows), configs), -math.inf, dtype=lp.dtype, device=dev)
    logits[r, alt[r, a]] = _log_prob(model, cand, rows[r], extras)
    logits[torch.arange(len(rows), device=dev), cur] = lp[rows]
    new = categorical(logits)  # (R,)
    xf[rows.unsqueeze(1), block.unsqueeze(0)] = digits[new].to(xf.dtype) / (levels - 1)
    lp[rows] = logits.gather(1, new.unsqueeze(1)).squeeze(1)


def _log_prob(model: GenerativeModel, xf: Tensor, chain: Tensor,
              extras: dict[str, Tensor]) -> Tensor:
    """log p (M,) float64 of flat images xf (M, D), chain (M,) = whose conditioning each uses,
    in calls of at most MAX_ELEMENTS sub-pixels."""
    step = max(1, MAX_ELEMENTS // xf.shape[1])
    out = [torch.zeros(0, dtype=torch.float64, device=xf.device)]
    for s in range(0, len(xf), step):
        part = xf[s:s + step]
        kw = {k: v[chain[s:s + step]] for k, v in extras.items()}
        out.append(model.log_prob(part.view(len(part), *model.shape), **kw).double())
    return torch.cat(out)


def categorical(logits: Tensor) -> Tensor:
    """One draw per row of softmax(logits) (R, K), by the Gumbel-max trick."""
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device)
    return (logits - torch.log(-torch.log(u.clamp_(min=1e-300)))).argmax(1)


class _Progress:
    """A tqdm bar over sweeps x sub-pixels when asked for, else a no-op with the same methods."""

    def __init__(self, request: Request, per_sweep: int, what: str) -> None:
        self.bar = None
        if request.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=request.sweeps * per_sweep, desc=f"completion ({what})",
                            unit="pixel", dynamic_ncols=True, leave=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)


def progress_bar(request: Request, per_sweep: int, what: str) -> _Progress:
    """The progress bar of an MCMC kernel: ``request.sweeps`` x ``per_sweep`` updates."""
    return _Progress(request, per_sweep, what)


# ---- masks by name: what the command line (and a notebook) asks for --------------------------


def region_mask(spec: str, shape: tuple[int, int, int], n: int = 1,
                generator: torch.Generator | None = None) -> Tensor:
    """A completion mask (n, C, H, W) bool, True = given, from a name of the part to *hide*:
    ``bottom``, ``top``, ``left``, ``right`` (half the image, rows or columns), ``random:P``
    (each pixel hidden with probability P, independently per image), or the path of a mask
    image (white = hidden, black = given; resized to the image size). A pixel's channels are
    hidden together."""
    from pathlib import Path

    c, h, w = shape
    hide = torch.zeros(n, 1, h, w, dtype=torch.bool)
    if Path(spec).is_file():  # read (grey, resized) as the data package reads any image
        from genlab.data import load

        hide = (load(spec, "all", shape=(1, h, w)).x[:1] >= 0.5).expand(n, 1, h, w)
        return ~hide.expand(n, c, h, w)
    every = slice(None)
    halves = {"bottom": (slice(h // 2, None), every), "top": (slice(None, h // 2), every),
              "right": (every, slice(w // 2, None)), "left": (every, slice(None, w // 2))}
    if spec in halves:
        rows, cols = halves[spec]
        hide[:, :, rows, cols] = True
    elif spec.startswith("random:"):
        try:
            p = float(spec.split(":", 1)[1])
        except ValueError:
            p = math.nan
        if not 0 <= p <= 1:
            raise ValueError(f"random:P needs a probability P in [0, 1], got {spec!r}")
        hide = torch.rand(n, 1, h, w, generator=generator) < p
    else:
        raise ValueError(f"unknown mask {spec!r}: expected bottom, top, left, right, random:P "
                         "or a mask image")
    return ~hide.expand(n, c, h, w)
