"""Layers shared by several models. Code two models need lives here, never copied."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(
    sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, final: nn.Module | None = None
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between.

    ``final`` (e.g. ``nn.Sigmoid()``) is appended after the last layer when given.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


def full_precision(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run an autograd Function's ``forward`` or ``backward`` with autocast off and its
    half-precision tensor arguments in float32.

    The hand-written kernels (NADE's and RNADE's sweeps, PixelRNN's scan) write into float32
    buffers with ``out=`` and in-place ops, which autocast's bfloat16 operands would break, and
    they are bound by memory traffic, not by matmul speed, so they gain nothing from it. Under
    ``precision="bf16"`` the layers around them still autocast. Works on whichever device the
    tensors are on (CUDA in training; CPU autocast in the tests).
    """

    @functools.wraps(method)
    def run(ctx: Any, *args: Any) -> Any:
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
            return method(ctx, *args)
        half = (torch.float16, torch.bfloat16)
        args = tuple(a.float() if isinstance(a, Tensor) and a.dtype in half else a for a in args)
        with torch.autocast(device, enabled=False):
            return method(ctx, *args)

    return run


# ---- discrete pixel values: binary (levels=2) or K grey levels per sub-pixel ---------------------
#
# A model with ``levels`` = K sees sub-pixel values on the grid k / (K - 1). Its logits are
# (B, *S) for K = 2 (one Bernoulli logit per sub-pixel) and (B, K, *S) for K > 2 (a softmax per
# sub-pixel, the class dimension second as in F.cross_entropy), where x is (B, *S).


def levels_index(x: Tensor, levels: int) -> Tensor:
    """Level k (long) of values on the grid k / (levels - 1)."""
    return torch.round(x * (levels - 1)).long().clamp_(0, levels - 1)


def off_grid(x: Tensor, levels: int) -> bool:
    """True when some value of ``x`` is outside [0, 1] or not on the ``levels`` grid."""
    scaled = x.double() * (levels - 1)
    # Written as "not all on the grid" so that NaN, which fails every comparison, is off it.
    on = ((scaled - scaled.round()).abs() <= 1e-3) & (x >= 0) & (x <= 1)
    return not bool(on.all())


def discrete_log_prob(logits: Tensor, x: Tensor, levels: int) -> Tensor:
    """log p(x) per image (B,), from per-sub-pixel logits; the sum runs in float64."""
    if levels == 2:
        per = -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    else:
        per = -F.cross_entropy(logits, levels_index(x, levels), reduction="none")
    return per.reshape(len(x), -1).double().sum(1)


def discrete_sample(logits: Tensor, levels: int, u: Tensor) -> Tensor:
    """Values in [0, 1] drawn by inverting the CDF at the uniforms ``u`` (shape of x).

    Taking the uniforms as an argument makes samplers reproducible: two samplers that feed the
    same ``u`` and compute the same logits produce the same images.
    """
    if levels == 2:
        return (u < torch.sigmoid(logits)).to(torch.float32)
    cdf = torch.softmax(logits.double(), 1).cumsum(1)  # (B, K, *S)
    k = (cdf < u.double().unsqueeze(1)).sum(1).clamp_(max=levels - 1)
    return k.to(torch.float32) / (levels - 1)


# ---- the discretised logistic (Salimans et al. 2017, PixelCNN++; Kingma et al. 2016) ------------
#
# Two numbers per sub-pixel, a mean m and a log-scale, instead of K logits: the level k of the
# grid k / (K - 1) has the mass of a logistic(m, s) on the bin of width 1/(K - 1) centred on it,
# the two edge bins extended to -inf and +inf, so the K masses sum to exactly 1 and a mean
# beyond 0 or 1 makes black or white near-certain. Means, log-scales and x are all (B, *S).
#
# The log-scale is clamped from below at log(bin width) - 3, i.e. s >= bin / e^3 (about a
# twentieth of a bin): the clamp bounds 1/s, the scale of the gradients, by e^3 (K - 1), yet
# the centre bin of so narrow a logistic still holds 2 sigmoid(e^3 / 2) - 1 > 0.9999 of the
# mass, so every grid value can be made near-certain. The floor is relative to the grid so that
# it means the same for any K: a fixed -7 on [0, 1] data would cap a 256-level bin at 0.79.


def logistic_min_log_scale(levels: int) -> float:
    """The floor of the discretised logistic's log-scale on the ``levels`` grid: s >= bin / e^3."""
    return -math.log(levels - 1) - 3.0


