"""Seeds: every random draw of the data package comes from a generator seeded here.

Tags keep the seed streams of different uses apart (epoch order, dynamic draws, synthetic
images, per-image static draws...), so that no two uses ever share a stream.
"""

from __future__ import annotations

import torch

TAG_EPOCH, TAG_DYNAMIC, TAG_EVAL, TAG_SYNTH, TAG_IMAGE, TAG_PERTURB = 1, 2, 3, 4, 5, 6
TAG_UNALIGNED = 10  # 7, 8, 9: attributes, captions, domains (their modules)
_MASK64 = (1 << 64) - 1


def mix(*parts: int) -> int:
    """Fold integers into one 63-bit seed.

    SplitMix64 steps make neighbouring inputs such as (seed, step) and (seed, step + 1) give
    unrelated generator streams; 63 bits keeps the result a valid `manual_seed` argument.
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: draws are the same whatever the thread count."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
