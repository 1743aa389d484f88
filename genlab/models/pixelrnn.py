"""PixelRNN: Row LSTM and Diagonal BiLSTM (van den Oord, Kalchbrenner & Kavukcuoglu 2016,
Pixel Recurrent Neural Networks, arXiv:1601.06759, section 3).

p(x) = prod_i p(x_i | x_<i) in raster order (R -> G -> B inside a pixel), computed in one pass:
a 7x7 mask-'A' convolution, a stack of residual two-dimensional LSTM layers, two ReLU + 1x1
mask-'B' output layers. Each LSTM layer reads a 2h-feature map, computes its input-to-state
gates for the whole image with one masked convolution, runs the state-to-state recurrence with
h features, and adds a 1x1 projection back to 2h to its input (the paper's residual block).

- Row LSTM: the image is processed a row at a time, top to bottom; the input-to-state map is a
  masked 1 x k convolution along the row, the state-to-state map a width-3 convolution of the
  previous row's state, so a pixel sees a triangle above it.
- Diagonal BiLSTM: the map is skewed (row i shifted right by i) so that each diagonal becomes a
  column; the input-to-state map is a masked 1x1 convolution, the state-to-state map a 2x1
  convolution down the previous column, i.e. each state reads the states above and to the left.
  A second LSTM does the same on the mirrored image (right to left); its output is shifted down
  a row before the two are added, so no pixel sees the rest of its own row through it.

Colour: every feature map (the 2h residual stream, the h states, each of the four gates) is split
into C colour groups. The masked convolutions let group g read groups < g (mask A, first layer)
or <= g (mask B) of the same pixel; the state-to-state maps only read earlier pixels, so they
need no mask. Raster order only, fixed by the architecture: there is no ``ordering`` setting.

Speed (CPU). Feature maps are stored pixel-major, (H, W, batch, features), so every masked
1x1 or 1 x k convolution is one matmul over all pixels, input-to-state included, and the Python
loop runs only over rows (Row LSTM) or diagonals (Diagonal BiLSTM). A custom autograd function
runs that recurrence: each step reads its cells as a strided view (skewing copies nothing),
computes the four gates of both directions with one batched matmul and one sigmoid over a
contiguous block (g = tanh z = 2 sigmoid(2z) - 1), and updates the cell state in place; its
hand-written backward pass walks the steps in reverse. Only the cells on the image are
computed and stored (a skewed map is twice as large). Sampling runs every layer at one pixel
at a time from the states before it: O(1) work per sub-pixel and layer, not a full forward
pass (64 MNIST digits in about a second instead of minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from genlab.models.autoregressive import PixelAutoregressive
from genlab.nn import MaskedConv2d, colour_groups, discrete_sample, full_precision


@dataclass
class RowLSTMConfig:
    hidden: int = 16  # h: state features per LSTM; the residual stream has 2h
    layers: int = 7  # residual Row LSTM layers (the paper's MNIST depth)
    kernel: int = 3  # width of the masked input-to-state convolution along a row (paper: 3)
    out_hidden: int = 32  # features of the first 1x1 output layer
    levels: int = 2  # 2 = binary pixels; K > 2 = K grey levels with a softmax


@dataclass
class DiagonalBiLSTMConfig:
    hidden: int = 16  # h (the paper's best MNIST model: 7 layers, h = 16)
    layers: int = 7
    out_hidden: int = 32
    levels: int = 2


# ---- geometry: the image cells each scan step visits ------------------------------------------

def _steps(height: int, width: int, diagonal: bool) -> list[tuple[int, int]]:
    """(lo, hi) per scan step: the positions lo..hi-1 along the step that lie on the image.

    Rows: H steps of W positions. Diagonals: the image skewed (row i shifted right by i) has
    W + H - 1 columns, one per diagonal, and column d meets rows max(0, d-W+1) .. min(d, H-1).
    """
    if not diagonal:
        return [(0, width)] * height
    return [(max(0, d - width + 1), min(d, height - 1) + 1) for d in range(width + height - 1)]


def _step_cells(x: Tensor, step: int, lo: int, hi: int, diagonal: bool) -> Tensor:
    """View (N, hi - lo, B, F) of the cells of x (N, H, W, B, F) visited at ``step``, positions
    lo..hi-1: pixel (step, l) for rows, pixel (l, step - l) for diagonals.

    The cells of one step are equally spaced in memory, so skewing costs no copy at all, and
    with the batch inside each pixel every cell is a contiguous (B, F) block."""
    sn, sh, sw, sb, sf = x.stride()
    if diagonal:
        offset, stride = lo * sh + (step - lo) * sw, sh - sw
    else:
        offset, stride = step * sh + lo * sw, sw
    return x.as_strided((x.shape[0], hi - lo, x.shape[3], x.shape[4]), (sn, stride, sb, sf),
                        x.storage_offset() + offset)


# ---- the recurrence --------------------------------------------------------------------------
#
# Internal storage: one (N, rows * B, features) block per step, the steps' blocks packed one
# after the other (N independent LSTMs, e.g. the BiLSTM's two directions; the batch innermost).
# Each step's gates are then one contiguous matrix per LSTM, nothing is stored for cells off the
# image, and shifting along a step moves whole (B, features) blocks.


def _lstm_scan(xg: Tensor, weight: Tensor, taps: tuple[int, ...], diagonal: bool) -> Tensor:
    """States (N, H, W, B, h) of N two-dimensional LSTMs; see ``_LSTMScan``."""
    return _LSTMScan.apply(xg, weight, taps, diagonal).view(*xg.shape[:4], -1)


def _overlap(lo: int, hi: int, prev: tuple[int, int], s: int) -> tuple[int, int]:
    """Positions l in [lo, hi) whose tap-s neighbour l + s lies in the previous step's range."""
    return max(lo, prev[0] - s), min(hi, prev[1] - s)


