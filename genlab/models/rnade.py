"""RNADE, the real-valued neural autoregressive density estimator (Uria, Murray & Larochelle
2013, arXiv:1306.0186).

NADE for real values: p(y) = prod_d p(y_od | y_o<d) along an ordering o, and each conditional is
a mixture of Gaussians whose weights, means and scales come from NADE's shared hidden layer,
    a_1 = c,  a_(d+1) = a_d + y_od W_od,  h_d = act(rho_d a_d),
    [alpha_d, mu_d, s_d] = h_d V_d + b_d,
    p(y_od | y_o<d) = sum_k softmax(alpha_d)_k N(y_od; mu_dk, sigma_dk^2),
with per-pixel output weights V_d (H, 3K) and sigma = min_scale + exp(s) (the paper uses exp(s);
the floor keeps a component from collapsing onto one training value). rho_d is the paper's
learned per-pixel rescaling of the pre-activations, which sum more inputs as d grows; the
paper's units are sigmoids, rectified linear ones are offered too. All D conditionals together
cost O(DH + DHK).

Data. The model is a density over y in R^D and is trained on dequantized 8-bit images: an image
x with values k/255 becomes y = (k + u)/256 with u ~ U(0, 1)^D (fresh noise at every call in
training mode; a fixed seed, ``eval_seed``, in eval mode so that evaluations repeat exactly).
``log_prob(x) = log p(y) - D log 256`` is then, in expectation over u, a lower bound on the
log-probability of the discrete image (nats), the convention under which continuous models
report bits/dim of 8-bit data (Theis et al. 2016, arXiv:1511.01844; the PixelRNN paper).
``log_prob(x, k)`` averages k noise draws inside the log (an importance-weighted bound with the
uniform proposal, tighter as k grows); the loss is -log_prob(x).mean() with k = 1.
``density(y)`` is the exact log density of continuous y. Samples are drawn in y and returned on
the 256-level grid, floor(256 y) / 255 clipped to [0, 1], or as y itself (``continuous=True``).

Speed. A custom autograd function walks the ordering in blocks of up to 8 pixels: a block's
pre-activations come from one small matmul with a strictly triangular mask on top of the
running sum, its 3K outputs per pixel from one batched matmul, and only the block-start running
sums (D/8, B, H) are kept for the backward sweep, which visits the blocks in reverse order,
recomputes them and accumulates the suffix sums the gradients of W and y need. Nothing of size
B*D*H is ever stored, so the working set stays in cache. Sampling is one pass over the pixels
with the running sum a, O(n (H + HK)) per pixel. Far-off mixture components produce denormal
floats, which would slow the matmuls a hundredfold: they are flushed to zero (see _TINY).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from genlab.models.base import GenerativeModel
from genlab.nn import full_precision, levels_index, off_grid
from genlab.orderings import ordering, split_cond

_MAX_BLOCK = 8  # pixels per block: larger blocks waste work on the triangular mask
_WORKING_SET = 2**18  # floats of a (block, batch chunk, H) buffer: 1 MB of float32
_LOG_2PI = math.log(2 * math.pi)
# Denormal floats make CPU matmuls 100x slower. Far-off mixture components give gradients that
# underflow into that range, and so would sigmoids of large negative inputs: gradients below
# _TINY are dropped and sigmoid inputs are clipped at _FLOOR (sigmoid(-30) ~ 1e-13), which
# changes no result visibly.
_TINY = 1e-12
_FLOOR = -30.0
_BINS = 256  # 8-bit data


@dataclass
class RNADEConfig:
    hidden: int = 500  # H, as NADE's MNIST model
    components: int = 10  # K Gaussians per conditional (the paper picks K by validation)
    activation: str = "sigmoid"  # h_d = act(rho_d a_d): "sigmoid" (the paper) or "relu"
    min_scale: float = 1e-4  # sigma floor, far below one quantisation bin (1/256)
    ordering: str = "raster"  # genlab.orderings.ORDERINGS
    seed: int = 0  # seed of the "random" ordering
    eval_seed: int = 0  # dequantization noise seed in eval mode (training draws fresh noise)


def _block_size(d: int) -> int:
    """Largest K <= _MAX_BLOCK dividing d, so blocks tile the ordering exactly."""
    return max(k for k in range(1, min(_MAX_BLOCK, d) + 1) if d % k == 0)


def _act_(act: str, z: Tensor) -> Tensor:
    """The hidden units, in place over z (K, n, H)."""
    return z.clamp_(min=_FLOOR).sigmoid_() if act == "sigmoid" else z.relu_()


def _block(yk: Tensor, Wk: Tensor, a: Tensor, strict: Tensor) -> tuple[Tensor, Tensor]:
    """One block of K pixels: the masked inputs xtri (K, n, K), xtri[j, m, i] = y_mi if i < j,
    and the pre-activations a_j = a + sum_(i < j) y_i W_i (K, n, H), from one batched matmul."""
    K, n = yk.shape
    xtri = torch.mul(yk.t().unsqueeze(0), strict.unsqueeze(1)).contiguous()
    return xtri, torch.baddbmm(a.unsqueeze(0), xtri, Wk.expand(K, K, -1))


class _Conditionals(torch.autograd.Function):
    """Mixture parameters (D, B, 3K) of every conditional, from ys (D, B) in the model's order.

    W (D, H), c (H,), rho (D,), V (D, H, 3K), b (D, 3K); differentiable in all of them and in ys.
    Large (K, n, H) blocks are updated in place: each pass over them costs as much as the
    matmuls.
    """

    @staticmethod
    @full_precision
    def forward(ctx, ys: Tensor, W: Tensor, c: Tensor, rho: Tensor, V: Tensor, b: Tensor,
                act: str) -> Tensor:
        D, B = ys.shape
        H, P = W.shape[1], V.shape[2]
        K = _block_size(D)
        rows = max(1, _WORKING_SET // (K * H))
        strict = torch.ones(K, K, dtype=W.dtype, device=W.device).tril_(-1)  # [j, i]: i < j
        out = torch.empty(D, B, P, dtype=W.dtype, device=W.device)
        starts = torch.empty(D // K, B, H, dtype=W.dtype, device=W.device)  # a at block starts
        for s in range(0, B, rows):
            n = min(rows, B - s)
            a = c.expand(n, H).clone()  # (n, H) running pre-activation
            for blk, d in enumerate(range(0, D, K)):
                starts[blk, s:s + n] = a
                yk = ys[d:d + K, s:s + n]  # (K, n)
                pre = _block(yk, W[d:d + K], a, strict)[1]
                h = _act_(act, pre.mul_(rho[d:d + K].view(K, 1, 1)))  # (K, n, H)
                torch.baddbmm(b[d:d + K].unsqueeze(1), h, V[d:d + K], out=out[d:d + K, s:s + n])
                a.addmm_(yk.t(), W[d:d + K])  # a += sum_i y_i W_i over the block
        ctx.act = act
        ctx.save_for_backward(ys, W, c, rho, V, starts)
        return out

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        ys, W, c, rho, V, starts = ctx.saved_tensors
        g = g.masked_fill(g.abs() < _TINY, 0)  # no denormals into the matmuls
        D, B = ys.shape
        H = W.shape[1]
        K = _block_size(D)
        rows = max(1, _WORKING_SET // (K * H))
        strict = torch.ones(K, K, dtype=W.dtype, device=W.device).tril_(-1)
        ones = torch.ones(1, K, dtype=W.dtype, device=W.device)
        dW, dV, drho = torch.zeros_like(W), torch.empty_like(V), torch.zeros_like(rho)
        dc = torch.zeros_like(c)
        dys = torch.zeros_like(ys) if ctx.needs_input_grad[0] else None
        for s in range(0, B, rows):
            n = min(rows, B - s)
            suffix = torch.zeros(n, H, dtype=W.dtype, device=W.device)  # sum of da after block
            for blk in reversed(range(D // K)):
                d = blk * K
                yk, Wk, rk = ys[d:d + K, s:s + n], W[d:d + K], rho[d:d + K].view(K, 1, 1)
                xtri, pre = _block(yk, Wk, starts[blk, s:s + n], strict)
                h = _act_(ctx.act, pre * rk)  # (K, n, H)
                gk = g[d:d + K, s:s + n]  # (K, n, P)
                if s == 0:
                    torch.bmm(h.transpose(1, 2), gk, out=dV[d:d + K])
                else:
                    dV[d:d + K].baddbmm_(h.transpose(1, 2), gk)
                dz = torch.bmm(gk, V[d:d + K].transpose(1, 2))  # dL/d(rho a) (K, n, H)
                if ctx.act == "sigmoid":
                    dz.mul_(h.addcmul_(h, h, value=-1))  # h (1 - h), in place over h
                else:
                    dz.masked_fill_(h <= 0, 0)
                drho[d:d + K] += (dz * pre).sum((1, 2))
                da = dz.mul_(rk)  # (K, n, H) dL/da_j
                # dW_i = sum_m y_mi (suffix_m + sum_(j > i in block) da_jm): the forward mask,
                # transposed.
                dW[d:d + K].addmm_(xtri.view(K * n, K).t(), da.view(K * n, H))
                dW[d:d + K].addmm_(yk, suffix)
                if dys is not None:
                    # dy_mi = W_i . (suffix_m + sum_(j > i) da_jm); exact zeros for pixels at or
                    # after the last nonzero gradient, as the autoregressive property demands.
                    inner = torch.matmul(da, Wk.t()).mul_(strict.unsqueeze(1)).sum(0)  # (n, K)
                    dys[d:d + K, s:s + n] = (inner + suffix @ Wk.t()).t()
                suffix.view(1, n * H).addmm_(ones, da.view(K, n * H))  # += sum_j da_j
            dc += suffix.sum(0)
        db = g.sum(1)  # (D, P)
        return dys, dW, dc, drho, dV, db, None


class RNADE(GenerativeModel):
    """RNADE: one hidden layer of ``hidden`` units, K-component Gaussian mixture conditionals."""

    name = "rnade"
    paper = ("Uria, Murray & Larochelle 2013, RNADE: The real-valued neural autoregressive "
             "density-estimator (arXiv:1306.0186)")
    Config = RNADEConfig
    data_kind = "grey"
    estimate = "dequantization bound on the 8-bit data (uniform noise, importance-weighted)"
    exact = False  # log_prob is a dequantization bound, not the exact discrete likelihood
    presets = {
        # Dequantized 8-bit MNIST, one core: mean training loss over steps 60-80 from the same
        # start was 2611 nats at lr 1e-4, ~3000 at 5e-4 and ~3400 at 2e-3 (noisy: the sharp
        # mixture components make larger steps unstable). 20 minutes (3318 steps, about 4
        # epochs) reached a test bound of 1088 nats = 2.00 bits/dim, still falling; a later
        # 30-minute run (5432 steps) only 1136 nats = 2.09 bits/dim (unexplained so far).
        "cpu": {"model": {"hidden": 500, "components": 10},
                "train": {"batch_size": 64, "lr": 1e-4, "schedule": "cosine",
                          "steps": 100_000, "patience": 8}},
        # The paper trained by minibatch stochastic gradient descent with early stopping on
        # validation data; we keep the model and use Adam at the rate that was stable above.
        "paper": {"model": {"hidden": 500, "components": 10, "ordering": "raster"},
                  "train": {"batch_size": 100, "lr": 1e-4, "steps": 200_000, "patience": 10}},
    }

    def __init__(self, shape: tuple[int, int, int], config: RNADEConfig) -> None:
        super().__init__(shape, config)
        c, _, w = self.shape
        d, h, k = self.n_pixels, int(config.hidden), int(config.components)
        if h < 1 or k < 1:
            raise ValueError(f"hidden and components must be positive, got {h} and {k}")
        if config.activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation must be 'sigmoid' or 'relu', got {config.activation!r}")
        if not config.min_scale > 0:
            raise ValueError(f"min_scale must be positive, got {config.min_scale}")
        self.register_buffer("order", ordering(config.ordering, d, config.seed, w, c))
        self.register_buffer("inverse", torch.argsort(self.order), persistent=False)
        # Rows indexed by position in the ordering, so a block of pixels is a contiguous slice.
        self.W = nn.Parameter(torch.randn(d, h) * 0.01)  # input weights (D, H)
        self.c = nn.Parameter(torch.zeros(h))  # hidden biases (H,)
        self.rho = nn.Parameter(torch.ones(d))  # per-pixel rescaling of the pre-activations
        self.V = nn.Parameter(torch.randn(d, h, 3 * k) * 0.01)  # output weights (D, H, 3K)
        # Output biases (D, 3K) = [mixture logits, means, log-scales]: the components start
        # spread over the unit interval, each about one K-th wide.
        bias = torch.zeros(d, 3, k)
        bias[:, 1] = (torch.arange(k) + 0.5) / k
        bias[:, 2] = math.log(1.0 / k)
        self.b = nn.Parameter(bias.view(d, 3 * k))

    # ---- the density of continuous y ----------------------------------------------------------
    def _mixture(self, ys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log mixture weights, means, log-scales, each (D, B, K), for ys (D, B) in order."""
        out = _Conditionals.apply(ys, self.W, self.c, self.rho, self.V, self.b,
                                  self.config.activation)
        logits, means, s = out.chunk(3, dim=2)
        floor = math.log(self.config.min_scale)
        log_scale = F.softplus(s - floor) + floor  # log(min_scale + exp(s)), stably
        return F.log_softmax(logits, dim=2), means, log_scale

    def _log_density(self, ys: Tensor) -> Tensor:
        """log p(y) (B,) in float64, from ys (D, B) in the model's order."""
        log_w, means, log_scale = self._mixture(ys)
        z = (ys.unsqueeze(2) - means) * torch.exp(-log_scale)
        per = torch.logsumexp(log_w - 0.5 * z * z - log_scale, dim=2) - 0.5 * _LOG_2PI  # (D, B)
        return per.double().sum(0)

    def _ordered(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], -1)[:, self.order].t().to(self.W.dtype)  # (D, B)

    def density(self, y: Tensor) -> Tensor:
        """Exact log density (B,) float64 of real images y (B, C, H, W) (data: y in (0,1)^D)."""
        if y.dim() != 4 or tuple(y.shape[1:]) != self.shape:
            super().check_input(y)  # the standard shape error
        return self._log_density(self._ordered(y))

    def conditionals(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log mixture weights, means, log-scales), each (B, K, C, H, W): the parameters of
        p(y_i | the pixels before i in the ordering), for any real y (B, C, H, W)."""
        if y.dim() != 4 or tuple(y.shape[1:]) != self.shape:
            super().check_input(y)
        parts = self._mixture(self._ordered(y))
        b, k = y.shape[0], self.config.components
        return tuple(p[self.inverse].permute(1, 2, 0).reshape(b, k, *self.shape) for p in parts)

    # ---- the discrete 8-bit data ----------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if off_grid(x, _BINS):
            raise ValueError(f"{self.name} models 8-bit grey images: expects values k/255 in "
                             "[0, 1] (uint8 images divided by 255)")

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """y = (255 x + u) / 256, u ~ U(0, 1): a uniform point of each 8-bit value's bin."""
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=self.W.dtype)
        return (levels_index(x, _BINS).to(u.dtype) + u) / _BINS

    def log_prob(self, x: Tensor, k: int = 1, seed: int | None = None) -> Tensor:
        """Dequantization lower bound on log P(x) in nats per image, (B,) float64.

        log (1/k) sum_i p(y_i) / 256^D with y_i = ``dequantize(x)`` drawn k times: with k = 1
        the training objective; in expectation a lower bound that tightens as k grows.
        Noise comes from ``seed`` if given, else from ``eval_seed`` in eval mode, else fresh.
        """
        self.check_input(x)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if seed is None and not self.training:
            seed = self.config.eval_seed
        gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
        total = None
        for _ in range(k):
            lp = self._log_density(self._ordered(self.dequantize(x, gen)))
            total = lp if total is None else torch.logaddexp(total, lp)
        return total - math.log(k) - self.n_pixels * math.log(_BINS)

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None,
               continuous: bool = False) -> Tensor:
        """Ancestral samples: per pixel a component, then a Gaussian draw from it.

        Returns images on the 256-level grid, or y itself with ``continuous=True``. Given pixels
        (``cond``, values k/255) enter the later conditionals as their bin centres (k + 1/2)/256.
        """
        W, c, rho, V, b = self.W, self.c, self.rho, self.V, self.b
        d, k, dt = self.n_pixels, self.config.components, W.dtype
        parts = split_cond(cond, n, self.shape, self.device, _BINS)
        # All randomness up front, pixel-major (D, n, ...) so each pixel's rows are contiguous.
        gumbel = -torch.log(-torch.log(torch.rand(d, n, k, device=W.device, dtype=dt)
                                       .clamp_(min=1e-30)))
        eps = torch.randn(d, n, device=W.device, dtype=dt)
        if parts is not None:
            given, known = (t[:, self.order].t().contiguous() for t in parts)  # (D, n)
            given = (levels_index(given, _BINS).to(dt) + 0.5) / _BINS
        ys = torch.empty(d, n, device=W.device, dtype=dt)
        a = c.expand(n, -1).clone()  # (n, H)
        h = torch.empty_like(a)
        out = torch.empty(n, 3 * k, device=W.device, dtype=dt)
        for i in range(d):
            _act_(self.config.activation, torch.mul(a, rho[i], out=h))
            torch.addmm(b[i], h, V[i], out=out)  # (n, 3K)
            comp = (out[:, :k] + gumbel[i]).argmax(1, keepdim=True)  # Gumbel-max: the component
            mean = out[:, k:2 * k].gather(1, comp).squeeze(1)
            scale = out[:, 2 * k:].gather(1, comp).squeeze(1).exp_().add_(self.config.min_scale)
            torch.addcmul(mean, scale, eps[i], out=ys[i])
            if parts is not None:  # given pixels are copied, so later ones condition on them
                torch.where(known[i], given[i], ys[i], out=ys[i])
            a.addr_(ys[i], W[i])  # a += y_i W_i
        y = ys.t()[:, self.inverse].reshape(n, *self.shape)
        if continuous:
            return y.float()
        return (torch.floor(y * _BINS).clamp_(0, _BINS - 1) / (_BINS - 1)).float()
