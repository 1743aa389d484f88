"""The conditional data (attributes, captions, key patches, unpaired domains), the translate
capability and the CLI commands built on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from genlab.cli import main
from genlab.data import Loader, load
from genlab.data.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    describe_attrs,
    parse_attrs,
    render,
)
from genlab.data.captions import HELDOUT, VOCAB, detokenize, tokenize, words
from genlab.data.dataset import DataError
from genlab.models import MODELS
from genlab.models.base import GenerativeModel, Unsupported

N = 48  # images per split in these tests (limit)


def _attrs(**values: str) -> torch.Tensor:
    return parse_attrs(",".join(f"{k}={v}" for k, v in values.items()))


def _digit() -> torch.Tensor:
    """(1, 1, 28, 28): a plus sign of 3-pixel strokes, as ink in [0, 1]."""
    x = torch.zeros(1, 1, 28, 28)
    x[..., 6:22, 13:16] = 1
    x[..., 13:16, 6:22] = 1
    return x


# ---- attributes -------------------------------------------------------------------------------
def test_sources_are_deterministic_and_seeded():
    for name in ("mnist-attrs", "mnist-captions", "mnist-patches", "mnist:mnist-colour"):
        a, b = load(name, "val", limit=N, seed=3), load(name, "val", limit=N, seed=3)
        for key, value in a.fields.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b.fields[key]), (name, key)
            else:
                assert value == b.fields[key], (name, key)
    other = load("mnist-attrs", "val", limit=N, seed=4)
    assert not torch.equal(load("mnist-attrs", "val", limit=N, seed=3).attrs, other.attrs)


def test_attrs_field_shape_and_parse_round_trip():
    d = load("mnist-attrs", "train", limit=N)
    assert d.x.shape == (N, 3, 32, 32) and d.attrs.shape == (N, len(ATTRIBUTE_NAMES))
    assert d.attrs.dtype == torch.long
    for j, name in enumerate(ATTRIBUTE_NAMES):
        assert 0 <= int(d.attrs[:, j].min()) and int(d.attrs[:, j].max()) < len(ATTRIBUTES[name])
    row = parse_attrs("colour=red,rotation=+30", n=2)
    assert row.shape == (2, len(ATTRIBUTE_NAMES))
    assert describe_attrs(row[0]).startswith("colour=red,background=black,thickness=normal")
    assert torch.equal(parse_attrs(describe_attrs(d.attrs[5]))[0], d.attrs[5])
    with pytest.raises(DataError, match="expected one of"):
        parse_attrs("colour=plaid")
    with pytest.raises(DataError, match="NAME=VALUE"):
        parse_attrs("size=3")


def test_thickness_changes_the_ink():
    ink = {t: render(_digit(), _attrs(thickness=t)).mean().item() for t in ATTRIBUTES["thickness"]}
    assert ink["thin"] < ink["normal"] < ink["thick"]


def test_colour_and_background_are_the_named_ones():
    x = render(_digit(), _attrs(colour="red", background="navy"))[0]  # (3, 32, 32)
    stroke, back = x[:, 16, 16], x[:, 0, 0]
    assert torch.allclose(stroke, torch.tensor(COLOURS["red"]), atol=1e-5)
    assert torch.allclose(back, torch.tensor(BACKGROUNDS["navy"]), atol=1e-5)
    inverted = render(_digit(), _attrs(colour="red", background="navy", inversion="yes"))[0]
    assert torch.allclose(inverted[:, 16, 16], back) and torch.allclose(inverted[:, 0, 0], stroke)


def test_rotation_turns_counter_clockwise_and_scale_enlarges():
    bar = torch.zeros(1, 1, 28, 28)
    bar[..., 4:24, 13:15] = 1  # a vertical bar
    up = render(bar, _attrs())[0, 0]
    left = render(bar, _attrs(rotation="30"))[0, 0]  # top goes left, bottom right
    assert abs(up[6].argmax().item() - 15) <= 1  # upright: the bar stays in the middle
    top, bottom = left[6:10].sum(0), left[22:26].sum(0)  # column profiles
    cols = torch.arange(32, dtype=torch.float32)
    assert (top * cols).sum() / top.sum() < 14.5 < (bottom * cols).sum() / bottom.sum()
    big = render(_digit(), _attrs(scale="large")).mean()
    small = render(_digit(), _attrs(scale="small")).mean()
    assert small < render(_digit(), _attrs()).mean() < big


# ---- captions ---------------------------------------------------------------------------------
def test_heldout_combinations_never_in_train_and_present_in_test():
    col = ATTRIBUTE_NAMES.index("colour")
    train = load("mnist-captions", "train", limit=400)
    pairs = {(int(y), int(c)) for y, c in zip(train.y, train.attrs[:, col], strict=True)}
    assert not pairs & HELDOUT and not bool(train.heldout.any())
    test = load("mnist-captions", "test", limit=N)
    marked = {(int(y), int(c)) for y, c, h in
              zip(test.y, test.attrs[:, col], test.heldout, strict=True) if h}
    assert marked and marked <= HELDOUT
    held_captions = set(np.array(test.caption)[test.heldout.numpy()])
    assert not held_captions & set(train.caption)
    # The caption names the colour the image has.
    for text, row in zip(test.caption, test.attrs, strict=True):
        colour = ATTRIBUTES["colour"][int(row[col])]
        assert colour in words(text) or (colour == "magenta" and "pink" in words(text))


def test_captions_vary_and_tokenizer_round_trips():
    d = load("mnist-captions", "train", limit=200)
    assert d.text.shape == (200, 16) and d.text.dtype == torch.long
    assert torch.equal(d.text, tokenize(d.caption))
    assert detokenize(d.text) == [" ".join(words(c)) for c in d.caption]
    sevens = [c for c, y in zip(d.caption, d.y, strict=True) if y == 7]
    assert len({c.split()[1] for c in d.caption}) > 3  # word order / first word varies
    assert len(set(sevens)) == len(sevens)
    ids = tokenize(["A thick RED seven, tilted left!", "zebra"], length=8)
    assert detokenize(ids) == ["a thick red seven tilted left", "<unk>"]
    assert ids[0, 6:].eq(0).all() and VOCAB[0] == "<pad>"


# ---- patches ----------------------------------------------------------------------------------
def test_patches_are_the_image_under_their_boxes():
    d = load("mnist-patches", "train", limit=N)
    assert d.patches.shape == (N, 3, 3, 12, 12) and d.masks.shape == (N, 3, 32, 32)
    assert d.patch_count.min() >= 1 and d.patch_count.max() <= 3
    assert torch.equal(d.patch_valid.sum(1), d.patch_count)
    for i in range(N):
        for k in range(3):
            t, left, b, r = d.boxes[i, k].tolist()
            if not d.patch_valid[i, k]:
                assert not d.masks[i, k].any() and not d.patches[i, k].any()
                continue
            assert 0 <= t < b <= 32 and 0 <= left < r <= 32
            assert torch.equal(d.patches[i, k], d.x[i, :, t:b, left:r])
            assert int(d.masks[i, k].sum()) == (b - t) * (r - left)
            assert d.masks[i, k, t:b, left:r].all()
            # A key patch shows some of the digit: a pixel far from the background colour.
            background = d.x[i, :, 0, 0][:, None, None]
            assert (d.patches[i, k] - background).abs().max() > 0.3


# ---- domains ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", ["mnist:mnist-colour", "mnist:typeset"])
def test_domains_share_a_shape(pair):
    d = load(pair, "train", limit=N)
    assert d.x.shape == d.x_b.shape == (N, 3, 32, 32)
    assert d.y.shape == d.y_b.shape == (N,)
    assert torch.equal(d.x[:, 0], d.x[:, 1])  # grey MNIST repeated over RGB
    assert d.unaligned == ("x_b", "y_b")


def test_unaligned_loader_draws_domains_in_independent_orders():
    d = load("mnist:mnist-colour", "train", limit=64)
    loader = Loader(d, 16, seed=1)
    # Recover which rows of x / x_b each batch holds by matching images.
    def rows(batch, key):
        flat = d.fields[key].flatten(1)
        return [int((flat == img.flatten()).all(1).nonzero()[0]) for img in batch[key]]

    a, b = [], []
    for step in range(4):  # one epoch
        batch = loader.batch(step)
        a += rows(batch, "x")
        b += rows(batch, "x_b")
        assert torch.equal(batch["y_b"], d.y_b[rows(batch, "x_b")])  # y_b follows x_b
    assert sorted(a) == sorted(b) == list(range(64))  # each visits every row once
    assert a != b  # but not in the same order
    again = Loader(d, 16, seed=1).batch(2)
    assert torch.equal(again["x_b"], loader.batch(2)["x_b"])  # resumable
    served = list(Loader(d, 16, shuffle=False))
    assert torch.equal(torch.cat([s["x"] for s in served]), d.x)
    assert not torch.equal(torch.cat([s["x_b"] for s in served]), d.x_b)


def test_every_conditional_source_is_listed_in_help(capsys):
    from genlab.data import describe_sources

    text = describe_sources()
    for name in ("mnist-attrs", "fashion-mnist-attrs", "mnist-captions", "mnist-patches",
                 "mnist:mnist-colour", "mnist:typeset", "mnist:fashion-mnist"):
        assert name in text


# ---- the translate capability and the CLI -----------------------------------------------------
@dataclass
class FakeConfig:
    width: int = 1


class FakeTranslator(GenerativeModel):
    """Not registered: translate inverts (to b) or paints the image red (attrs), sample
    answers text and patches with constant images."""

    name = "fake-translator"
    data_kind = "continuous"
    Config = FakeConfig
    needs = ("x", "x_b")
    conditions = ("text", "patches")
    presets = {"cpu": {"data": "mnist:mnist-colour"}, "paper": {}}

    def __init__(self, shape, config):
        super().__init__(shape, config)
        self.w = nn.Parameter(torch.ones(1))

    def loss(self, batch, player):
        loss = (self.w * batch["x"].mean() - batch["x_b"].mean()) ** 2
        return loss, {"loss": float(loss.detach())}

    def sample(self, n, cond=None):
        value = 0.5
        if cond and "text" in cond:
            assert isinstance(cond["text"], list) and len(cond["text"]) == n
            value = 1.0 if "red" in cond["text"][0] else 0.25
        if cond and "patches" in cond:
            value = float(cond["patches"][:, 0].mean())
        return torch.full((n, *self.shape), value)

    def translate(self, x, cond):
        if "to" in cond:
            return 1 - x
        red = (cond["attrs"][:, ATTRIBUTE_NAMES.index("colour")] == 0).float()
        return x * red[:, None, None, None]


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, FakeTranslator.name, FakeTranslator)
    model = FakeTranslator((3, 32, 32), FakeConfig())
    return model.save(tmp_path / "run")


def test_translate_capability_is_optional():
    assert "translate" in FakeTranslator.capabilities() and FakeTranslator.has("translate")
    gan = MODELS["gan"]
    assert not gan.has("translate") and "translate" not in gan.capabilities()
    with pytest.raises(Unsupported, match="no translate"):
        GenerativeModel.translate(object.__new__(gan), torch.zeros(1), {})


def test_translate_cli_writes_pngs_and_a_grid(fake_run, tmp_path):
    out = tmp_path / "to-b"
    assert main(["translate", str(fake_run), "mnist:mnist-colour", "--to", "b", "--limit", "4",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:04d}.png" for i in range(4)] + [
        "grid.png"]
    x = load("mnist:mnist-colour", "test", limit=4).x
    first = np.asarray(Image.open(out / "0000.png").convert("RGB"), dtype=np.float32) / 255
    assert first.shape == (32, 32, 3)
    assert np.abs(first - (1 - x[0]).permute(1, 2, 0).numpy()).max() < 0.003
    out2 = tmp_path / "attrs"
    assert main(["translate", str(fake_run), "mnist-attrs", "--attrs", "colour=red",
                 "--attrs", "colour=blue", "--limit", "3", "--out", str(out2)]) == 0
    assert (out2 / "0002-1.png").exists() and (out2 / "grid.png").exists()


def test_cli_refuses_what_a_model_lacks(fake_run, tmp_path, capsys):
    assert main(["translate", str(fake_run), "mnist-attrs", "--attrs", "colour=plaid",
                 "--out", str(tmp_path / "o")]) == 1
    assert "bad colour" in capsys.readouterr().err
    gan = MODELS["gan"]((3, 32, 32), MODELS["gan"].Config())
    gan_run = gan.save(tmp_path / "gan")
    assert main(["translate", str(gan_run), "mnist-attrs", "--to", "b",
                 "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "gan has no translate()" in err and err.count("\n") == 1
    assert main(["sample", str(gan_run), "--text", "a red seven",
                 "--out", str(tmp_path / "s.png")]) == 1
    assert "does not sample conditioned on 'text'" in capsys.readouterr().err


def test_sample_with_text_and_patches(fake_run, tmp_path):
    out = tmp_path / "text.png"
    assert main(["sample", str(fake_run), "-n", "2", "--text", "a thick red seven",
                 "--out", str(out)]) == 0
    assert np.asarray(Image.open(out).convert("L")).max() == 255
    patch = tmp_path / "p.png"
    Image.fromarray(np.full((12, 12, 3), 255, dtype=np.uint8)).save(patch)
    out = tmp_path / "patches.png"
    assert main(["sample", str(fake_run), "-n", "2", "--patches", str(patch),
                 "--out", str(out)]) == 0
    assert out.exists()


def test_train_refuses_one_domain_data_and_uses_the_preset_data(fake_run, tmp_path, capsys):
    assert main(["train", "fake-translator", "--data", "mnist-attrs", "--limit", "32",
                 "--out", str(tmp_path / "t"), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "needs batch fields x, x_b" in err and "--data mnist:mnist-colour" in err
    out = tmp_path / "t2"
    assert main(["train", "fake-translator", "--limit", "32", "--steps", "2", "--batch-size",
                 "8", "--out", str(out), "--threads", "1", "--quiet", "--device", "cpu"]) == 0
    from genlab.models.base import read_config

    assert read_config(out)["train"]["data"]["source"] == "mnist:mnist-colour"
    assert Path(out / "model.safetensors").exists()
