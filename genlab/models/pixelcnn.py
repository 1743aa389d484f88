"""PixelCNN (van den Oord et al. 2016a, Pixel Recurrent Neural Networks, arXiv:1601.06759) and
Gated PixelCNN (van den Oord et al. 2016b, Conditional Image Generation with PixelCNN Decoders,
arXiv:1606.05328).

Both factorise p(x) = prod_i p(x_i | x_<i) in raster order, R -> G -> B inside a pixel, and
compute every conditional in one pass of convolutions that only look up and to the left.
``pixelcnn``: a 7x7 mask-'A' convolution (a sub-pixel never sees itself), residual blocks
(ReLU, 1x1 2h->h, ReLU, 3x3 mask 'B', ReLU, 1x1 h->2h; the paper's Figure 5) and two 1x1 mask-'B'
output layers; its receptive field has a blind spot up and to the right.
``gated_pixelcnn``: a vertical stack (rows up to the current one, all columns in reach) and a
horizontal stack (the current row up to the pixel) with gated units tanh(a) * sigmoid(b); the
vertical pre-activations, shifted down one row, feed the horizontal stack through a 1x1
convolution, so there is no blind spot; residual connections in the horizontal stack; with
``classes`` > 0 a learned per-class bias enters every gate (p(x | y)).
Colour: hidden channels come in R, G, B groups and the taps at the current pixel carry the
channel masks (group i feeds group j iff i < j in the first layer, i <= j after it).
Raster order only: the convolutions fix the ordering.

Speed. Training: the masked kernels are cropped to the causal rows ((k//2 + 1) x k vertical,
1 x (k//2 + 1) horizontal), about half the multiply-adds of masked k x k kernels.
Sampling caches activations (Ramachandran et al. 2017, Fast Generation for Convolutional
Autoregressive Models, arXiv:1704.06001): a layer's output at (i, j) depends only on its input
in rows < i and, in row i, in columns <= j. At the start of a row one batched convolution per
layer gives the part from the rows above for the whole row; inside the row each new input
vector is pushed into the outputs it feeds (columns j..j+r) with one small matmul. A sub-pixel
then costs a few (n, c) x (c, c') matmuls per layer instead of a full forward pass, and the
vertical stack runs once per finished row. ``reference_sample`` (one full pass per sub-pixel)
stays as the check: fed the same uniforms, both give the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.autoregressive import PixelAutoregressive
from genlab.nn import MaskedConv2d, colour_groups, discrete_log_prob, discrete_sample


@dataclass
class PixelCNNConfig:
    channels: int = 128  # h of Figure 5: the 3x3 layers' width; the residual stream has 2h
    blocks: int = 12  # with the 7x7 layer and the two output layers: the paper's 15 layers
    kernel: int = 7  # the first (mask 'A') layer
    block_kernel: int = 3  # the masked convolution inside each residual block
    levels: int = 2  # 2 = binary pixels; K > 2 = a K-way softmax per sub-pixel


@dataclass
class GatedPixelCNNConfig:
    channels: int = 128  # feature maps of each stack; the gates' pre-activations have 2x that
    layers: int = 15
    kernel: int = 3  # vertical (k//2 + 1) x k and horizontal 1 x (k//2 + 1) after the first layer
    first_kernel: int = 7
    classes: int = 0  # > 0: class-conditional p(x | y), labels from batch["y"] / cond["y"]
    levels: int = 2


# ---- pieces shared by the two models ------------------------------------------------------------


def _gate(t: Tensor, colours: int) -> Tensor:
    """tanh(a) * sigmoid(b), (B, 2h, ...) -> (B, h, ...). Each colour group of 2h/C channels holds
    its own (a, b) halves, so the output keeps the colour groups."""
    b = t.shape[0]
    a, g = t.view(b, colours, 2, -1, *t.shape[2:]).unbind(2)  # unbind: one copy in backward
    return (torch.tanh(a) * torch.sigmoid(g)).reshape(b, -1, *t.shape[2:])


def _weights_1x1(conv: MaskedConv2d) -> tuple[Tensor, Tensor]:
    """A masked 1x1 convolution as (Cin, Cout) matrix and bias, for per-pixel matmuls."""
    return (conv.weight * conv.mask)[:, :, 0, 0].t().contiguous(), conv.bias


def _group(n: int, colours: int, c: int) -> slice:
    """Channels of colour group ``c`` among ``n`` (contiguous blocks, as ``colour_groups``)."""
    size = n // colours
    return slice(c * size, (c + 1) * size)


class _RowCache:
    """Sampling state of one causal convolution with weight (Cout, Cin, a + 1, kw).

    The last kernel row sits on the current image row, with its centre tap at column
    ``centre`` (taps right of it are masked to zero); the ``a`` rows above it see the rows
    above. ``row`` (n, W, Cin) holds the layer's inputs in the current image row, written by the
    layer below; ``acc`` (n, W + r, Cout) the outputs of the row so far: bias + the rows-above
    part (one convolution per row) + the pushes of the inputs already seen in this row.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, n: int, h: int, w: int,
                 centre: int) -> None:
        cout, cin, rows, kw = weight.shape
        self.a, self.r, self.w = rows - 1, centre, w
        self.above = weight[:, :, :-1].contiguous() if self.a else None
        # taps[:, d] carries the input at column j to the output at column j + d.
        taps = weight[:, :, -1, : centre + 1].flip(-1).permute(1, 2, 0)  # (Cin, r + 1, Cout)
        self.centre_w = taps[:, 0].contiguous()  # (Cin, Cout)
        self.left_w = taps[:, 1:].reshape(cin, -1).contiguous()  # (Cin, r * Cout)
        self.bias = bias if bias is not None else weight.new_zeros(cout)
        self.acc = weight.new_zeros(n, w + centre, cout)
        self.row = weight.new_zeros(n, w, cin)
        if self.a:  # inputs of all rows so far, zero-padded like the convolution's input
            self.map = weight.new_zeros(n, cin, h + self.a, w + kw - 1)

    def start_row(self, i: int, extra: Tensor | None = None) -> None:
        self.acc.zero_()
        body = self.acc[:, : self.w]  # (n, W, Cout)
        if self.above is not None:  # image rows i - a .. i - 1
            body.copy_(F.conv2d(self.map[:, :, i: i + self.a], self.above)[:, :, 0].transpose(1, 2))
        body += self.bias
        if extra is not None:
            body += extra

    def centre(self, j: int, s: slice) -> Tensor:
        """Output channels ``s`` at column j, (n, |s|); needs row[:, j] filled up to group s."""
        return torch.addmm(self.acc[:, j, s], self.row[:, j], self.centre_w[:, s])

    def push(self, j: int) -> None:
        """Once the input at column j is complete: add its share to columns j+1 .. j+r."""
        if self.r:
            self.acc[:, j + 1: j + 1 + self.r].flatten(1).addmm_(self.row[:, j], self.left_w)

    def end_row(self, i: int) -> None:
        if self.a:
            self.map[:, :, self.a + i, self.r: self.r + self.w] = self.row.transpose(1, 2)


