"""MADE, the Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray &
Larochelle 2015, ICML; arXiv:1502.03509).

An MLP autoencoder x -> h_1 -> ... -> h_L -> logits whose weights are multiplied by binary
masks so that output d only depends on the inputs before d in an ordering: every unit gets a
degree m (inputs: their rank in the ordering; hidden units: drawn uniformly from
[min degree of the layer below, D - 2]); a hidden unit sees the units below of degree <= its
own, an output sees the last hidden layer's units of degree < its rank (and, with ``direct``,
the inputs of lower rank). All D conditionals then come from one forward pass. Colour images
use the pixel-major orderings of genlab.orderings: R, G, B of a pixel in turn.

Order- and connectivity-agnostic training: ``masks`` = K distinct masks (hidden degrees, and
with ``order_agnostic`` the orderings of masks 1..K-1 too) derived from (``seed``, mask index);
training cycles through them, one per minibatch, so one set of weights learns K autoregressive
models. ``log_prob`` is the *ensemble of orderings*: log (1/K) sum_k p_k(x), each p_k
normalised, so the ensemble is too. The paper reports 88.04 nats on binarised MNIST with one
hidden layer and 32 masks; the authors' published MNIST command uses layers of 8000 units,
while the paper's figure on the number of masks uses one layer of 500.

Speed. Training is three dense matmuls per layer with the masked weights W * M; the K masks'
0/1 matrices are built from the degrees once and cached, and the fused Adam kernel keeps the
optimizer cheap (one core, batch 200: 15k img/s at 500 units, 5.4k at 2000, about half the
matmul peak; the mask-times-weight products and Adam take most of the rest). Sampling never
runs a full forward pass: per generated sub-pixel, the first layer's pre-activation gains one
input column, deeper layers receive only the units whose inputs just became complete, and
only the next sub-pixel's output row is computed, for the whole batch at once even when every
image uses its own mask (64 images: 0.08 s at 500 units, 0.2 s at 2000; about 20x faster
than a full forward pass per pixel). Not done: skipping the masked-out half of each matmul
by sorting units by degree (block-triangular products), which could save up to ~40% more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.autoregressive import PixelAutoregressive
from genlab.nn import discrete_sample, levels_index
from genlab.orderings import ordering

_MAX_MASKS = 2**20  # mask k of seed s is drawn from the seed s * _MAX_MASKS + k
_CACHE_BYTES = 2**28  # keep every mask's matrices when they fit in 256 MB, else the current one


@dataclass
class MADEConfig:
    hidden: tuple[int, ...] = (500,)  # hidden layer widths
    masks: int = 32  # K distinct masks (1 = one fixed mask); the paper's best used 32
    order_agnostic: bool = True  # masks 1..K-1 draw their own orderings (else: connectivity)
    direct: bool = True  # direct input -> output connections (masked, strictly earlier inputs)
    ordering: str = "raster"  # ordering of mask 0 (genlab.orderings.ORDERINGS)
    seed: int = 0  # seeds the "random" ordering and every mask
    levels: int = 2  # 2 = binary; K > 2 = K grey levels per sub-pixel (softmax)


class MADE(PixelAutoregressive):
    """MADE with ReLU hidden layers and an ensemble of ``masks`` masks."""

    name = "made"
    paper = ("Germain, Gregor, Murray & Larochelle 2015, MADE: Masked Autoencoder for "
             "Distribution Estimation (arXiv:1502.03509)")
    Config = MADEConfig
    presets = {
        # Static-binarised MNIST, 4-minute single-core trials (validation NLL of the ensemble):
        # 500 units: 1 mask 94.9, 8 masks (orderings) 94.9, 8 masks (connectivity only) 97.2;
        # 1000 units, 1 mask 92.4 (training NLL 88: overfitting); 2000 units: 1 mask 92.9,
        # 8 masks (orderings) 93.8, 8 (connectivity only) 98.0; 2000 units, 4 masks
        # (orderings), batch 200, lr 3e-3: 92.6 and still falling. Varying the connectivity
        # alone hurts at these widths; varying orderings regularises and ensembles. 20 minutes
        # of one core: 16.5k steps, test NLL 91.27 (members alone 93.2-96.3; mask 0, raster,
        # is the weakest). The cosine decay follows the step or time budget, whichever ends first.
        "cpu": {"model": {"hidden": (2000,), "masks": 4, "order_agnostic": True},
                "train": {"batch_size": 200, "lr": 3e-3, "schedule": "cosine",
                          "steps": 16_500, "binarize": "static"}},
        # The authors' MNIST command: 2 x 8000 ReLU units, 32 masks (orderings and
        # connectivity), direct input-output connections, Adagrad (lr 0.01), batch 100, early
        # stopping after 30 epochs without progress. We keep the model and use Adam.
        "paper": {"model": {"hidden": (8000, 8000), "masks": 32, "order_agnostic": True,
                            "direct": True},
                  "train": {"batch_size": 100, "lr": 1e-3, "steps": 500_000, "patience": 30,
                            "binarize": "static"}},
    }

    def __init__(self, shape: tuple[int, int, int], config: MADEConfig) -> None:
        super().__init__(shape, config)
        hidden = tuple(int(h) for h in config.hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must list one or more positive widths, got {hidden}")
        if not 1 <= int(config.masks) <= _MAX_MASKS:
            raise ValueError(f"masks must be between 1 and {_MAX_MASKS}, got {config.masks}")
        d = self.n_pixels
        self.out_size = self.levels if self.levels > 2 else 1  # logits per sub-pixel
        sizes = (d, *hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.output = nn.Linear(hidden[-1], d * self.out_size)  # row d * out_size + level
        self.direct = nn.Linear(d, d * self.out_size, bias=False) if config.direct else None
        # Every mask, drawn once: orderings (K, D) and one (K, H_l) degree table per layer.
        # Persistent buffers, so a saved model keeps its masks whatever RNG a later torch has.
        orders, degrees = zip(*(self._draw_mask(k, hidden) for k in range(config.masks)),
                                  strict=True)
        self.register_buffer("orders", torch.stack(orders))
        for i, deg in enumerate(zip(*degrees, strict=True)):
            self.register_buffer(f"degrees{i}", torch.stack(deg))
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))
        self.order.copy_(self.orders[0])
        self._cache: dict[Any, list[Tensor]] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget())

    # ---- masks ---------------------------------------------------------------------------------
    def _draw_mask(self, k: int, hidden: tuple[int, ...]) -> tuple[Tensor, list[Tensor]]:
        """Ordering (D,) and hidden degrees [(H_l,)] of mask ``k``: a function of (seed, k)."""
        cfg, (c, h, w), d = self.config, self.shape, self.n_pixels
        g = torch.Generator().manual_seed(int(cfg.seed) * _MAX_MASKS + k)
        if k == 0 or not cfg.order_agnostic:
            order = ordering(cfg.ordering, d, cfg.seed, w, c)
        else:  # a random pixel order, channels R -> G -> B inside each pixel
            pixels = torch.randperm(h * w, generator=g)
            order = (pixels.unsqueeze(1) + h * w * torch.arange(c)).reshape(-1)
        degrees, low = [], 0
        for size in hidden:
            # The paper's rule: uniform in [lowest degree below, D - 2]; a unit of degree D - 1
            # would feed no output. (D = 1: degree 0, which feeds nothing either.)
            deg = torch.randint(low, max(d - 1, low + 1), (size,), generator=g)
            # On the meta device (genlab.load's size check) tensors have shapes but no values.
            low = low if deg.is_meta else int(deg.min())
            degrees.append(deg)
        return order, degrees

    def degrees(self, k: int) -> list[Tensor]:
        """Degrees of mask ``k``: the inputs' ranks (D,), then each hidden layer's (H_l,)."""
        rank = torch.argsort(self.orders[k])
        return [rank] + [getattr(self, f"degrees{i}")[k] for i in range(len(self.hidden_layers))]

    def masks_of(self, k: int, dtype: torch.dtype | None = None) -> list[Tensor]:
        """Mask ``k`` as 0/1 matrices shaped like the weights they multiply: one per hidden
        layer, the output layer's, then the direct connections' (if any)."""
        degs = self.degrees(k)
        masks = [above.unsqueeze(1) >= below for below, above in pairwise(degs)]
        out_rank = degs[0].repeat_interleave(self.out_size)  # the rank of each output row
        masks.append(out_rank.unsqueeze(1) > degs[-1])
        if self.direct is not None:
            masks.append(out_rank.unsqueeze(1) > degs[0])
        return [m.to(dtype or self.output.weight.dtype) for m in masks]

    def use_mask(self, k: int) -> None:
        """Make mask ``k`` the current one: ``logits``, ``order`` and the training loss use it."""
        if not 0 <= k < len(self.orders):
            raise IndexError(f"mask {k} does not exist: this model has {len(self.orders)}")
        self.mask_index.fill_(k)
        self.order.copy_(self.orders[k])

    def on_step(self, step: int) -> None:
        # Cycle through the K masks, one per minibatch, as the authors' code does; a function of
        # the step alone, so a resumed run sees the same masks.
        self.use_mask(step % len(self.orders))

    def _masks(self, k: int) -> list[Tensor]:
        """Mask k's matrices, built once: cycling through K masks rebuilds nothing when all K
        fit in _CACHE_BYTES (building one costs about a fifth of a training step at 500 units)."""
        w = self.output.weight
        key = (k, w.dtype, w.device)
        if key not in self._cache:
            masks = self.masks_of(k)
            size = sum(m.numel() * m.element_size() for m in masks) * len(self.orders)
            if size > _CACHE_BYTES or any(other[1:] != key[1:] for other in self._cache):
                self._cache.clear()
            self._cache[key] = masks
        return self._cache[key]

    def _current(self) -> list[Tensor]:
        return self._masks(int(self.mask_index))

    def _forget(self) -> None:
        self._cache.clear()

    def optimizer_settings(self, player: str) -> dict[str, Any]:
        # The fused Adam kernel: one pass over each tensor instead of a dozen; on 500 hidden
        # units it takes the optimizer from ~45% of a training step to ~8%.
        return {"fused": True}

    # ---- densities -------------------------------------------------------------------------------
    def _flat_logits(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        """(B, D * out_size) logits under one mask; x holds real values in [0, 1]."""
        w = self.output.weight
        inputs = x.reshape(x.shape[0], -1).to(w.dtype) * 2 - 1  # centred: (B, D)
        h = inputs
        for i, layer in enumerate(self.hidden_layers):
            h = F.relu(F.linear(h, layer.weight * masks[i], layer.bias))
        out = F.linear(h, w * masks[len(self.hidden_layers)], self.output.bias)
        if self.direct is not None:
            out = out + F.linear(inputs, self.direct.weight * masks[-1])
        return out

    def _shaped(self, flat: Tensor) -> Tensor:
        """(B, D * K) -> (B, C, H, W) for binary, (B, K, C, H, W) for K levels."""
        b = flat.shape[0]
        if self.levels == 2:
            return flat.view(b, *self.shape)
        return flat.view(b, self.n_pixels, self.levels).transpose(1, 2).reshape(
            b, self.levels, *self.shape)

    def _per_subpixel(self, flat: Tensor, x: Tensor) -> Tensor:
        """log p of each sub-pixel's value (B, D) from flat logits."""
        xs = x.reshape(x.shape[0], -1)
        if self.levels == 2:
            return -F.binary_cross_entropy_with_logits(flat, xs.to(flat.dtype), reduction="none")
        # Levels from x itself, not from a copy in the logits' dtype: bfloat16 (under autocast)
        # holds k / (K - 1) closely enough only up to K = 256.
        logits = flat.view(x.shape[0], self.n_pixels, self.levels).transpose(1, 2)
        return -F.cross_entropy(logits, levels_index(xs, self.levels), reduction="none")

    def logits(self, x: Tensor) -> Tensor:
        """Logits of each sub-pixel given the ones before it under the *current* mask (the one
        ``order`` describes); differentiable in real-valued x."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            self.check_input(x)  # raises the standard shape error
        return self._shaped(self._flat_logits(x, self._current()))

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) (B,) float64 of the ensemble of orderings: log (1/K) sum_k p_k(x).

        Exact: each p_k is a normalised autoregressive model, so their average is one too.
        """
        self.check_input(x)
        per_mask = []
        for k in range(len(self.orders)):
            masks = self._masks(k)
            per_mask.append(self._per_subpixel(self._flat_logits(x, masks), x).double().sum(1))
        return torch.logsumexp(torch.stack(per_mask), 0) - math.log(len(per_mask))

    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        """Training: -log p_k(x) under the current mask k only, the paper's stochastic estimate
        of the order-agnostic objective E_k[-log p_k(x)], K times cheaper than the ensemble and
        an upper bound on its NLL. Evaluation mode (validation): the ensemble's own NLL,
        -log_prob(x), the number that ``genlab eval`` reports."""
        x = batch["x"]
        if not self.training:
            nll = -self.log_prob(x).mean()
            return nll, {"nll": float(nll.detach())}
        self.check_input(x)
        lp = self._per_subpixel(self._flat_logits(x, self._current()), x)
        nll = -lp.sum() / x.shape[0]  # float32: the mean over images of the summed terms
        return nll, {"nll": float(nll.detach())}

    # ---- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None, u: Tensor | None = None,
               mask_ids: Tensor | None = None) -> Tensor:
        """``n`` draws from the ensemble: a mask per image, then ancestral sampling under it.

        With ``cond``, each image's mask is drawn with probability proportional to p_k of the
        given sub-pixels that precede the first missing one in mask k's ordering: exact when
        the given sub-pixels come first in every mask's ordering, the usual autoregressive
        approximation otherwise. ``mask_ids`` (n,) fixes the masks (e.g. to compare with
        ``reference_sample`` under the current mask); ``u`` (n, C, H, W) are the uniforms.
        """
        u = self.uniforms(n) if u is None else u
        parts = self.given(n, cond)
        if mask_ids is None:
            mask_ids = self._choose_masks(n, parts)
        return self._ancestral(parts, u, mask_ids.to(self.orders.device))

    def _choose_masks(self, n: int, parts: tuple[Tensor, Tensor] | None) -> Tensor:
        k = len(self.orders)
        if k == 1 or parts is None:
            return torch.randint(k, (n,), device=self.orders.device)
        given, known = parts
        logw = torch.empty(n, k, dtype=torch.float64, device=given.device)
        for i in range(k):
            lp = self._per_subpixel(self._flat_logits(given, self._masks(i)), given)
            first = known[:, self.orders[i]].long().cumprod(1).bool()  # known prefix, (n, D)
            logw[:, i] = (lp[:, self.orders[i]] * first).double().sum(1)
        return torch.multinomial(torch.softmax(logw, 1), 1).squeeze(1)

    def _ancestral(self, parts: tuple[Tensor, Tensor] | None, u: Tensor, ids: Tensor) -> Tensor:
        """Incremental ancestral sampling, image i under mask ids[i], in O(one forward pass).

        Pre-activations take every contribution as soon as it exists, masks ignored; a unit's
        activation is *snapshotted* when its last allowed input arrives (step = its degree),
        and later (forbidden) contributions to it are never read. So no step applies a mask:
        the first layer adds one input column, completed units are pushed up one layer, and
        the output row of the next sub-pixel reads only snapshots and generated inputs.
        Every layer has one extra always-zero "dummy" unit, the target of padding slots.
        """
        n, d, q = len(ids), self.n_pixels, self.out_size
        w = self.output.weight
        dt, dev = w.dtype, w.device
        layers = list(self.hidden_layers)
        widths = [layer.out_features for layer in layers]
        order = self.orders[ids].t().contiguous()  # (D, n): sub-pixel generated at step t
        rows = torch.arange(n, device=dev)

        def padded(m: Tensor) -> Tensor:  # one zero column more: the dummy unit
            return torch.cat([m, m.new_zeros(*m.shape[:-1], 1)], -1)

        w_in = padded(layers[0].weight.t())  # (D, H_1 + 1): input columns
        w_up = [padded(layer.weight.t()) for layer in layers[1:]]  # (H_l, H_l+1 + 1)
        w_up = [torch.cat([m, m.new_zeros(1, m.shape[1])]) for m in w_up]  # dummy row
        # Output row of sub-pixel i: [V_i | 0 | A_i] against state = [snapshots | 0 | inputs].
        rows_out = [padded(w.view(d, q, -1))]
        if self.direct is not None:
            rows_out.append(self.direct.weight.view(d, q, d))
        w_out = torch.cat(rows_out, -1)  # (D, q, H_L + 1 [+ D])
        b_out = self.output.bias.view(d, q)[order]  # (D, n, q)
        pre = [padded(layer.bias).expand(n, -1).clone() for layer in layers]  # (n, H_l + 1)
        snap = [torch.zeros(n, h + 1, dtype=dt, device=dev) for h in widths[:-1]]
        state = torch.zeros(n, w_out.shape[-1], dtype=dt, device=dev)
        snap.append(state[:, :widths[-1] + 1])  # the last layer's snapshots live in the state
        inputs = state[:, widths[-1] + 1:]  # generated inputs, centred; 0 = not yet
        x = torch.zeros(n, d, device=dev)
        u_ord = u.reshape(n, d).to(dev).gather(1, order.t()).t().contiguous()  # (D, n)
        if parts is not None:
            given, known = (p.gather(1, order.t()).t().contiguous() for p in parts)
        done = [_completions(getattr(self, f"degrees{l}")[ids], d) for l in range(len(layers))]
        for t in range(d):
            i = order[t]
            out = torch.linalg.vecdot(w_out.index_select(0, i), state.unsqueeze(1))  # (n, q)
            out += b_out[t]
            v = discrete_sample(out.squeeze(1) if q == 1 else out, self.levels, u_ord[t])
            if parts is not None:
                v = torch.where(known[t], given[t], v)
            x.index_put_((rows, i), v)
            if self.direct is not None:
                inputs.index_put_((rows, i), v.to(dt) * 2 - 1)
            pre[0].addcmul_((v.to(dt) * 2 - 1).unsqueeze(1), w_in.index_select(0, i))
            for l, (units, most) in enumerate(done):
                if most[t] == 0:
                    continue
                unit = units[t][:, :most[t]]  # (n, c): units of degree t, then dummies
                h = F.relu(pre[l].gather(1, unit))
                snap[l].scatter_(1, unit, h)
                if l + 1 < len(layers):  # complete now: push them up one layer
                    up = w_up[l].index_select(0, unit.reshape(-1)).view(n, -1, widths[l + 1] + 1)
                    pre[l + 1] += (h.unsqueeze(2) * up).sum(1)
        return x.view(n, *self.shape)


def _completions(deg: Tensor, d: int) -> tuple[Tensor, list[int]]:
    """Which units of a layer complete at each step: (D, n, c) unit indices (units of degree
    t, padded with the dummy index H) and the number c_t worth reading at step t."""
    n, h = deg.shape
    perm = torch.argsort(deg, dim=1, stable=True)
    sorted_deg = deg.gather(1, perm).contiguous()
    steps = torch.arange(d, device=deg.device).expand(n, d).contiguous()
    start = torch.searchsorted(sorted_deg, steps)  # (n, D)
    count = torch.searchsorted(sorted_deg, steps, right=True) - start
    most = count.max(0).values
    slot = torch.arange(max(int(most.max()), 1), device=deg.device)
    pos = (start.unsqueeze(2) + slot).clamp_(max=h - 1)  # (n, D, c)
    units = perm.gather(1, pos.view(n, -1)).view(pos.shape)
    units = torch.where(slot < count.unsqueeze(2), units, h)
    return units.transpose(0, 1).contiguous(), most.tolist()