class _LSTMScan(torch.autograd.Function):
    """N LSTMs scanning an image by rows or by diagonals; the state-to-state map is a
    convolution along the previous step.

    xg (N, H, W, B, 4h): input-to-state pre-activations of each pixel, gates o, f, i, g.
    weight (N, k*h, 4h): state-to-state weights of the k taps; tap s reads position l + s of the
    previous step's state (zero off the image). Returns the states (N, H, W, B, h), flattened
    to (N, H * W * B, h).
    """

    @staticmethod
    @full_precision
    def forward(ctx, xg: Tensor, weight: Tensor, taps: tuple[int, ...],
                diagonal: bool) -> Tensor:
        n, height, width, b, g4 = xg.shape
        h, k = g4 // 4, len(taps)
        steps = _steps(height, width, diagonal)
        cells = height * width * b
        acts = xg.new_empty(n, cells, g4)  # gate activations, kept for backward
        cs, hs = xg.new_empty(n, cells, h), xg.new_empty(n, cells, h)
        # Row by row, the packed blocks are the image layout itself: hs is the output.
        out = xg.new_empty(n, height, width, b, h) if diagonal else hs
        win = xg.new_empty(n * max(hi - lo for lo, hi in steps) * b * k * h)
        # g = tanh(z) = 2 sigmoid(2z) - 1: with the g pre-activations doubled, one sigmoid over
        # the contiguous block of all four gates replaces two passes over strided slices.
        scale = xg.new_ones(g4)
        scale[3 * h:] = 2
        weight_scaled = weight * scale
        start, prev_block = 0, slice(0, 0)
        for t, (lo, hi) in enumerate(steps):
            rows = hi - lo
            block = slice(start, start + rows * b)
            a = acts[:, block].view(n, rows, b, g4)  # pre-activations, then sigmoids
            torch.mul(_step_cells(xg, t, lo, hi, diagonal), scale, out=a)
            if t > 0:  # + state-to-state: the four gates (of both directions) in one bmm
                w = _window(win, hs[:, prev_block], lo, hi, steps[t - 1], taps, b)
                a.view(n, rows * b, g4).baddbmm_(w, weight_scaled)
            a.sigmoid_()
            o, f, i, sg = a.split(h, -1)
            c = cs[:, block].view(n, rows, b, h)
            torch.mul(i, sg, out=c)
            c.mul_(2).sub_(i)  # i * g
            if t > 0:
                l0, l1 = _overlap(lo, hi, steps[t - 1], 0)
                p0 = steps[t - 1][0]
                c_prev = cs[:, prev_block].view(n, -1, b, h)[:, l0 - p0: l1 - p0]
                c[:, l0 - lo: l1 - lo].addcmul_(f[:, l0 - lo: l1 - lo], c_prev)
            ht = hs[:, block].view(n, rows, b, h)
            torch.mul(o, torch.tanh(c), out=ht)
            if diagonal:
                _step_cells(out, t, lo, hi, diagonal).copy_(ht)
            prev_block, start = block, start + rows * b
        ctx.taps, ctx.diagonal = taps, diagonal
        ctx.shape = xg.shape
        ctx.save_for_backward(weight, acts, cs, hs)
        return out.view(n, cells, h)

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        weight, acts, cs, hs = ctx.saved_tensors
        taps, diagonal = ctx.taps, ctx.diagonal
        n, height, width, b, _ = ctx.shape
        dout = dout.reshape(n, height, width, b, -1)
        g4 = acts.shape[-1]
        h, k = g4 // 4, len(taps)
        steps = _steps(height, width, diagonal)
        longest = max(hi - lo for lo, hi in steps)
        dxg = dout.new_empty(n, height, width, b, g4)  # each pixel is visited once per LSTM
        dweight = torch.zeros_like(weight)
        da_buf = acts.new_empty(n, longest, b, g4)
        dh_rec = acts.new_zeros(n, longest, b, h)  # from step t + 1 through its window
        dc_rec = acts.new_zeros(n, longest, b, h)  # from step t + 1 through its forget gate
        win = acts.new_empty(n * longest * b * k * h)
        wt = weight.transpose(1, 2)  # (N, 4h, k*h)
        end = acts.shape[1]
        for t in reversed(range(len(steps))):
            lo, hi = steps[t]
            rows = hi - lo
            block = slice(end - rows * b, end)
            da_shape = (n, rows, b, g4)
            a = acts[:, block].view(da_shape)
            o, f, i, sg = a.split(h, -1)
            g = sg * 2 - 1
            # (by rows, the gate gradients go straight into their place in dxg)
            da = da_buf[:, :rows] if diagonal else dxg.view(n, -1, g4)[:, block].view(da_shape)
            do, df, di, dg = da.split(h, -1)
            dh = dh_rec[:, :rows]
            dh.add_(_step_cells(dout, t, lo, hi, diagonal))
            tc = torch.tanh(cs[:, block].view(n, rows, b, h))
            torch.mul(dh, tc, out=do)
            dc = tc.mul_(tc).neg_().add_(1).mul_(o).mul_(dh)  # dh * o * (1 - tanh^2 c)
            dc.add_(dc_rec[:, :rows])
            torch.mul(dc, g, out=di)
            torch.mul(dc, i, out=dg)
            dg.mul_(4)  # d g / d s_g = 2, and below d s_g / d z_g = 2 s_g (1 - s_g)
            df.zero_()
            if t > 0:
                prev = steps[t - 1]
                prev_block = slice(block.start - (prev[1] - prev[0]) * b, block.start)
                l0, l1 = _overlap(lo, hi, prev, 0)
                c_prev = cs[:, prev_block].view(n, -1, b, h)[:, l0 - prev[0]: l1 - prev[0]]
                torch.mul(dc[:, l0 - lo: l1 - lo], c_prev, out=df[:, l0 - lo: l1 - lo])
            dc.mul_(f)  # what flows on to c_(t-1)
            da.mul_(a)
            da.addcmul_(da, a, value=-1)  # * s (1 - s), over all four gates at once
            if diagonal:
                _step_cells(dxg, t, lo, hi, diagonal).copy_(da)
            if t > 0:
                rows_p = prev[1] - prev[0]
                dc_new = dc_rec[:, :rows_p]
                dc_new.zero_()
                dc_new[:, l0 - prev[0]: l1 - prev[0]] = dc[:, l0 - lo: l1 - lo]
                da2 = da.reshape(n, rows * b, g4)
                # Through the window: into the weights and the previous step's states.
                w = _window(win, hs[:, prev_block], lo, hi, prev, taps, b)
                dweight.baddbmm_(w.transpose(1, 2), da2)
                dwin = torch.bmm(da2, wt).view(n, rows, b, k, h)
                dh_new = dh_rec[:, :rows_p]
                dh_new.zero_()
                for j, s in enumerate(taps):
                    m0, m1 = _overlap(lo, hi, prev, s)
                    dh_new[:, m0 + s - prev[0]: m1 + s - prev[0]] += dwin[:, m0 - lo: m1 - lo, :, j]
            end = block.start
        return dxg, dweight, None, None


