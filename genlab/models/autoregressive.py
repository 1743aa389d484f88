"""What every autoregressive model over discrete sub-pixels shares.

A subclass computes ``logits(x)``: for each sub-pixel, the logits of its value given the
sub-pixels before it in ``self.order`` (a buffer; raster with R -> G -> B inside each pixel
unless the model supports other orderings). From that this base class derives the exact
``log_prob`` and a reference sampler that runs one full forward pass per generated sub-pixel.
Models with a faster sampler override ``sample`` and are tested against ``reference_sample``:
fed the same uniforms ``u``, both must give the same images.

Values: ``levels`` = 2 models binary images ({0, 1}, Bernoulli logits (B, C, H, W)); ``levels``
= K > 2 models grey/colour levels k / (K - 1) with a K-way softmax, logits (B, K, C, H, W).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from genlab.models.base import GenerativeModel
from genlab.nn import discrete_log_prob, discrete_sample, off_grid
from genlab.orderings import ordering, split_cond


class PixelAutoregressive(GenerativeModel):
    """Base class: subclasses implement ``logits`` and may override ``sample``."""

    exact = True

    def __init__(self, shape: tuple[int, int, int], config: Any) -> None:
        super().__init__(shape, config)
        self.levels = int(getattr(config, "levels", 2))
        if self.levels < 2:
            raise ValueError(f"levels must be at least 2 (2 = binary), got {self.levels}")
        # The instance decides what data it takes: the CLI binarizes only for levels = 2.
        self.data_kind = "binary" if self.levels == 2 else "grey"
        c, _, w = self.shape
        self.register_buffer("order", ordering("raster", self.n_pixels, 0, w, c))

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if self.levels > 2 and off_grid(x, self.levels):
            raise ValueError(
                f"{self.name} with levels={self.levels} expects values k/{self.levels - 1} "
                f"in [0, 1] (e.g. 8-bit images scaled by 1/255 for levels=256)"
            )

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) Bernoulli logits, or (B, K, C, H, W) for K levels, of each sub-pixel
        given the ones before it. ``x`` may hold any real values (used by gradient checks)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats per image, (B,) float64."""
        self.check_input(x)
        return discrete_log_prob(self.logits(x), x, self.levels)

    def uniforms(self, n: int) -> Tensor:
        """The random numbers one draw of ``n`` images consumes, (n, C, H, W)."""
        return torch.rand(n, *self.shape, device=self.device)

    def given(self, n: int, cond: dict[str, Tensor] | None) -> tuple[Tensor, Tensor] | None:
        """A checked completion request as flat (given (n, D), known (n, D) bool), or None."""
        return split_cond(cond, n, self.shape, self.device, self.levels)

    @torch.no_grad()
    def reference_sample(self, n: int, cond: dict[str, Tensor] | None = None,
                         u: Tensor | None = None) -> Tensor:
        """Ancestral sampling the obvious way: a full ``logits`` pass per sub-pixel."""
        u = self.uniforms(n) if u is None else u.to(self.device)
        parts = self.given(n, cond)
        c, h, w = self.shape
        x = torch.zeros(n, c, h, w, device=self.device)
        for i in self.order.tolist():
            ci, hi, wi = i // (h * w), (i // w) % h, i % w
            logits = self.logits(x)
            pick = logits[:, ci, hi, wi] if self.levels == 2 else logits[:, :, ci, hi, wi]
            value = discrete_sample(pick, self.levels, u[:, ci, hi, wi])
            if parts is not None:
                given, known = parts
                value = torch.where(known[:, i], given[:, i], value)
            x[:, ci, hi, wi] = value
        return x

    def sample(self, n: int, cond: dict[str, Tensor] | None = None,
               u: Tensor | None = None) -> Tensor:
        return self.reference_sample(n, cond, u)