def _in_bins(mean: Tensor, log_scale: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """The mean in units of a bin, m (K - 1), so that level k sits at k and its bin's edges at
    k -+ 1/2 exactly; and w = bin width / s, the inverse scale in those units, with log w.

    Standardised edges (k + 1/2 - m (K - 1)) w are then bit for bit the same for the upper edge
    of one bin and the lower edge of the next, so the masses telescope to 1 even in float32,
    which grid values k / (K - 1) rounded to float32 and a scale of a twentieth of a bin do not.
    """
    log_w = -math.log(levels - 1) - log_scale.clamp(min=logistic_min_log_scale(levels))
    return mean * (levels - 1), log_w.exp(), log_w


def logistic_log_prob(mean: Tensor, log_scale: Tensor, x: Tensor, levels: int) -> Tensor:
    """log p(x) per image (B,) under a discretised logistic per sub-pixel; the sum is float64.

    The terms are computed in float32 or wider (float64 in, float64 throughout). With a and b
    the standardised upper and lower edges of x's bin (a - b = w > 0), the edge bins are
    log sigmoid(a) and log sigmoid(-b), and an interior bin uses the identity
    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^-w): three terms that are each
    stable wherever a and b lie (no difference of two CDFs near 1, which PixelCNN++ has to
    guard). Only 1 - e^-w could underflow, for a scale of many bins; there it is replaced by
    its expansion w e^(-w/2), i.e. the density at the bin's centre times the bin's width.
    """
    dtype = torch.promote_types(mean.dtype, torch.float32)  # never the half of autocast
    centre, w, log_w = _in_bins(mean.to(dtype), log_scale.to(dtype), levels)
    k = levels_index(x, levels)
    upper = (k.to(dtype) + 0.5 - centre) * w  # a
    lower = (k.to(dtype) - 0.5 - centre) * w  # b
    # log(1 - e^-w), to float64 rounding in both branches; the clamp keeps the unused branch's
    # gradient finite where w underflows.
    gap = torch.where(log_w > -15.0, torch.log(-torch.expm1(-w.clamp(min=1e-30))),
                      log_w - w / 2)
    interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + gap
    per = torch.where(k == 0, F.logsigmoid(upper),
                      torch.where(k == levels - 1, F.logsigmoid(-lower), interior))
    return per.reshape(len(x), -1).double().sum(1)


def logistic_sample(mean: Tensor, log_scale: Tensor, levels: int, u: Tensor) -> Tensor:
    """Values in [0, 1] on the grid, the discretised logistic's inverse CDF at ``u`` (shape of
    x), with the same contract as :func:`discrete_sample`.

    y = m + s (log u - log(1 - u)) is the continuous logistic's inverse CDF at u. Rounding y to
    the nearest grid point and clamping to [0, 1] maps exactly the bin around level k (and,
    for the edge levels, everything beyond) to k, so P(level k) is that bin's logistic mass:
    the discretised distribution itself, not an approximation. Both maps are monotone, so
    this is also its inverse CDF: larger u never gives a darker value.
    """
    centre, w, _ = _in_bins(mean.double(), log_scale.double(), levels)
    u = u.double()
    y = centre + (torch.log(u) - torch.log1p(-u)) / w  # in bins
    k = torch.round(y).clamp_(0, levels - 1)  # +-inf (u = 0 or 1) clamp too
    return k.to(torch.float32) / (levels - 1)


def logistic_mean(mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """E[x] of the discretised logistic, exactly, shape of ``mean``.

    With grid values k / (K - 1), E[x] = sum_k P(level >= k) / (K - 1) over k = 1 .. K - 1,
    and P(level >= k) = sigmoid((m - lower edge of bin k) / s): K - 1 sigmoids per sub-pixel.
    """
    dtype = torch.promote_types(mean.dtype, torch.float32)
    centre, w, _ = _in_bins(mean.to(dtype), log_scale.to(dtype), levels)
    edges = torch.arange(1, levels, dtype=dtype, device=mean.device) - 0.5  # in bins
    edges = edges.view(-1, *[1] * mean.dim())  # (K - 1, 1, ...)
    above = torch.sigmoid((centre - edges) * w)  # (K - 1, *mean.shape)
    return above.sum(0) / (levels - 1)


# ---- masked convolutions (PixelCNN / PixelRNN input-to-state) ------------------------------------


def colour_groups(n_features: int, colours: int) -> Tensor:
    """Colour group of each of ``n_features`` channels: contiguous blocks, R first.

    With n_features = colours this is the image's own channels; an output layer with
    colours * K channels gives channel c's K logits the group c.
    """
    if n_features % colours:
        raise ValueError(f"{n_features} channels cannot be split into {colours} colour groups")
    return torch.arange(n_features) // (n_features // colours)


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees only the pixels above and, in the current row, to the left.

    At the centre pixel, input colour group i feeds output group j only if i < j (mask 'A', the
    first layer: a sub-pixel never sees itself) or i <= j (mask 'B', later layers). With
    ``colours`` = 3 this gives the R -> G -> B order within a pixel; with 1 it is the plain
    PixelCNN mask. The rows below the centre are all masked, so they are neither stored nor
    computed: the kernel is (k // 2 + 1) x k, about half the multiply-adds of a k x k one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, mask: str = "B",
                 colours: int = 1, bias: bool = True) -> None:
        if kernel % 2 == 0 or mask not in ("A", "B"):
            raise ValueError(f"need an odd kernel and mask 'A' or 'B', got {kernel}, {mask!r}")
        r = kernel // 2
        super().__init__(in_channels, out_channels, (r + 1, kernel), padding=(r, r), bias=bias)
        m = torch.ones(out_channels, in_channels, r + 1, kernel)
        m[:, :, r, r + 1:] = 0  # right of the centre in the current row
        gin, gout = colour_groups(in_channels, colours), colour_groups(out_channels, colours)
        see = gin.unsqueeze(0) < gout.unsqueeze(1) if mask == "A" else (
            gin.unsqueeze(0) <= gout.unsqueeze(1))
        m[:, :, r, r] = see.float()
        self.register_buffer("mask", m, persistent=False)
        self.radius = r

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        r, w = self.radius, self.weight * self.mask
        if r == 0:  # 1x1: nothing to crop (a crop's backward zero-fills and copies the gradient)
            return F.conv2d(x, w, self.bias)
        if self.in_channels <= 4:
            # On an image's few channels, built-in row padding ran 5x slower on one core than
            # convolving the explicitly padded input (r rows on top only: no crop needed).
            return F.conv2d(F.pad(x, (r, r, r, 0)), w, self.bias)
        # Padding r rows on both sides yields H + r rows; the first H are the causal outputs.
        out = F.conv2d(x, w, self.bias, padding=self.padding)
        return out[:, :, : x.shape[2]]


# ---- adversarial training helpers ----------------------------------------------------------------


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Within the block, ``modules``' parameters take no gradients: one player's step builds a
    graph through another player's network (G's loss through D) without touching its weights,
    and without the work of computing gradients nothing will use."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@torch.no_grad()
def ema_update(average: nn.Module, current: nn.Module, decay: float) -> None:
    """``average`` <- decay * ``average`` + (1 - decay) * ``current``, parameter by parameter;
    buffers (BatchNorm statistics) are copied, as they are already running averages."""
    for a, c in zip(average.parameters(), current.parameters(), strict=True):
        a.lerp_(c.detach(), 1.0 - decay)
    for a, c in zip(average.buffers(), current.buffers(), strict=True):
        a.copy_(c)


def pad_to(x: Tensor, size: int, value: float) -> Tensor:
    """(B, C, H, W) -> (B, C, size, size): ``x`` centred, the border filled with ``value``
    (convolutional nets work on a power-of-two square; 28x28 MNIST becomes 32x32)."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=value)


def crop_to(x: Tensor, h: int, w: int) -> Tensor:
    """The centred (h, w) window of (B, C, S, S) ``x``: the inverse of :func:`pad_to`."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def working_size(h: int, w: int, smallest: int = 4) -> int:
    """The power-of-two side (at least ``smallest``) a convolutional net pads (h, w) images to."""
    side = smallest
    while side < max(h, w):
        side *= 2
    return side


# ---- DCGAN-style convolutional networks (Radford et al. 2015) -----------------------------------
#
# Strided (transposed) convolutions instead of pooling, batch norm except at G's output and D's
# input, ReLU in G, LeakyReLU in D. Both work on the power-of-two square ``working_size`` of the
# image: D pads its input there, G's output is cropped back (28x28 MNIST runs at 32x32).


def _halvings(side: int, last: int) -> int:
    """How many times ``side`` halves down to ``last`` (4), at least once."""
    return max(1, (side // last).bit_length() - 1)


class ConvGenerator(nn.Module):
    """z (B, latent) -> (B, C, H, W) pre-activations (the caller applies tanh or a likelihood).

    A 4x4 map of ``width * 2**(n-1)`` channels from a transposed convolution of z, then n
    stride-2 transposed convolutions halving the channels and doubling the side up to the
    working size; ``out_channels`` (default C) per pixel at the end."""

    def __init__(self, latent: int, shape: tuple[int, int, int], width: int = 64,
                 batchnorm: bool = True, out_channels: int | None = None) -> None:
        super().__init__()
        c, self.h, self.w = shape
        side = working_size(self.h, self.w)
        n = _halvings(side, 4) if side > 4 else 0
        out = out_channels if out_channels is not None else c
        start = 4 if n else side
        chans = [width * 2 ** (n - 1 - i) for i in range(n)] + [out]  # at 4x4, 8x8, ...
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent, chans[0], start, 1, 0,
                                                      bias=not (batchnorm and n))]
        for i in range(n):
            layers += [nn.BatchNorm2d(chans[i])] if batchnorm else []
            layers += [nn.ReLU(),
                       nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1,
                                          bias=not batchnorm or i == n - 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        y = self.net(z[:, :, None, None])  # (B, out, S, S)
        return crop_to(y, self.h, self.w)  # (B, out, H, W)


class ConvDiscriminator(nn.Module):
    """x (B, C, H, W) in [-1, 1] -> ``features`` (B, F) -> one logit (B,), or (B, outputs).

    The image is padded to the working size with ``pad`` (-1: black), then stride-2
    convolutions double the channels (``width`` first) down to 4x4 (at least one of them);
    the logit is a convolution over the last map. ``features`` is that map flattened.
    ``outputs`` > 1 makes the head a linear map to that many numbers (an encoder's)."""

    def __init__(self, shape: tuple[int, int, int], width: int = 64, batchnorm: bool = True,
                 slope: float = 0.2, pad: float = -1.0, outputs: int = 1) -> None:
        super().__init__()
        c, h, w = shape
        self.side, self.pad = working_size(h, w), pad
        n = _halvings(self.side, 4)
        layers: list[nn.Module] = []
        chans = [c] + [width * 2**i for i in range(n)]
        for i in range(n):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1, bias=not (batchnorm and i)))
            if batchnorm and i:  # not on D's input layer
                layers.append(nn.BatchNorm2d(chans[i + 1]))
            layers.append(nn.LeakyReLU(slope))
        self.body = nn.Sequential(*layers)
        last = self.side >> n  # 4, or 2 on tiny images
        self.out_dim = chans[-1] * last * last
        self.head = nn.Conv2d(chans[-1], outputs, last)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.body(pad_to(x, self.side, self.pad))  # (B, F_c, 4, 4)

    def layer_maps(self, x: Tensor) -> list[Tensor]:
        """Every layer's activated map, input side first: (B, width, S/2, S/2), ... (B, F_c,
        4, 4); the last is ``feature_map(x)``."""
        maps, y = [], pad_to(x, self.side, self.pad)
        for layer in self.body:
            y = layer(y)
            if isinstance(layer, nn.LeakyReLU):
                maps.append(y)
        return maps

    def features(self, x: Tensor) -> Tensor:
        return self.feature_map(x).flatten(1)  # (B, F)

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.feature_map(x)).flatten(1)  # (B, outputs)
        return y.squeeze(1) if y.shape[1] == 1 else y


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation: every (transposed) convolution's and linear layer's
    weights from N(0, 0.02); batch norm scales from N(1, 0.02), shifts 0; biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ---- equalised learning rate, pixel norm, minibatch deviation (Karras et al. 2018) -------------