def _window(buf: Tensor, h_prev: Tensor, lo: int, hi: int, prev: tuple[int, int],
            taps: tuple[int, ...], b: int) -> Tensor:
    """(N, rows * B, k * h): for each position l in [lo, hi) the previous step's states at
    l + s for each tap s, zero where that is off the previous step. h_prev (N, rows_p * B, h)."""
    n, _, h = h_prev.shape
    rows, k = hi - lo, len(taps)
    w = buf[: n * rows * b * k * h].view(n, rows, b, k, h)
    w.zero_()
    hp = h_prev.view(n, -1, b, h)
    for j, s in enumerate(taps):
        l0, l1 = _overlap(lo, hi, prev, s)
        w[:, l0 - lo: l1 - lo, :, j] = hp[:, l0 + s - prev[0]: l1 + s - prev[0]]
    return w.view(n, rows * b, k * h)


# ---- layers ----------------------------------------------------------------------------------
#
# Feature maps are stored pixel-major, (H, W, B, C): a 1x1 convolution is one matmul, a step of
# the scan reads contiguous per-pixel blocks, and shifting by a row or a column moves whole
# blocks.

def _cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM cell (used by the samplers): pre-activations (..., 4h) ordered o, f, i, g."""
    o, f, i, g = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gate_groups(hidden: int, colours: int, copies: int) -> Tensor:
    """Colour group of each gate channel: ``copies`` blocks (gates, directions) of h channels,
    each split into colour groups like the state."""
    return colour_groups(hidden, colours).repeat(copies)


class _RowConv(nn.Conv2d):
    """Masked 1 x width convolution along the row: the pixel and the width - 1 pixels to its
    left, on (H, W, B, Cin) maps. At the pixel itself, input group i feeds output group j only if
    i <= j (mask 'B'); width 1 is the masked 1x1 convolution. Pixels to the right would be
    masked out, so they are not stored (the paper's masked k x 1 convolution, k = 2 width - 1).
    """

    def __init__(self, gin: Tensor, gout: Tensor, width: int = 1) -> None:
        super().__init__(len(gin), len(gout), (1, width))
        m = torch.ones(len(gout), len(gin), 1, width)
        m[:, :, 0, -1] = (gin.unsqueeze(0) <= gout.unsqueeze(1)).float()
        self.register_buffer("mask", m, persistent=False)

    def matrix(self) -> Tensor:
        """(Cout, width * Cin) masked weights, taps outermost."""
        return (self.weight * self.mask).permute(0, 2, 3, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:  # (H, W, B, Cin) -> (H, W, B, Cout)
        width, w = self.kernel_size[1], x.shape[1]
        if width > 1:  # each pixel's window: the columns j - width + 1 .. j, zero off the image
            x = torch.cat([F.pad(x[:, : w - k], (0, 0, 0, 0, k, 0))
                           for k in range(width - 1, -1, -1)], -1)
        return F.linear(x, self.matrix(), self.bias)


class _ResidualLSTM(nn.Module):
    """What both layer kinds share: masked input-to-state convolution producing ``directions``
    x 4 gates of h features, state-to-state weights with ``len(taps)`` taps per direction, and a
    masked 1x1 projection h -> 2h added to the layer's input."""

    def __init__(self, hidden: int, colours: int, width: int, taps: tuple[int, ...],
                 directions: int) -> None:
        super().__init__()
        self.hidden, self.taps = hidden, taps
        state = colour_groups(hidden, colours)
        stream = colour_groups(2 * hidden, colours)
        self.input_to_state = _RowConv(stream, _gate_groups(hidden, colours, 4 * directions),
                                       width)
        bound = (len(taps) * hidden) ** -0.5
        self.state_to_state = nn.Parameter(
            torch.empty(directions, len(taps) * hidden, 4 * hidden).uniform_(-bound, bound))
        self.project = _RowConv(state, stream)
        with torch.no_grad():  # forget gates start open: long memories are the point of an LSTM
            self.input_to_state.bias.view(directions, 4, hidden)[:, 1] += 1.0

    # Sampling one pixel at a time: ``memory`` holds the layer's input and state maps, padded
    # with zeros (pixel (i, j) of a state map sits at [i + 1, j + 1]); ``pixel`` computes the
    # layer at one pixel from the states before it, exactly as the scan would.
    def memory(self, height: int, width: int, n: int, like: Tensor) -> dict[str, Tensor]:
        pad = self.input_to_state.kernel_size[1] - 1
        maps = {"x": like.new_zeros(height, width + pad, n, 2 * self.hidden)}
        for key in ("h", "c", "h_rl", "c_rl")[: 2 * self.state_to_state.shape[0]]:
            maps[key] = like.new_zeros(height + 1, width + 2, n, self.hidden)
        return maps

    def end_row(self, i: int, mem: dict[str, Tensor]) -> None:
        """Called once row i is complete."""


class _RowLSTMLayer(_ResidualLSTM):
    """Residual Row LSTM layer, (H, W, B, 2h) -> (H, W, B, 2h)."""

    def __init__(self, hidden: int, colours: int, kernel: int) -> None:
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd width, got {kernel}")
        super().__init__(hidden, colours, kernel // 2 + 1, (-1, 0, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        xg = self.input_to_state(x).unsqueeze(0)  # (1, H, W, B, 4h)
        hs = _lstm_scan(xg, self.state_to_state, self.taps, diagonal=False)[0]  # (H, W, B, h)
        return x + self.project(hs)

    def pixel(self, x: Tensor, i: int, j: int, mem: dict[str, Tensor]) -> Tensor:
        """Layer output (n, 2h) at pixel (i, j) from its input x (n, 2h)."""
        width = self.input_to_state.kernel_size[1]
        mem["x"][i, j + width - 1] = x
        window = mem["x"][i, j: j + width].transpose(0, 1).flatten(1)  # columns j-width+1..j
        above = mem["h"][i, j: j + 3].transpose(0, 1).flatten(1)  # row i - 1, taps -1, 0, 1
        gates = F.linear(window, self.input_to_state.matrix(), self.input_to_state.bias)
        gates = gates + above @ self.state_to_state[0]
        h, c = _cell(gates, mem["c"][i, j + 1])
        mem["h"][i + 1, j + 1], mem["c"][i + 1, j + 1] = h, c
        return x + self.project(h)


class _DiagonalBiLSTMLayer(_ResidualLSTM):
    """Residual Diagonal BiLSTM layer, (H, W, B, 2h) -> (H, W, B, 2h)."""

    def __init__(self, hidden: int, colours: int) -> None:
        # Along a diagonal of the skewed map, tap -1 of the previous diagonal is the pixel
        # above and tap 0 the pixel to the left.
        super().__init__(hidden, colours, 1, (-1, 0), 2)

    def forward(self, x: Tensor) -> Tensor:
        g4, c = 4 * self.hidden, x.shape[-1]
        # Direction 1 runs right to left: the same scan on the mirrored image. Input-to-state
        # of both directions in one batched matmul, each direction's map contiguous.
        both = torch.stack((x, x.flip(1))).view(2, -1, c)
        w = self.input_to_state.matrix().view(2, g4, c).transpose(1, 2)
        xg = torch.baddbmm(self.input_to_state.bias.view(2, 1, g4), both, w)
        hs = _lstm_scan(xg.view(2, *x.shape[:3], g4), self.state_to_state, self.taps,
                        diagonal=True)  # (2, H, W, B, h)
        # Right to left, pixel (i, j) has seen all of row i to its right: it gets the state of
        # row i - 1 (zero for row 0).
        out = hs[0] + F.pad(hs[1, :-1].flip(1), (0, 0, 0, 0, 0, 0, 1, 0))
        return x + self.project(out)

    def pixel(self, x: Tensor, i: int, j: int, mem: dict[str, Tensor]) -> Tensor:
        """Layer output (n, 2h) at pixel (i, j) from its input x (n, 2h): the left-to-right
        state from the pixels above and to the left, plus row i - 1's right-to-left state."""
        g4 = 4 * self.hidden
        mem["x"][i, j] = x
        gates = F.linear(x, self.input_to_state.matrix()[:g4], self.input_to_state.bias[:g4])
        h, c = mem["h"], mem["c"]
        gates = gates + torch.cat((h[i, j + 1], h[i + 1, j]), 1) @ self.state_to_state[0]
        h[i + 1, j + 1], c[i + 1, j + 1] = _cell(gates, c[i + 1, j])
        return x + self.project(h[i + 1, j + 1] + mem["h_rl"][i, j + 1])

    def end_row(self, i: int, mem: dict[str, Tensor]) -> None:
        """The right-to-left states of the completed row i: above and to the right."""
        g4 = 4 * self.hidden
        gates = F.linear(mem["x"][i], self.input_to_state.matrix()[g4:],
                         self.input_to_state.bias[g4:])  # (W, n, 4h)
        h, c = mem["h_rl"], mem["c_rl"]
        for j in reversed(range(gates.shape[0])):
            pre = gates[j] + torch.cat((h[i, j + 1], h[i + 1, j + 2]), 1) @ self.state_to_state[1]
            h[i + 1, j + 1], c[i + 1, j + 1] = _cell(pre, c[i + 1, j + 2])


# ---- the models ------------------------------------------------------------------------------

class _PixelRNN(PixelAutoregressive):
    """The network around the LSTM layers; subclasses build the layers."""

    def __init__(self, shape: tuple[int, int, int], config: RowLSTMConfig | DiagonalBiLSTMConfig
                 ) -> None:
        super().__init__(shape, config)
        c = self.shape[0]
        h, out_h = int(config.hidden), int(config.out_hidden)
        if h < 1 or out_h < 1 or config.layers < 0:
            raise ValueError(f"hidden and out_hidden must be positive and layers >= 0, got "
                             f"{h}, {out_h}, {config.layers}")
        if h % c or out_h % c:
            raise ValueError(f"hidden ({h}) and out_hidden ({out_h}) must be multiples of the "
                             f"{c} colour channels: features are split into colour groups")
        self.k = 1 if self.levels == 2 else self.levels
        self.input = MaskedConv2d(c, 2 * h, 7, "A", c)
        self.layers = nn.ModuleList(self._layer(h, c) for _ in range(config.layers))
        stream = colour_groups(2 * h, c)
        self.head = nn.Sequential(
            nn.ReLU(), _RowConv(stream, colour_groups(out_h, c)),
            nn.ReLU(), _RowConv(colour_groups(out_h, c), colour_groups(c * self.k, c)))

    def _layer(self, hidden: int, colours: int) -> nn.Module:
        raise NotImplementedError

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) Bernoulli logits, or (B, K, C, H, W) for K levels."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            self.check_input(x)  # raises the standard shape error
        b, c, height, width = x.shape
        f = self.input(2 * x.to(self.input.weight.dtype) - 1)  # (B, 2h, H, W), inputs in [-1, 1]
        f = f.permute(2, 3, 0, 1).contiguous()  # pixel-major (H, W, B, 2h)
        for layer in self.layers:
            f = layer(f)
        out = self.head(f)  # (H, W, B, C*K), grouped by colour
        if self.levels == 2:
            return out.permute(2, 3, 0, 1)
        return out.view(height, width, b, c, self.k).permute(2, 4, 3, 0, 1)

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Tensor] | None = None,
               u: Tensor | None = None) -> Tensor:
        """Ancestral sampling one sub-pixel at a time, each step running every layer at that
        pixel only (the states before it are kept): O(1) work per sub-pixel and layer instead
        of a full forward pass. Same uniforms ``u`` -> same images as ``reference_sample``."""
        u = self.uniforms(n) if u is None else u.to(self.device)
        parts = self.given(n, cond)
        c, height, width = self.shape
        weight = self.input.weight
        x = torch.zeros(n, c, height, width, device=weight.device)
        # The scaled image (2x - 1; not yet sampled: x = 0), zero-padded for the 7x7 input conv.
        z = F.pad(-torch.ones(n, c, height, width, dtype=weight.dtype, device=weight.device),
                  (3, 3, 3, 0))
        w_in = (weight * self.input.mask).flatten(1)
        mems = [layer.memory(height, width, n, weight) for layer in self.layers]
        for i in range(height):
            for j in range(width):
                for ch in range(c):
                    f = F.linear(z[:, :, i: i + 4, j: j + 7].flatten(1), w_in, self.input.bias)
                    for layer, mem in zip(self.layers, mems, strict=True):
                        f = layer.pixel(f, i, j, mem)
                    logits = self.head(f)[:, ch * self.k: (ch + 1) * self.k]  # (n, K)
                    value = discrete_sample(logits.squeeze(1) if self.levels == 2 else logits,
                                            self.levels, u[:, ch, i, j])
                    if parts is not None:
                        flat = (ch * height + i) * width + j
                        value = torch.where(parts[1][:, flat], parts[0][:, flat], value)
                    x[:, ch, i, j] = value
                    z[:, ch, i + 3, j + 3] = 2 * value - 1
            for layer, mem in zip(self.layers, mems, strict=True):
                layer.end_row(i, mem)
        return x