class _CachedPixelModel(PixelAutoregressive):
    """The shared outer loop of the cached sampler; subclasses build the per-layer state."""

    def _check_width(self, channels: int) -> None:
        c = self.shape[0]
        if channels < 1 or channels % c:
            raise ValueError(f"channels must be a positive multiple of the {c} colour channels "
                             f"(each colour gets its own group of hidden units), got {channels}")

    def _layout(self, out: Tensor) -> Tensor:
        """(B, C*K, H, W) output channels, grouped by colour, -> the logits layout."""
        if self.levels == 2:
            return out
        b, _, h, w = out.shape
        return out.view(b, self.shape[0], self.levels, h, w).transpose(1, 2)

    def _input(self, x: Tensor) -> Tensor:
        """Pixel values as network input: in [-1, 1] and in the parameters' dtype."""
        return x.to(self.head_out.weight.dtype) * 2 - 1

    def _sampler(self, n: int, cond: dict[str, Tensor] | None):  # -> (state, completion cond)
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None,
               u: Tensor | None = None) -> Tensor:
        """n images; ``u`` (n, C, H, W) uniforms make the draw reproducible (as
        ``reference_sample`` with the same ``u``)."""
        state, rest = self._sampler(n, cond)
        u = self.uniforms(n) if u is None else u.to(self.device)
        parts = self.given(n, rest)
        c, h, w = self.shape
        x = torch.zeros(n, c, h, w, device=self.device)
        for i in range(h):
            state.start_row(i)
            for j in range(w):
                for ch in range(c):
                    value = discrete_sample(state.logits(j, ch), self.levels, u[:, ch, i, j])
                    if parts is not None:
                        k = ch * h * w + i * w + j
                        value = torch.where(parts[1][:, k], parts[0][:, k], value)
                    x[:, ch, i, j] = value
                    state.x_row[:, j, ch] = value * 2 - 1  # the network's input scale
                state.end_pixel(j)
            state.end_row(i)
        return x


