"""NADE, the Neural Autoregressive Distribution Estimator (Larochelle & Murray 2011, AISTATS,
JMLR W&CP 15; journal version Uria et al. 2016, arXiv:1605.02226).

p(x) = prod_d p(x_od | x_o<d) along an ordering o, with one hidden layer shared by all the
conditionals:  h_d = sigmoid(c + W[:, o<d] x_o<d),  p(x_od = 1 | x_o<d) = sigmoid(b_d + V_d . h_d).
Consecutive pre-activations differ by one column, a_(d+1) = a_d + x_od W[:, od], so all D
conditionals cost O(DH) rather than O(D^2 H); log p(x) is exact and sampling is ancestral.
The paper reports about 88.9 nats on binarised MNIST with 500 hidden units.

Speed. Autograd through that recurrence (or through a (B, D, H) cumulative sum) is memory-bound.
Here a custom autograd function walks the ordering in blocks of K pixels and the batch in
chunks, so each block's (K, chunk, H) working set (about 1 MB) stays in cache:
within a block the K pre-activations come from one small matmul with a strictly triangular
mask, and the gradient with respect to W needs the *suffix* sums sum_(d>i) delta_a_d, which we
write as total - prefix. So when the loss is the usual mean negative log-likelihood, the
gradients are accumulated during the forward sweep itself (sigmoids computed once, nothing of
size B*D*H stored) and ``backward`` only rescales them; any other upstream gradient falls back to
a second sweep with the same code. The walk over the blocks is compiled by TorchScript, so
it runs without Python's GIL, and large batches are split across threads, one share each,
when torch has more than one thread (during training, genlab.threads grants the idle cores).
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from genlab.models.autoregressive import PixelAutoregressive
from genlab.nn import discrete_log_prob, discrete_sample, full_precision
from genlab.orderings import ordering

try:  # private in torch; without it, FLOP counts would miss the compiled sweep, nothing else
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # pragma: no cover
    def _get_current_dispatch_mode() -> None:
        return None

# Pixels per block: larger blocks waste matmul work on the triangular mask, smaller ones
# dispatch more operations; 4 measured fastest at H = 500 (3,210 vs 3,041 images/s for 8).
_MAX_BLOCK = 4
_WORKING_SET = 2**18  # floats per (K, chunk, H) block buffer: 1 MB of float32, fits in L2
# Images per thread below which splitting the batch does not pay (at batch 64, two shares of
# 32 train at 2,343 images/s against 1,945 for one sweep on two intra-op threads).
_MIN_SHARE = 32


@dataclass
class NADEConfig:
    hidden: int = 500  # the paper's MNIST model
    ordering: str = "raster"  # genlab.orderings.ORDERINGS; the paper used the data's own order
    seed: int = 0  # seed of the "random" ordering
    levels: int = 2  # 2: binary pixels; K > 2: a K-way softmax per sub-pixel (grey or colour)


def _block_size(d: int) -> int:
    """Largest K <= _MAX_BLOCK dividing d, so blocks tile the ordering exactly."""
    return max(k for k in range(1, min(_MAX_BLOCK, d) + 1) if d % k == 0)


def _sweep(xs: Tensor, W: Tensor, V: Tensor, b: Tensor, c: Tensor,
           upstream: Tensor | None = None, grads: bool = False, need_x: bool = False
           ) -> tuple[Tensor, tuple[Tensor | None, ...] | None]:
    """``_sweep_serial`` with the batch split over torch's threads.

    The sweep is a chain of small, cache-sized operations that intra-op threading cannot
    speed up, but images are independent: each Python thread sweeps its share of the batch
    with one intra-op thread (the compiled sweep runs without the GIL) and the gradient sums
    are added. At batch 512 on two cores a training step runs at 3,210 images/s split against
    2,005 as one sweep on two intra-op threads (an idle machine, benchmarks/nade_speed.py's
    model). The shares pay only on idle cores: where other processes hold the cores, each
    share gets a slice of this process's CPU time and the step waits for the slower one
    (batch 64 beside other jobs: about half the images/s of one sweep on one thread), so
    the split follows torch's thread count, which genlab.threads lowers to the idle cores.
    """
    threads = torch.get_num_threads()
    parts = min(threads, xs.shape[0] // _MIN_SHARE)
    # Threads share out CPU cores; a GPU runs the whole batch at once. Modes do not see other
    # threads.
    if parts < 2 or xs.device.type != "cpu" or _get_current_dispatch_mode() is not None:
        return _sweep_serial(xs, W, V, b, c, upstream, grads, need_x)
    cuts = [len(xs) * i // parts for i in range(parts + 1)]
    _walk_compiled()  # compile here, once, rather than racing to it in the worker threads
    torch.set_num_threads(1)
    try:
        futures = [
            _pool(parts).submit(
                _sweep_serial, xs[lo:hi], W, V, b, c,
                None if upstream is None else upstream[lo:hi], grads, need_x,
                2 * _WORKING_SET)
            for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        results = [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)
    logits = torch.cat([r[0] for r in results])
    if not grads:
        return logits, None
    grad_parts = [r[1] for r in results]
    summed = tuple(torch.stack(g).sum(0) for g in list(zip(*grad_parts, strict=True))[:4])
    dx = torch.cat([g[4] for g in grad_parts]) if need_x else None
    return logits, (*summed, dx)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="nade-sweep")


def _sweep_serial(xs: Tensor, W: Tensor, V: Tensor, b: Tensor, c: Tensor,
                  upstream: Tensor | None = None, grads: bool = False, need_x: bool = False,
                  working_set: int | None = None
                  ) -> tuple[Tensor, tuple[Tensor | None, ...] | None]:
    """``_walk`` for one thread, compiled by TorchScript when possible.

    The walk is ~20 small operations per block; compiled, they dispatch without Python and,
    above all, without the GIL, so the batch shares of ``_sweep`` run truly in parallel.
    Called from autograd Functions and from worker threads, whose grad mode is their own.
    """
    # Under a dispatch mode (torch's FLOP counter, tracing) run the Python walk, whose
    # operations the mode can see; compiled code bypasses Python-level modes.
    walk = _walk if _get_current_dispatch_mode() is not None else _walk_compiled()
    with torch.no_grad():
        return walk(xs, W, V, b, c, upstream, grads, need_x, _block_size(xs.shape[1]),
                    working_set or _WORKING_SET)


@functools.cache
def _walk_compiled():
    """``_walk`` compiled by TorchScript, or ``_walk`` itself where compiling is not possible
    (e.g. an installation without the source files)."""
    try:
        with warnings.catch_warnings():
            # Deprecated in favour of torch.compile, which needs a C++ compiler at run time;
            # TorchScript needs nothing beyond torch, and the Python fallback stays correct.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(_walk)
    except Exception:  # noqa: BLE001 - any failure to compile leaves the identical Python code
        return _walk


def _walk(xs: Tensor, W: Tensor, V: Tensor, b: Tensor, c: Tensor, upstream: Tensor | None,
          grads: bool, need_x: bool, K: int, working_set: int
          ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None] | None]:
    """Logits (B, D) of every conditional and optionally the gradients of
    L = sum_(n,d) g_nd * logit_nd, with g = ``upstream`` (B, D) if given, else
    g = sigmoid(logit) - x, the gradient of the loss -log p(x) (known once a block's logits are).

    xs (B, D) in the model's ordering; W, V (D, H); b (D,); c (H,); blocks of K pixels, batch
    chunks sized so a (K, chunk, H) block buffer holds ``working_set`` floats. Gradients come
    back as (dW, dV, db, dc, dx) with dx = None unless ``need_x``; dx holds only the path
    through the hidden layer.
    """
    B, D = xs.shape
    H = W.shape[1]
    nb = D // K
    chunk = max(1, working_set // (K * H))
    dt, dev = W.dtype, W.device
    Wk, Vk = W.view(nb, K, H), V.view(nb, K, 1, H)
    logits = torch.empty(nb, K, B, dtype=dt, device=dev)  # block-major, batch last
    strict = torch.ones(K, K, dtype=dt, device=dev).tril_(-1)  # [j, i] = 1 if i < j
    incl = torch.ones(K, K, dtype=dt, device=dev).triu_()  # [j, i] = 1 if j <= i
    ones = torch.ones(1, K, dtype=dt, device=dev)
    rows = min(chunk, B)
    buf = torch.empty(K * rows * H, dtype=dt, device=dev)
    # Per-chunk inputs live in buffers allocated once: fresh megabyte tensors per chunk cost
    # page faults comparable to the arithmetic. The gradient buffers exist even without
    # ``grads`` (TorchScript wants every variable defined on every path); they are small.
    xk_buf = torch.empty(nb * rows * K, dtype=dt, device=dev)
    mask_buf = torch.empty(2, nb * K * rows * K, dtype=dt, device=dev)
    dW, dV, dc = torch.zeros_like(W), torch.zeros_like(V), torch.zeros_like(c)
    dWk, dVk = dW.view(nb, K, H), dV.view(nb, K, 1, H)
    dx: Tensor | None = torch.zeros_like(xs) if need_x else None
    gbuf = torch.empty(nb, K, rows, dtype=dt, device=dev)
    bk = b.view(nb, K, 1)
    for s in range(0, B, chunk):
        xb = xs[s:s + chunk]
        n = xb.shape[0]
        xk = xk_buf[:nb * n * K].view(nb, n, K)  # block k's pixels
        xk.copy_(xb.view(n, nb, K).transpose(0, 1))
        xkt = xk.transpose(1, 2)  # (nb, K, n)
        # xtri[k][(j, m), i] = x_m,kK+i if i < j: one matmul gives a block's K pre-activations.
        xtri = mask_buf[0, :nb * K * n * K].view(nb, K, n, K)
        torch.mul(xk.unsqueeze(1), strict.view(1, K, 1, K), out=xtri)
        xtri = xtri.view(nb, K * n, K)
        y = mask_buf[1, :nb * K * n * K].view(nb, K, n, K)  # as xtri with i >= j
        if grads:
            torch.mul(xk.unsqueeze(1), incl.view(1, K, 1, K), out=y)
        y = y.view(nb, K * n, K)
        a = c.expand(n, H).clone()  # (n, H) pre-activation at the start of the block
        A = buf[:K * n * H].view(K, n, H)  # pre-activations, then h, then delta a, in place
        A2, Af = A.view(K * n, H), A.view(K, n * H)
        L = logits[:, :, s:s + n]  # (nb, K, n)
        prefix = torch.zeros(n, H, dtype=dt, device=dev)  # sum of delta a so far
        G = gbuf[:, :, :n]  # (nb, K, n) dL/dlogit
        if grads and upstream is not None:
            G.copy_(upstream[s:s + n].t().view(nb, K, n))
        for k in range(nb):
            # A_j = a + sum_(i<j) x_i W_i for the block's K pixels, bias added in the matmul.
            torch.baddbmm(a.expand(K, n, H), xtri[k].view(K, n, K), Wk[k].expand(K, K, H),
                          out=A)
            A.sigmoid_()  # h (K, n, H)
            # (1, H) x (H, n) per pixel: the row-vector form is ~3x faster than (n, H) x (H, 1).
            torch.bmm(Vk[k], A.transpose(1, 2), out=L[k].unsqueeze(1))
            a.addmm_(xk[k], Wk[k])
            if not grads:
                continue
            g = G[k]  # (K, n)
            if upstream is None:
                torch.add(L[k], bk[k], out=g).sigmoid_().sub_(xkt[k])
            dVk[k].baddbmm_(g.unsqueeze(1), A)  # dV_j += sum_m g_jm h_jm
            # delta a = g V h (1 - h), in place over h: (K, n, H)
            A.addcmul_(A, A, value=-1).mul_(Vk[k]).mul_(g.unsqueeze(2))
            # dW_i = sum_m x_mi (total_m - prefix_m - sum_(j<=i) delta a_jm); total added below
            dWk[k].addmm_(y[k].t(), A2, alpha=-1).addmm_(xk[k].t(), prefix, alpha=-1)
            prefix.view(1, n * H).addmm_(ones, Af)  # += sum_j delta a_j
        if grads:
            dW.addmm_(xb.t(), prefix)  # prefix now holds the total over all D pixels
            dc += prefix.sum(0)
            if dx is not None:
                _input_grad(xk, xtri, Wk, Vk, c, G, prefix, A, dx[s:s + n].view(n, nb, K))
    logits = logits.view(D, B).t() + b  # (B, D)
    if not grads:
        return logits, None
    g_all = upstream if upstream is not None else torch.sigmoid(logits) - xs
    return logits, (dW, dV, g_all.sum(0), dc, dx)


def _input_grad(xk: Tensor, xtri: Tensor, Wk: Tensor, Vk: Tensor, c: Tensor, G: Tensor,
                total: Tensor, A: Tensor, dx: Tensor) -> None:
    """dL/dx through the hidden layer for one batch chunk, once its totals are known:
    dx_mi = W_i . sum_(d>i) delta a_md. A second walk over the blocks (only when x needs a
    gradient), which forms each suffix sum before the dot product so that pixels at or after
    every nonzero g get exactly zero gradient, as the autoregressive property demands.

    Shapes as in ``_sweep``: xk (nb, n, K), xtri (nb, K*n, K), Wk (nb, K, H), Vk (nb, K, 1, H),
    G (nb, K, n), total (n, H), A a (K, n, H) work buffer; dx (n, nb, K) is written.
    """
    nb, n, K = xk.shape
    a = c.expand(n, -1).clone()
    suffix = total.clone()  # sum of delta a over the pixels not yet visited
    for k in range(nb):
        torch.mm(xtri[k], Wk[k], out=A.view(K * n, -1))
        A.add_(a).sigmoid_()
        a.addmm_(xk[k], Wk[k])
        A.addcmul_(A, A, value=-1).mul_(Vk[k]).mul_(G[k].unsqueeze(2))  # delta a (K, n, H)
        after = suffix - A.cumsum(0)  # [j] = sum of delta a strictly after pixel j
        suffix.copy_(after[-1])
        dx[:, k] = torch.bmm(after, Wk[k].unsqueeze(2)).squeeze(2).t()


def _nats(logits: Tensor, xs: Tensor) -> Tensor:
    """log p(x) per image (B,): stable per-pixel terms, summed in float64."""
    per_pixel = -F.binary_cross_entropy_with_logits(logits, xs, reduction="none")
    return per_pixel.double().sum(1)


class _LogProb(torch.autograd.Function):
    """log p(x) (B,) with the gradients of -sum log p computed during the forward sweep."""

    @staticmethod
    @full_precision
    def forward(ctx, xs: Tensor, W: Tensor, V: Tensor, b: Tensor, c: Tensor) -> Tensor:
        logits, (dW, dV, db, dc, _) = _sweep(xs, W, V, b, c, grads=True)
        ctx.save_for_backward(xs, W, V, b, c, logits, dW, dV, db, dc)
        return _nats(logits, xs)

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:
        xs, W, V, b, c, logits, dW, dV, db, dc = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        if not need_x and bool((gy == gy[0]).all()):
            # The usual case (a mean or sum of log p): the forward sweep already has the answer.
            scale = -gy[0].to(dW.dtype)
            return None, dW * scale, dV * scale, db * scale, dc * scale
        gy = gy.to(logits.dtype).unsqueeze(1)  # (B, 1)
        upstream = gy * (xs - torch.sigmoid(logits))  # dL/dlogit
        _, (dW, dV, db, dc, dx) = _sweep(xs, W, V, b, c, upstream, grads=True, need_x=need_x)
        if dx is not None:
            dx += gy * logits  # the direct term x * logit of log p
        return dx, dW, dV, db, dc


class _Logits(torch.autograd.Function):
    """Logits (B, D) of every conditional, differentiable in x and the parameters."""

    @staticmethod
    @full_precision
    def forward(ctx, xs: Tensor, W: Tensor, V: Tensor, b: Tensor, c: Tensor) -> Tensor:
        ctx.save_for_backward(xs, W, V, b, c)
        return _sweep(xs, W, V, b, c)[0]

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, gl: Tensor) -> tuple[Tensor | None, ...]:
        xs, W, V, b, c = ctx.saved_tensors
        _, (dW, dV, db, dc, dx) = _sweep(xs, W, V, b, c, gl.contiguous(), grads=True,
                                         need_x=ctx.needs_input_grad[0])
        return dx, dW, dV, db, dc


class NADE(PixelAutoregressive):
    """NADE with one sigmoid hidden layer of ``hidden`` units along a fixed pixel ordering.

    With ``levels`` = K > 2 each conditional is a K-way softmax (output weights (D, K, H)) and
    the input is the sub-pixel's value k / (K - 1) itself, so the O(DH) recurrence is unchanged.
    The hand-written sweep serves the binary case; K levels go through plain autograd.
    """

    name = "nade"
    paper = ("Larochelle & Murray 2011, The Neural Autoregressive Distribution Estimator "
             "(AISTATS, JMLR W&CP 15); Uria et al. 2016 (arXiv:1605.02226)")
    Config = NADEConfig
    presets = {
        # Static-binarised MNIST, 2-minute single-core trials (validation NLL after ~4 epochs):
        # batch 64 / lr 5e-3 / cosine 90.1; constant lr: 64 / 5e-3 90.7, 128 / 1e-2 90.9,
        # 32 / 5e-3 90.8, 128 / 5e-3 91.3, 256 / 1e-2 91.3, 64 / 2e-3 92.9, 32 / 1e-3 94.2.
        # The cosine decay follows the step budget or --time-budget, whichever ends first.
        # With static binarization NADE overfits after ~5 epochs at this rate: patience stops
        # the run after 6 validations without progress and keeps the best weights.
        "cpu": {"model": {"hidden": 500},
                "train": {"batch_size": 64, "lr": 5e-3, "schedule": "cosine", "steps": 60_000,
                          "patience": 6, "binarize": "static"}},
        # The paper trained with stochastic gradient descent (learning rate and its decay chosen
        # on validation data) and early stopping; we keep its model and use Adam instead.
        "paper": {"model": {"hidden": 500, "ordering": "raster"},
                  "train": {"batch_size": 100, "lr": 1e-3, "steps": 200_000,
                            "binarize": "static"}},
    }

    def __init__(self, shape: tuple[int, int, int], config: NADEConfig) -> None:
        super().__init__(shape, config)
        c, _, w = self.shape
        d, h = self.n_pixels, int(config.hidden)
        if h < 1:
            raise ValueError(f"hidden must be a positive number of units, got {h}")
        # order[i]: flat index of the i-th generated pixel; a buffer so save/load keeps it.
        self.order = ordering(config.ordering, d, config.seed, w, c)
        self.register_buffer("inverse", torch.argsort(self.order), persistent=False)
        # Rows are indexed by position in the ordering (W is the paper's W transposed), so a
        # block of consecutive pixels is a contiguous (K, H) slice.
        out = () if self.levels == 2 else (self.levels,)
        self.W = nn.Parameter(torch.randn(d, h) * 0.01)  # input weights (D, H)
        self.V = nn.Parameter(torch.randn(d, *out, h) * 0.01)  # output weights (D, [K,] H)
        self.b = nn.Parameter(torch.zeros(d, *out))  # output biases (D, [K])
        self.c = nn.Parameter(torch.zeros(h))  # hidden biases (H,)

    def _ordered(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)[:, self.order].to(self.W.dtype)  # (B, D)

    def _params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.W, self.V, self.b, self.c

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.levels > 2:
            return discrete_log_prob(self.logits(x), x, self.levels)
        xs = self._ordered(x)
        params = self._params()
        if torch.is_grad_enabled() and any(t.requires_grad for t in (xs, *params)):
            return _LogProb.apply(xs, *params)
        return _nats(_sweep(xs, *params)[0], xs)

    def encode(self, x: Tensor) -> Tensor:
        """Features (B, H): the hidden layer after the last sub-pixel, sigmoid(c + W^T x),
        i.e. the activations given the whole image. Every conditional reads a prefix of
        this sum; this one is a feature of the whole image, which no conditional uses."""
        self.check_input(x)
        return torch.sigmoid(torch.addmm(self.c, self._ordered(x), self.W))  # (B, D) @ (D, H)

    def logits(self, x: Tensor) -> Tensor:
        """Logits of p(x_i | the sub-pixels before i in the ordering): (B, C, H, W) for binary
        pixels, (B, K, C, H, W) for K levels.

        ``x`` may hold any real values: the conditionals are smooth in the preceding pixels,
        which lets tests check the autoregressive property with gradients.
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            self.check_input(x)  # raises the standard shape error
        xs = self._ordered(x)
        if self.levels == 2:
            return _Logits.apply(xs, *self._params())[:, self.inverse].view(x.shape)
        # K levels: the textbook (B, D, H) exclusive cumulative sum, differentiated by autograd.
        step = xs.unsqueeze(2) * self.W  # (B, D, H)
        h = torch.sigmoid(self.c + torch.cumsum(step, 1) - step)
        out = torch.einsum("bdh,dkh->bkd", h, self.V) + self.b.t()  # (B, K, D)
        return out[:, :, self.inverse].reshape(len(x), self.levels, *self.shape)

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None,
               u: Tensor | None = None) -> Tensor:
        """Ancestral sampling with the O(H) update of the hidden pre-activation per sub-pixel."""
        W, V, b, c = self._params()
        d = self.n_pixels
        parts = self.given(n, cond)
        u = self.uniforms(n) if u is None else u.to(W.device)
        # Pixel-major (D, n) layouts keep every per-pixel row contiguous.
        us = u.reshape(n, d)[:, self.order].t().contiguous()  # (D, n) in generation order
        xs = torch.empty(d, n, device=W.device, dtype=W.dtype)  # in generation order
        a = c.expand(n, -1).clone()  # (n, H) running pre-activation
        h = torch.empty_like(a)
        if parts is not None:
            given, known = (t[:, self.order].t().contiguous() for t in parts)  # (D, n)
            given = given.to(W.dtype)
        if self.levels == 2:
            # x_d = 1 iff u < sigmoid(logit) iff logit > log(u / (1 - u)): no sigmoid per pixel.
            threshold = torch.logit(us.to(W.dtype))
            logit = torch.empty(n, device=W.device, dtype=W.dtype)
        for i in range(d):
            torch.sigmoid(a, out=h)
            if self.levels == 2:
                torch.addmv(b[i], h, V[i], out=logit)  # b_i + h . V_i
                torch.gt(logit, threshold[i], out=xs[i])
            else:
                xs[i] = discrete_sample(torch.addmm(b[i], h, V[i].t()), self.levels, us[i])
            if parts is not None:  # given pixels are copied, so later ones condition on them
                torch.where(known[i], given[i], xs[i], out=xs[i])
            a.addr_(xs[i], W[i])  # a += x_i W_i
        return xs.t()[:, self.inverse].float().reshape(n, *self.shape)