#
# Weights are drawn from N(0, 1) and multiplied at run time by He's constant gain / sqrt(fan_in):
# Adam's update is invariant to a weight's scale, so every layer then learns at the same speed
# whatever its fan-in (the "equalised learning rate"). Biases start at zero, unscaled.
class EqualizedLinear(nn.Module):
    """A linear layer whose effective weight is ``weight * gain / sqrt(in_features)``."""
    def __init__(self, in_features: int, out_features: int, gain: float = 2**0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / in_features**0.5
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)
class EqualizedConv2d(nn.Module):
    """A stride-1 'same' convolution whose effective weight is ``weight * gain / sqrt(fan_in)``,
    fan_in = in_channels * kernel * kernel."""
    def __init__(self, in_channels: int, out_channels: int, kernel: int,
                 gain: float = 2**0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / (in_channels * kernel * kernel) ** 0.5
        self.padding = kernel // 2
    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, C, ...) -> each pixel's feature vector divided by its root mean square over C."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)
def minibatch_std(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, C, H, W) -> (B, C + 1, H, W): one more feature map holding the standard deviation
    over the minibatch of every feature at every pixel, averaged over features and pixels.
    A discriminator that sees it can tell a batch of near-identical samples from real data."""
    std = torch.sqrt(x.var(dim=0, unbiased=False) + eps).mean()  # () over (C, H, W)
    return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:]).to(x.dtype)], dim=1)