# ---- PixelCNN ------------------------------------------------------------------------------------


class _Block(nn.Module):
    """Figure 5: ReLU, 1x1 (2h -> h), ReLU, k x k mask 'B', ReLU, 1x1 (h -> 2h), plus the input."""

    def __init__(self, h: int, kernel: int, colours: int) -> None:
        super().__init__()
        self.down = MaskedConv2d(2 * h, h, 1, "B", colours)
        self.mid = MaskedConv2d(h, h, kernel, "B", colours)
        self.up = MaskedConv2d(h, 2 * h, 1, "B", colours)

    def forward(self, x: Tensor) -> Tensor:  # (B, 2h, H, W) -> (B, 2h, H, W)
        t = self.mid(F.relu(self.down(F.relu(x))))
        return self.up(F.relu(t)).add_(x)


class PixelCNN(_CachedPixelModel):
    """PixelCNN with residual blocks; raster order only."""

    name = "pixelcnn"
    paper = ("van den Oord, Kalchbrenner & Kavukcuoglu 2016, Pixel Recurrent Neural Networks "
             "(arXiv:1601.06759)")
    Config = PixelCNNConfig
    presets = {
        # Static-binarised MNIST, one core, cosine over a 30-minute budget (best validation
        # NLL): lr 2e-3 90.43 (7,275 steps), 12 blocks 90.10 (5,449 steps), lr 3e-3 89.90
        # (7,765 steps; 89.41 on the test split). About 7,500 steps fill 30 minutes.
        "cpu": {"model": {"channels": 32, "blocks": 8},
                "train": {"batch_size": 32, "lr": 3e-3, "schedule": "cosine", "steps": 7_500,
                          "binarize": "static"}},
        # The paper's 15 layers (7x7 'A', 12 blocks, two 1x1 outputs) at a GPU-sized width.
        "paper": {"model": {"channels": 128, "blocks": 12},
                  "train": {"batch_size": 16, "lr": 1e-3, "steps": 200_000,
                            "binarize": "static"}},
    }

    def __init__(self, shape: tuple[int, int, int], config: PixelCNNConfig) -> None:
        super().__init__(shape, config)
        c, h = self.shape[0], int(config.channels)
        self._check_width(h)
        self.conv_in = MaskedConv2d(c, 2 * h, config.kernel, "A", c)
        self.blocks = nn.ModuleList(_Block(h, config.block_kernel, c)
                                    for _ in range(config.blocks))
        k = 1 if self.levels == 2 else self.levels
        self.head = MaskedConv2d(2 * h, 2 * h, 1, "B", c)
        self.head_out = MaskedConv2d(2 * h, c * k, 1, "B", c)  # channel c*K + k: colour c

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (B, K, C, H, W) logits; ``x`` may hold any real values."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            self.check_input(x)  # the standard shape error
        return self._layout(self.head_out(self._features(x)))

    def _features(self, x: Tensor) -> Tensor:
        """The last feature map (B, 2h, H, W), the output layer's input."""
        t = self.conv_in(self._input(x))
        for block in self.blocks:
            t = block(t)
        return F.relu(self.head(F.relu(t)))

    def encode(self, x: Tensor) -> Tensor:
        """Features (B, 2h): the last feature map averaged over space. The map at (i, j) sees
        only the sub-pixels before it in raster order, so the average is a feature of the
        whole image (all but its last sub-pixel)."""
        self.check_input(x)
        return self._features(x).mean((2, 3))

    def _sampler(self, n: int, cond: dict[str, Tensor] | None) -> tuple[_PixelCNNState, dict]:
        return _PixelCNNState(self, n), cond


