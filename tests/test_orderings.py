"""Pixel orderings: valid permutations, the documented layouts, reproducible random orders."""

from __future__ import annotations

import pytest
import torch

from genlab.orderings import ORDERINGS, ordering, split_cond


@pytest.mark.parametrize("name", ORDERINGS)
@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 3, 5), (3, 2, 2), (1, 1, 1), (2, 5, 1)])
def test_every_ordering_is_a_permutation(name, shape):
    c, h, w = shape
    n = c * h * w
    order = ordering(name, n, seed=3, width=w, channels=c)
    assert order.dtype == torch.long and order.shape == (n,)
    assert torch.equal(torch.sort(order).values, torch.arange(n))


def test_raster_is_pixel_major_with_channels_innermost():
    # 3 channels of 2x2 pixels: flat index c*4 + p; each pixel's R, G, B come together.
    order = ordering("raster", 12, width=2, channels=3)
    assert order.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert ordering("raster", 6).tolist() == list(range(6))


def test_snake_on_a_3x4_grid():
    order = ordering("snake", 12, width=4)
    assert order.tolist() == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    # Consecutive pixels of a snake are always grid neighbours.
    rows, cols = order // 4, order % 4
    steps = (rows.diff().abs() + cols.diff().abs()).tolist()
    assert steps == [1] * 11


def test_snake_keeps_channels_together():
    order = ordering("snake", 8, width=2, channels=2)  # 2 channels of 2x2 pixels
    assert order.tolist() == [0, 4, 1, 5, 3, 7, 2, 6]


def test_random_is_reproducible_and_depends_on_the_seed():
    a = ordering("random", 50, seed=7)
    assert torch.equal(a, ordering("random", 50, seed=7))
    assert not torch.equal(a, ordering("random", 50, seed=8))
    assert not torch.equal(a, torch.arange(50))


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match="raster, snake, random"):
        ordering("spiral", 16)
    with pytest.raises(ValueError, match="needs the image width"):
        ordering("snake", 12)
    with pytest.raises(ValueError, match="channels"):
        ordering("raster", 10, channels=3)


def test_split_cond_flattens_and_checks():
    x = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])  # (1, 1, 2, 2); 0.5 is not given
    mask = torch.tensor([[[[True, True], [False, False]]]])
    given, known = split_cond({"x": x, "mask": mask}, 1, (1, 2, 2))
    assert given.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert known.tolist() == [[True, True, False, False]]
    assert split_cond(None, 1, (1, 2, 2)) is None
    with pytest.raises(ValueError, match="shape"):
        split_cond({"x": x, "mask": mask}, 2, (1, 2, 2))
    with pytest.raises(ValueError, match="bool"):
        split_cond({"x": x, "mask": mask.float()}, 1, (1, 2, 2))
    with pytest.raises(ValueError, match="0 or 1"):
        split_cond({"x": x, "mask": torch.ones_like(mask)}, 1, (1, 2, 2))