class RowLSTM(_PixelRNN):
    """PixelRNN with Row LSTM layers (raster order only)."""

    name = "row_lstm"
    paper = ("van den Oord, Kalchbrenner & Kavukcuoglu 2016, Pixel Recurrent Neural Networks "
             "(arXiv:1601.06759)")
    Config = RowLSTMConfig
    presets = {
        # Static-binarised MNIST, 4-minute single-core trials, batch 32, Adam 2e-3 with cosine
        # decay (validation NLL, images seen): h=16 x 3 layers 92.4 (55k), h=32 x 3 92.5 (28k),
        # h=16 x 7 93.0 (26k); the wider and the deeper models learn more per image, which
        # pays over 30 minutes (~6000 steps of one core; --time-budget replaces the steps).
        "cpu": {"model": {"hidden": 32, "layers": 3, "out_hidden": 64},
                "train": {"batch_size": 32, "lr": 2e-3, "schedule": "cosine", "steps": 6000,
                          "binarize": "static"}},
        # The paper reports 80.54 nats for a Row LSTM on MNIST without its size; this is the
        # size of its best Diagonal BiLSTM (7 layers, h = 16). Optimiser settings are ours.
        "paper": {"model": {"hidden": 16, "layers": 7, "kernel": 3, "out_hidden": 32},
                  "train": {"batch_size": 16, "lr": 1e-3, "steps": 500_000,
                            "binarize": "static"}},
    }

    def _layer(self, hidden: int, colours: int) -> nn.Module:
        return _RowLSTMLayer(hidden, colours, self.config.kernel)