class _PixelCNNState:
    """Per-layer caches of a PixelCNN while it draws n images."""

    def __init__(self, m: PixelCNN, n: int) -> None:
        c, h, w = m.shape
        hid = m.config.channels
        mk = lambda conv: _RowCache(conv.weight * conv.mask, conv.bias, n, h, w,  # noqa: E731
                                    conv.radius)
        self.first = mk(m.conv_in)
        self.mids = [mk(b.mid) for b in m.blocks]
        self.downs = [_weights_1x1(b.down) for b in m.blocks]
        self.ups = [_weights_1x1(b.up) for b in m.blocks]
        self.head, self.out = _weights_1x1(m.head), _weights_1x1(m.head_out)
        self.x_row = self.first.row  # (n, W, C) the current row's pixels, scaled to [-1, 1]
        z = lambda width: self.x_row.new_zeros(n, width)  # noqa: E731
        # Per-pixel values, filled one colour group per step; each block keeps its own buffers
        # because a later group of a layer reads the earlier groups of the same layer.
        self.stream = [z(2 * hid) for _ in range(len(self.mids) + 1)]  # residual stream
        self.inner = [z(hid) for _ in self.mids]  # ReLU of each 3x3 output
        self.top = z(2 * hid)  # ReLU of the first output layer
        self.c, self.hid, self.k = c, hid, self.out[0].shape[1] // c

    def start_row(self, i: int) -> None:
        for cache in (self.first, *self.mids):
            cache.start_row(i)

    def logits(self, j: int, c: int) -> Tensor:
        """Logits of channel c at column j: (n,) Bernoulli or (n, K)."""
        s2, s1 = _group(2 * self.hid, self.c, c), _group(self.hid, self.c, c)
        self.stream[0][:, s2] = self.first.centre(j, s2)
        for b, mid in enumerate(self.mids):
            (wd, bd), (wu, bu) = self.downs[b], self.ups[b]
            # Groups after c hold stale finite values; the masked weights ignore them.
            mid.row[:, j, s1] = F.relu(torch.addmm(bd[s1], F.relu(self.stream[b]), wd[:, s1]))
            self.inner[b][:, s1] = F.relu(mid.centre(j, s1))
            self.stream[b + 1][:, s2] = torch.addmm(bu[s2], self.inner[b], wu[:, s2]).add_(
                self.stream[b][:, s2])
        top = torch.addmm(self.head[1][s2], F.relu(self.stream[-1]), self.head[0][:, s2])
        self.top[:, s2] = F.relu(top)
        so = slice(c * self.k, (c + 1) * self.k)
        out = torch.addmm(self.out[1][so], self.top, self.out[0][:, so])
        return out[:, 0] if self.k == 1 else out

    def end_pixel(self, j: int) -> None:
        for cache in (self.first, *self.mids):
            cache.push(j)

    def end_row(self, i: int) -> None:
        for cache in (self.first, *self.mids):
            cache.end_row(i)


# ---- Gated PixelCNN ------------------------------------------------------------------------------


class _HorizontalConv(nn.Conv2d):
    """1 x (k//2 + 1) convolution over the current row up to the pixel; at the pixel itself
    colour group i feeds group j iff i < j (mask 'A') or i <= j (mask 'B')."""

    def __init__(self, cin: int, cout: int, kernel: int, mask: str, colours: int) -> None:
        r = kernel // 2
        super().__init__(cin, cout, (1, r + 1))
        m = torch.ones(cout, cin, 1, r + 1)
        gin, gout = colour_groups(cin, colours), colour_groups(cout, colours)
        see = gin < gout.unsqueeze(1) if mask == "A" else gin <= gout.unsqueeze(1)
        m[:, :, 0, r] = see.float()
        self.register_buffer("mask", m, persistent=False)
        self.radius = r

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        # Zero columns on the left only: the output has exactly W columns, nothing to crop.
        return F.conv2d(F.pad(x, (self.radius, 0)), self.weight * self.mask, self.bias)


