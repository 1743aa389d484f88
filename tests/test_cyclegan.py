"""CycleGAN: its losses, the image history, translation, resume, the CLI and the measures."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, Crash, crash_at, tiny, tiny_batch
from torch import nn

import genlab
from genlab.cli import main
from genlab.data import Dataset, load
from genlab.metrics.translation import cycle_error, frechet_distance, label_preservation
from genlab.models.cyclegan import History
from genlab.train import _lr_factor


def test_cycle_and_identity_losses_vanish_for_identity_generators():
    model = tiny("cyclegan", (3, 4, 4))
    model.g_ab, model.g_ba = nn.Identity(), nn.Identity()
    _, logs = model.loss(tiny_batch(model), "g")
    assert logs["cycle"] == 0 and logs["identity"] == 0
    real = tiny("cyclegan", (3, 4, 4))
    _, logs = real.loss(tiny_batch(real), "g")
    assert logs["cycle"] > 0.01 and logs["identity"] > 0.01


def test_the_generator_loss_is_the_papers_sum():
    """adv (D(G) - 1)^2 both ways + 10 * cycle L1 + 5 * identity L1, computed by hand."""
    model = tiny("cyclegan", (3, 4, 4))
    batch = tiny_batch(model)
    loss, _ = model.loss(batch, "g")
    a, b = batch["x"] * 2 - 1, batch["x_b"] * 2 - 1
    fb, fa = model.g_ab(a), model.g_ba(b)
    adv = ((model.d_b(fb) - 1) ** 2).mean() + ((model.d_a(fa) - 1) ** 2).mean()
    cyc = (model.g_ba(fb) - a).abs().mean() + (model.g_ab(fa) - b).abs().mean()
    idt = (model.g_ab(b) - b).abs().mean() + (model.g_ba(a) - a).abs().mean()
    want = float((adv + 10 * cyc + 5 * idt).detach())
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


def _reference_history(stored: list, queries: list, size: int, seed: int) -> list:
    """The paper's ImagePool one image at a time, with the same draws."""
    torch.manual_seed(seed)
    out = []
    fill = [q for q in queries[: max(size - len(stored), 0)]]
    stored.extend(fill)
    out.extend(fill)
    rest = queries[len(fill):]
    if rest:
        swap = (torch.rand(len(rest)) < 0.5).tolist()
        where = torch.randint(size, (len(rest),)).tolist()
        for q, s, w in zip(rest, swap, where, strict=True):
            if s:
                out.append(stored[w])
                stored[w] = q
            else:
                out.append(q)
    return out


def test_d_judges_the_translations_g_made_in_the_same_step():
    model = tiny("cyclegan", (3, 4, 4))
    assert model.players_at(0) == ("g", "d")
    batch = tiny_batch(model, 3)
    calls = []
    for g in (model.g_ab, model.g_ba):
        g.register_forward_hook(lambda *a: calls.append(1))
    model.loss(batch, "g")
    drawn_by_g = len(calls)
    _, logs = model.loss(batch, "d")
    assert len(calls) == drawn_by_g  # D drew nothing: it judged G's translations
    # what it judged: G's translations, through the history (empty, so returned as they are)
    fresh = tiny("cyclegan", (3, 4, 4))
    fresh.load_state_dict(model.state_dict())
    fresh.history_a.count.zero_()
    fresh.history_b.count.zero_()
    # a D step with no hand-over draws its own, the same translations for the same weights
    assert fresh.take_over(batch) is None
    _, again = fresh.loss(batch, "d")
    assert again["d_a"] == pytest.approx(logs["d_a"], rel=1e-5)
    assert again["d_b"] == pytest.approx(logs["d_b"], rel=1e-5)
    # a hand-over is taken once, and only for its own batch
    model.loss(batch, "g")
    assert model.take_over(tiny_batch(model, 3)) is None and model.take_over(batch) is None


def test_history_keeps_the_first_images_then_swaps_half():
    h = History(4, (1, 1, 1))
    stored: list = []
    for step in range(6):
        q = torch.arange(3.0).add(10 * step).view(3, 1, 1, 1)
        torch.manual_seed(step)
        got = h(q)
        want = _reference_history(stored, [float(v) for v in q.flatten()], 4, step)
        assert got.flatten().tolist() == want
        assert h.images[: int(h.count)].flatten().tolist() == stored
        if step == 0:
            assert torch.equal(got, q) and int(h.count) == 3
    assert int(h.count) == 4
    big = History(50, (1, 1, 1))
    big(torch.zeros(50, 1, 1, 1))
    torch.manual_seed(0)
    q = torch.arange(1.0, 4001).view(-1, 1, 1, 1)
    got = big(q)
    assert abs(float((got != q).double().mean()) - 0.5) < 0.05  # about half swapped


