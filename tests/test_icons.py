"""The icons source: Debian's Oxygen icon theme (tests skip where it is not installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import DataError, load
from genlab.data import icons as gicons

needs_icons = pytest.mark.skipif(
    not (gicons.ICONS_DIR / "32x32").is_dir(),
    reason="the Oxygen icons are not installed (apt-get install oxygen-icon-theme; make setup)",
)


def test_icons_missing_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gicons, "ICONS_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install oxygen-icon-theme"):
        load("icons")


def test_icons_are_composited_onto_white(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A theme of two icons: a fully transparent one and a half-transparent red one.
    folder = tmp_path / "32x32" / "apps"
    folder.mkdir(parents=True)
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(folder / "a.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(folder / "b.png")
    (folder / "c.png").symlink_to(folder / "b.png")  # a second name: not a second icon
    monkeypatch.setattr(gicons, "ICONS_DIR", tmp_path)
    x = load("icons", "all").x
    assert x.shape == (2, 3, 32, 32)
    assert torch.equal(x[0], torch.ones(3, 32, 32))
    want = torch.tensor([255, 127, 127]) / 255  # 128/255 red over white, rounded by Pillow
    assert torch.allclose(x[1, :, 0, 0], want, atol=1.5 / 255)


@needs_icons
def test_icons_load_as_3x32x32_with_a_fixed_split() -> None:
    parts = {s: load("icons", s) for s in ("train", "val", "test")}
    assert all(d.x.shape[1:] == (3, 32, 32) for d in parts.values())
    n = sum(len(d) for d in parts.values())
    assert n == len(load("icons", "all")) and n > 1000
    assert len(parts["val"]) == len(parts["test"]) == n // 10
    names = [set(d.paths) for d in parts.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # The same split, image for image, on every load (and not just the first files in order).
    again = load("icons", "test")
    assert again.paths == parts["test"].paths and torch.equal(again.x, parts["test"].x)
    assert parts["test"].paths != sorted(set().union(*names))[-len(parts["test"]):]
    # The values are the PNG's own on opaque pixels.
    path = gicons.ICONS_DIR / "32x32" / parts["val"].paths[0]
    rgba = np.asarray(Image.open(path).convert("RGBA"))
    opaque = rgba[..., 3] == 255
    got = (parts["val"].x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert opaque.any() and (got[opaque] == rgba[..., :3][opaque]).all()
    assert load("icons", "train", shape=(3, 64, 64)).x.shape[1:] == (3, 64, 64)
    # Labels: the icon's kind, its top folder.
    data = parts["train"]
    assert "apps" in data.classes and data.classes == sorted(data.classes)
    kinds = [data.classes[int(k)] for k in data.y]
    assert kinds == [p.split("/")[0] for p in data.paths]