class _GatedLayer(nn.Module):
    """One layer of both stacks (Figure 2 of the paper, without the skip outputs)."""

    def __init__(self, cin: int, h: int, kernel: int, first: bool, colours: int) -> None:
        super().__init__()
        r = kernel // 2
        # Vertical: rows i - r .. i, all columns j - r .. j + r. It may see the current row
        # (even the pixel itself): the horizontal stack only gets it shifted down one row.
        self.vertical = nn.Conv2d(cin, 2 * h, (r + 1, kernel), padding=(0, r))
        self.horizontal = _HorizontalConv(cin, 2 * h, kernel, "A" if first else "B", colours)
        self.link = nn.Conv2d(2 * h, 2 * h, 1)  # vertical -> horizontal, no colour mask needed
        self.res = MaskedConv2d(h, h, 1, "B", colours)
        self.first, self.colours, self.radius = first, colours, r

    def forward(self, v: Tensor, x: Tensor, cv: Tensor | None, ch: Tensor | None
                ) -> tuple[Tensor, Tensor]:  # (B, Cin, H, W) x 2 -> (B, h, H, W) x 2
        vp = self.vertical(F.pad(v, (0, 0, self.radius, 0)))  # (B, 2h, H, W); zero rows on top
        if cv is not None:
            vp = vp + cv
        # Row i of the horizontal stack gets row i - 1 of the vertical one (row 0: zeros).
        hp = self.horizontal(x) + self.link(F.pad(vp, (0, 0, 1, -1)))
        if ch is not None:
            hp = hp + ch
        out = self.res(_gate(hp, self.colours))
        return _gate(vp, self.colours), out if self.first else out.add_(x)