def test_history_is_saved_and_resumed_exactly():
    model = tiny("cyclegan", (3, 4, 4))
    batch = tiny_batch(model)
    for _ in range(2):  # 16 images into histories of 6: full, swapping
        model.loss(batch, "d")
    again = tiny("cyclegan", (3, 4, 4))
    again.load_state_dict(model.state_dict())
    assert int(again.history_b.count) == 6
    assert torch.equal(again.history_b.images, model.history_b.images)
    torch.manual_seed(7)
    want, _ = model.loss(batch, "d")
    torch.manual_seed(7)
    got, _ = again.loss(batch, "d")
    assert torch.equal(want, got)
    assert torch.equal(again.history_a.images, model.history_a.images)


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 2, 3), (1, 4, 4)])
def test_translate_both_ways(shape):
    model = tiny("cyclegan", shape).eval()
    x = torch.rand(5, *shape)
    for to in ("a", "b"):
        y = model.translate(x, {"to": to})
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.equal(model.translate(x, {"to": "a"}), model.translate(x, {"to": "b"}))
    with pytest.raises(ValueError, match="'a' or 'b'"):
        model.translate(x, {"to": "c"})
    assert not model.has("sample") and model.has("translate")


def test_linear_schedule_holds_then_decays():
    f = [_lr_factor("linear", s, 100, 0.0, None) for s in (0, 30, 50, 75, 100)]
    assert f == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])


def _two_domains(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(1)
    x = torch.round(torch.rand(n, 1, 4, 4, generator=g) * 255) / 255
    return Dataset(x, torch.zeros(n, dtype=torch.long), "pair",
                   fields={"x_b": 1 - x.flip(0), "y_b": torch.zeros(n, dtype=torch.long)},
                   unaligned=("x_b", "y_b"))



def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    data = _two_domains()
    kw = dict(steps=30, batch_size=8, ckpt_every=10, log_every=1, progress=False, seed=5,
              lr=1e-2, schedule="linear")
    full = tiny("cyclegan")
    genlab.fit(full, data, out=tmp_path / "full", **kw)
    assert int(full.history_a.count) == 6
    crashed = crash_at(tiny("cyclegan"), 17)
    with pytest.raises(Crash):
        genlab.fit(crashed, data, out=tmp_path / "run", **kw)
    resumed = tiny("cyclegan")
    genlab.fit(resumed, data, out=tmp_path / "run", resume=True, **kw)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k


def test_one_domain_data_is_refused_in_one_line(tmp_path, capsys):
    assert main(["train", "cyclegan", "--data", "mnist", "--limit", "16",
                 "--out", str(tmp_path / "t"), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "needs batch fields x, x_b" in err and err.count("\n") == 1


def test_translate_cli_and_pictures_on_a_tiny_run(tmp_path):
    data = load("mnist:mnist-colour", "train", limit=16)
    torch.manual_seed(0)
    model = genlab.create("cyclegan", shape=(3, 32, 32), **TINY["cyclegan"])
    run = tmp_path / "run"
    genlab.fit(model, data, val_data=data, steps=2, batch_size=8, out=run, progress=False)
    assert (run / "translations.png").exists()
    out = tmp_path / "to-b"
    assert main(["translate", str(run), "mnist:mnist-colour", "--to", "b", "--limit", "3",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png",
                                                      "grid.png"]
    assert main(["translate", str(run), "mnist:mnist-colour", "--to", "a", "--limit", "2",
                 "--out", str(tmp_path / "to-a")]) == 0


def test_measures_on_hand_made_values():
    assert label_preservation(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    x = torch.zeros(2, 1, 2, 2)
    rec = x.clone()
    rec[0, 0, 0, 0] = 0.8
    assert cycle_error(x, rec) == pytest.approx(0.1)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4000, 2, generator=g)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # f vs 2 f + m: means mu and 2 mu + m, covariances S and 4 S, so the distance is
    # |mu + m|^2 + Tr(S + 4 S - 2 * 2 S) = |mu + m|^2 + Tr S.
    m = torch.tensor([3.0, 0.0])
    shifted = f * 2 + m
    fd = f.double()
    want = float(((fd.mean(0) + m.double()) ** 2).sum() + torch.cov(fd.T).trace())
    assert frechet_distance(f, shifted) == pytest.approx(want, rel=1e-9)
    other = torch.randn(4000, 2, generator=g) * 2 + torch.tensor([3.0, 0.0])
    assert frechet_distance(f, other) == pytest.approx(11, rel=0.05)
    assert math.isfinite(frechet_distance(f[:, :1], other[:, :1]))


def test_translation_measures_both_ways_on_a_stub():
    """A 'translation' that inverts images: the round trip is exact, labels are predicted from
    the (inverted) image's mean, features are the image itself."""
    from genlab.metrics.translation import translation_measures

    class Invert:
        device = torch.device("cpu")

        def translate(self, x, cond):
            return 1 - x

    a = torch.tensor([0.0, 0.2, 0.9, 1.0]).view(4, 1, 1, 1)
    b = 1 - a
    y = torch.tensor([1, 1, 0, 0])
    out = translation_measures(Invert(), a, b, y, y, batch_size=3,
                               predict=lambda t: (t.flatten(1).mean(1) < 0.5).long(),
                               features=lambda t: t.flatten(1))
    assert out["cycle_error a->b->a"] == pytest.approx(0, abs=1e-7)
    assert out["cycle_error b->a->b"] == pytest.approx(0, abs=1e-7)
    assert out["label_preservation a->b"] == 0.0 and out["label_preservation b->a"] == 1.0
    assert out["fid a->b"] == pytest.approx(0.0, abs=1e-9)