class DiagonalBiLSTM(_PixelRNN):
    """PixelRNN with Diagonal BiLSTM layers (raster order only)."""

    name = "diagonal_bilstm"
    paper = RowLSTM.paper
    Config = DiagonalBiLSTMConfig
    presets = {
        # Static-binarised MNIST, 4-minute single-core trials, batch 32, Adam 2e-3 with cosine
        # decay (validation NLL, images seen): h=16 x 3 layers 91.7 (40k), h=32 x 2 90.8 (28k),
        # h=48 x 2 93.0 (14k), h=32 x 3 93.2 (18k), h=64 x 2 93.7 (10k), h=16 x 7 93.4 (19k).
        # ~6000 steps is about 30 minutes of one core; --time-budget replaces the step budget.
        "cpu": {"model": {"hidden": 32, "layers": 2, "out_hidden": 64},
                "train": {"batch_size": 32, "lr": 2e-3, "schedule": "cosine", "steps": 6000,
                          "binarize": "static"}},
        # The paper's best MNIST model (79.20 nats): 7 layers, h = 16. Its optimiser settings
        # for MNIST are not restated here; these are ours.
        "paper": {"model": {"hidden": 16, "layers": 7, "out_hidden": 32},
                  "train": {"batch_size": 16, "lr": 1e-3, "steps": 500_000,
                            "binarize": "static"}},
    }

    def _layer(self, hidden: int, colours: int) -> nn.Module:
        return _DiagonalBiLSTMLayer(hidden, colours)