class GatedPixelCNN(_CachedPixelModel):
    """Gated PixelCNN (vertical + horizontal stacks), optionally class-conditional; raster
    order only. With ``classes`` > 0, ``log_prob(x, y)`` is log p(x | y); without ``y`` it is the
    marginal log (1/classes) sum_y p(x | y)."""

    name = "gated_pixelcnn"
    paper = ("van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016, "
             "Conditional Image Generation with PixelCNN Decoders (arXiv:1606.05328)")
    Config = GatedPixelCNNConfig
    presets = {
        # Static-binarised MNIST, one core: 4-minute trials (validation NLL, cosine over the
        # budget) h=32/8 layers/lr 2e-3: 98.3 at 54 img/s; h=16/10 layers/lr 3e-3: 93.5 at
        # 143 img/s. With this preset a 20-minute run (4,663 steps) gave 88.34 nats on the
        # test split and a 30-minute run (7,954 steps) 86.76.
        "cpu": {"model": {"channels": 16, "layers": 10},
                "train": {"batch_size": 32, "lr": 3e-3, "schedule": "cosine", "steps": 7_000,
                          "binarize": "static"}},
        # GPU-sized; the paper reports CIFAR-10 and ImageNet, not MNIST.
        "paper": {"model": {"channels": 128, "layers": 15},
                  "train": {"batch_size": 16, "lr": 1e-3, "steps": 200_000,
                            "binarize": "static"}},
    }

    def __init__(self, shape: tuple[int, int, int], config: GatedPixelCNNConfig) -> None:
        super().__init__(shape, config)
        c, h = self.shape[0], int(config.channels)
        self._check_width(h)
        if config.layers < 1 or config.kernel % 2 == 0 or config.first_kernel % 2 == 0:
            raise ValueError("need layers >= 1 and odd kernels, got "
                             f"{config.layers}, {config.kernel}, {config.first_kernel}")
        self.classes = int(config.classes)
        self.layers = nn.ModuleList(
            _GatedLayer(c if i == 0 else h, h, config.first_kernel if i == 0 else config.kernel,
                        i == 0, c) for i in range(config.layers))
        if self.classes > 0:  # per layer: a bias for the vertical and the horizontal gates
            self.embed = nn.Embedding(self.classes, config.layers * 4 * h)
            nn.init.zeros_(self.embed.weight)  # start as the unconditional model
        k = 1 if self.levels == 2 else self.levels
        self.head = MaskedConv2d(h, 2 * h, 1, "B", c)
        self.head_out = MaskedConv2d(2 * h, c * k, 1, "B", c)
        self._y: Tensor | None = None  # labels for reference_sample's logits calls

    def _biases(self, y: Tensor | None) -> list[tuple[Tensor | None, Tensor | None]]:
        """Per layer the class biases (B, 2h, 1, 1) of the vertical and horizontal gates."""
        if self.classes == 0:
            return [(None, None)] * len(self.layers)
        if y is None:
            raise ValueError(f"{self.name} with classes={self.classes} needs labels y")
        e = self.embed(y).view(len(y), len(self.layers), 2, -1, 1, 1)
        return [(e[:, i, 0], e[:, i, 1]) for i in range(len(self.layers))]

    def _labels(self, y: Tensor | int | None, n: int) -> Tensor | None:
        if y is None:
            return None
        if self.classes == 0:
            raise ValueError(f"{self.name} is unconditional (classes=0): it takes no labels y")
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        y = y.expand(n) if y.numel() == 1 else y
        if tuple(y.shape) != (n,) or bool(((y < 0) | (y >= self.classes)).any()):
            raise ValueError(f"y must hold {n} labels in 0 .. {self.classes - 1}")
        return y

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, C, H, W) or (B, K, C, H, W) logits of p(x | y); ``x`` may hold any real values."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            self.check_input(x)
        y = self._labels(y if y is not None else self._y, len(x))
        return self._layout(self.head_out(self._features(x, self._biases(y))))

    def _features(self, x: Tensor, biases: list[tuple[Tensor | None, Tensor | None]]
                  ) -> Tensor:
        """The last feature map (B, 2h, H, W), the output layer's input."""
        v = t = self._input(x)
        for layer, (cv, ch) in zip(self.layers, biases, strict=True):
            v, t = layer(v, t, cv, ch)
        return F.relu(self.head(F.relu(t)))

    def encode(self, x: Tensor) -> Tensor:
        """Features (B, 2h): the last feature map averaged over space. A class-conditional
        model encodes without its class biases (their initial value, zero): the features must
        not depend on a label the caller may not have."""
        self.check_input(x)
        return self._features(x, [(None, None)] * len(self.layers)).mean((2, 3))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x | y) in nats (B,); with classes > 0 and no y, log of the uniform mixture."""
        self.check_input(x)
        if self.classes == 0 or y is not None:
            return discrete_log_prob(self.logits(x, y), x, self.levels)
        each = [discrete_log_prob(self.logits(x, torch.full((len(x),), k, device=x.device)),
                                  x, self.levels) for k in range(self.classes)]
        return torch.logsumexp(torch.stack(each, 1), 1) - math.log(self.classes)

    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        y = batch.get("y") if self.classes else None
        if self.classes and y is None:
            raise ValueError(f"{self.name} with classes={self.classes} trains on labelled data")
        nll = -self.log_prob(batch["x"], y).mean()
        return nll, {"nll": float(nll.detach())}

    def completes_exactly(self, known: Tensor, cond: dict[str, Tensor]) -> Tensor:
        # Without labels the sampler draws y uniformly, not from p(y | given): only the
        # unconditional model, or given labels, make a prefix exact. (Gibbs on the marginal
        # log_prob handles the rest.)
        exact = super().completes_exactly(known, cond)
        return exact if self.classes == 0 or cond.get("y") is not None else exact & ~known.any(1)

    def _split_cond(self, n: int, cond: dict[str, Tensor] | None
                    ) -> tuple[Tensor | None, dict[str, Tensor] | None]:
        """cond -> (labels (n,) or None, the completion part {"x", "mask"} or None)."""
        rest = dict(cond) if cond is not None else {}
        y = self._labels(rest.pop("y", None), n)
        if y is None and self.classes:  # no label asked for: draw classes uniformly
            y = torch.randint(self.classes, (n,), device=self.device)
        return y, rest or None

    @torch.no_grad()
    def reference_sample(self, n: int, cond: dict[str, Tensor] | None = None,
                         u: Tensor | None = None) -> Tensor:
        y, rest = self._split_cond(n, cond)
        self._y = y
        try:
            return super().reference_sample(n, rest, u)
        finally:
            self._y = None

    def _sampler(self, n: int, cond: dict[str, Tensor] | None
                 ) -> tuple[_GatedState, dict[str, Tensor] | None]:
        y, rest = self._split_cond(n, cond)
        return _GatedState(self, n, y), rest


class _GatedState:
    """Per-layer caches of a Gated PixelCNN while it draws n images: the vertical stack runs a
    row at a time on finished rows, the horizontal stack a pixel at a time."""

    def __init__(self, m: GatedPixelCNN, n: int, y: Tensor | None) -> None:
        c, h, w = m.shape
        hid = m.config.channels
        self.c, self.hid, self.k, self.w = c, hid, 1 if m.levels == 2 else m.levels, w
        biases = m._biases(y)
        self.v_bias = [cv for cv, _ in biases]  # (n, 2h, 1, 1) or None
        self.h_bias = [ch[:, :, 0, 0].unsqueeze(1) if ch is not None else None
                       for _, ch in biases]  # (n, 1, 2h)
        self.layers = list(m.layers)
        self.rows = [_RowCache(layer.horizontal.weight * layer.horizontal.mask,
                               layer.horizontal.bias, n, h, w, layer.radius)
                     for layer in self.layers]  # the horizontal stack, a pixel at a time
        self.res = [_weights_1x1(layer.res) for layer in self.layers]
        self.links = [(layer.link.weight[:, :, 0, 0].t(), layer.link.bias)
                      for layer in self.layers]
        zeros = self.rows[0].row.new_zeros
        # Vertical stack inputs of all rows so far, zero-padded like the convolutions' input.
        self.maps = [zeros(n, layer.vertical.in_channels, h + layer.radius, w + 2 * layer.radius)
                     for layer in self.layers]
        self.link_rows: list[Tensor | None] = [None] * len(self.layers)  # (n, W, 2h) for next row
        self.gates = [zeros(n, hid) for _ in self.layers]
        self.final = zeros(n, hid)  # the horizontal stack's output
        self.top = zeros(n, 2 * hid)
        self.head, self.out = _weights_1x1(m.head), _weights_1x1(m.head_out)
        self.x_row = self.rows[0].row  # (n, W, C) the current row's pixels, scaled to [-1, 1]

    def start_row(self, i: int) -> None:
        for k, cache in enumerate(self.rows):
            extra = self.link_rows[k] if i > 0 else self.links[k][1]  # row 0: zero padding
            if self.h_bias[k] is not None:
                extra = extra + self.h_bias[k]
            cache.start_row(i, extra)

    def logits(self, j: int, c: int) -> Tensor:
        s2, s1 = _group(2 * self.hid, self.c, c), _group(self.hid, self.c, c)
        half = self.hid // self.c
        for k, cache in enumerate(self.rows):
            pre = cache.centre(j, s2)  # (n, 2h/C): this group's (tanh, sigmoid) halves
            self.gates[k][:, s1] = torch.tanh(pre[:, :half]) * torch.sigmoid(pre[:, half:])
            w_res, b_res = self.res[k]
            out = torch.addmm(b_res[s1], self.gates[k], w_res[:, s1])
            if k > 0:  # residual connection (the first layer changes the width)
                out += cache.row[:, j, s1]
            nxt = self.rows[k + 1].row[:, j] if k + 1 < len(self.rows) else self.final
            nxt[:, s1] = out
        top = torch.addmm(self.head[1][s2], F.relu(self.final), self.head[0][:, s2])
        self.top[:, s2] = F.relu(top)
        so = slice(c * self.k, (c + 1) * self.k)
        out = torch.addmm(self.out[1][so], self.top, self.out[0][:, so])
        return out[:, 0] if self.k == 1 else out

    def end_pixel(self, j: int) -> None:
        for cache in self.rows:
            cache.push(j)

    def end_row(self, i: int) -> None:
        """Row i is final: run the vertical stack on it and prepare the links into row i + 1."""
        w = self.w
        r0 = self.layers[0].radius
        self.maps[0][:, :, r0 + i, r0: r0 + w] = self.x_row.transpose(1, 2)
        for k, layer in enumerate(self.layers):
            r = layer.radius
            vp = F.conv2d(self.maps[k][:, :, i: i + r + 1], layer.vertical.weight,
                          layer.vertical.bias)  # (n, 2h, 1, W): image rows i - r .. i
            if self.v_bias[k] is not None:
                vp = vp + self.v_bias[k]
            if k + 1 < len(self.layers):
                r1 = self.layers[k + 1].radius
                self.maps[k + 1][:, :, r1 + i, r1: r1 + w] = _gate(vp, self.c)[:, :, 0]
            w_link, b_link = self.links[k]
            rows = vp[:, :, 0].transpose(1, 2)  # (n, W, 2h)
            self.link_rows[k] = torch.matmul(rows, w_link) + b_link
