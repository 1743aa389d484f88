"""text2image (Reed et al. 2016): GAN-CLS and GAN-INT losses on hand-set logits, the wrong-text
permutation, the text encoder's shapes, conditional sampling, the CLI --text path, measures."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import loss_added_by, r1_by_hand, tiny, tiny_batch

import genlab
from genlab.data import Dataset, synthetic
from genlab.data.attributes import ATTRIBUTES
from genlab.data.captions import DIGIT_WORDS, HELDOUT, MAX_WORDS, VOCAB, detokenize, tokenize
from genlab.models.text2image import (
    POOL,
    caption_accuracy,
    change_digit,
    every_digit,
    interpolate,
    matching_d_loss,
    matching_g_loss,
    random_captions,
    shifted,
)
from genlab.train import fit


def log_sigmoid(s: float) -> float:
    return math.log(1 / (1 + math.exp(-s)))


def test_matching_d_loss_on_hand_set_logits():
    rr, rw, fr = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0]), torch.tensor([-2.0, 1.0])
    want = 0.0
    for i in range(2):  # -log D(x,t) - (log(1 - D(x,t')) + log(1 - D(G,t))) / 2, per row
        want += -log_sigmoid(float(rr[i]))
        want += -(log_sigmoid(-float(rw[i])) + log_sigmoid(-float(fr[i]))) / 2
    assert float(matching_d_loss(rr, rw, fr)) == pytest.approx(want / 2, rel=1e-6)
    # A D that is sure and right has a loss near 0; calling wrong texts real costs it.
    sure = torch.full((3,), 20.0)
    assert float(matching_d_loss(sure, -sure, -sure)) < 1e-6
    assert float(matching_d_loss(sure, sure, -sure)) == pytest.approx(10.0, rel=1e-4)


def test_generator_loss_and_the_interpolation_term():
    fake, between = torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 2.0])
    plain = -(log_sigmoid(0.0) + log_sigmoid(1.0)) / 2
    extra = -(log_sigmoid(-1.0) + log_sigmoid(2.0)) / 2
    assert float(matching_g_loss(fake)) == pytest.approx(plain, rel=1e-6)
    assert float(matching_g_loss(fake, between, 0.5)) == pytest.approx(plain + 0.5 * extra,
                                                                       rel=1e-6)


@pytest.mark.parametrize("n", [2, 3, 8, 64])
def test_wrong_texts_are_a_permutation_without_fixed_points(n):
    p = shifted(n)
    assert sorted(p.tolist()) == list(range(n))
    assert not bool((p == torch.arange(n)).any())


def test_interpolated_embeddings_mix_each_text_with_the_shifted_one():
    t = torch.tensor([[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]])
    want = torch.tensor([[2.0, 4.0], [6.0, 8.0], [4.0, 6.0]])  # halfway to the next row
    assert torch.equal(interpolate(t, 0.5), want)
    assert torch.equal(interpolate(t, 1.0), t)


def test_tokenize_and_encode_shapes():
    model = tiny("text2image")
    ids = tokenize(["a thick red seven", "a 3"])
    assert ids.shape == (2, MAX_WORDS) and ids.dtype == torch.long
    t = model.text_encoder(ids)
    assert t.shape == (2, model.config.text)
    # Padding does not change a sentence's embedding (the mean is over its words only).
    longer = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], 1)
    assert torch.allclose(model.text_encoder(longer), t, atol=1e-6)
    assert model.pool.shape == (POOL, MAX_WORDS) and int(model.pool.max()) < len(VOCAB)
    assert len(set(random_captions(50))) > 25


def test_sample_follows_the_text():
    model = tiny("text2image", (3, 4, 4)).eval()
    texts = ["a thick red seven"] * 3 + ["a thin blue one on white"] * 3
    torch.manual_seed(1)
    x = model.sample(6, cond={"text": texts})
    assert x.shape == (6, 3, 4, 4) and float(x.min()) >= 0 and float(x.max()) <= 1
    # Same noise, other texts: other images, so the text reaches the generator.
    torch.manual_seed(1)
    y = model.sample(6, cond={"text": texts[::-1]})
    assert not torch.allclose(x, y)
    with pytest.raises(ValueError, match="must hold 4 strings"):
        model.sample(4, cond={"text": texts})
    # Every step of G reads the text: its gradient reaches G's text compression.
    batch = tiny_batch(model)
    loss, _ = model.loss(batch, "g")
    loss.backward()
    assert model.generator.compress[0].weight.grad.abs().sum() > 0
    assert model.text_encoder.embed.weight.grad is None  # the encoder is D's


def test_d_step_trains_the_text_encoder():
    model = tiny("text2image")
    loss, logs = model.loss(tiny_batch(model), "d")
    loss.backward()
    assert model.text_encoder.embed.weight.grad.abs().sum() > 0
    assert set(logs) == {"d_real", "d_wrong", "d_fake"}


def test_change_digit_edits_only_the_digit_and_never_makes_a_held_out_pair():
    # Every form a caption names its digit in, every colour, and a caption naming no digit.
    colours = list(ATTRIBUTES["colour"])
    texts = [f"a {c} {noun} on navy tilted left"
             for d in range(10) for c in colours
             for noun in (DIGIT_WORDS[d], str(d), f"digit {DIGIT_WORDS[d]}", f"number {d}")]
    texts.append("a red trouser on navy")
    ids = tokenize(texts)
    as_digit = {**{w: d for d, w in enumerate(DIGIT_WORDS)}, **{str(d): d for d in range(10)}}
    for seed in range(5):
        edited, named = change_digit(ids, torch.Generator().manual_seed(seed))
        assert named[:-1].all() and not named[-1]
        assert torch.equal(edited[-1], ids[-1])
        for before, after in zip(detokenize(ids[:-1]), detokenize(edited[:-1]), strict=True):
            b, a = before.split(), after.split()
            diff = [i for i, (u, v) in enumerate(zip(b, a, strict=True)) if u != v]
            assert len(diff) == 1  # one word changed: the digit, in the same form
            old, new = b[diff[0]], a[diff[0]]
            assert old.isdigit() == new.isdigit() and as_digit[new] != as_digit[old]
            colour = colours.index(next(w for w in b if w in colours))
            assert (as_digit[new], colour) not in HELDOUT


def test_digit_negatives_and_per_player_learning_rates_reach_the_step():
    model = tiny("text2image", lr_g=1e-3)
    batch = tiny_batch(model)
    colours = list(ATTRIBUTES["colour"])
    batch["text"] = tokenize([f"a {colours[i % 8]} {DIGIT_WORDS[i % 10]}"
                              for i in range(len(batch["x"]))])
    logs = {}
    for share in (0.0, 1.0):  # same weights, same noise: only the wrong texts differ
        model.config.digit_negatives = share
        torch.manual_seed(1)
        loss, logs[share] = model.loss(batch, "d")
        assert torch.isfinite(loss)
    assert logs[0.0]["d_real"] == logs[1.0]["d_real"]
    assert logs[0.0]["d_wrong"] != logs[1.0]["d_wrong"]
    assert model.optimizer_settings("g")["lr"] == 1e-3
    assert "lr" not in model.optimizer_settings("d")
    with pytest.raises(ValueError, match="lr_d"):
        tiny("text2image", lr_d=-1.0)
    torch.manual_seed(0)
    normal = genlab.create("text2image", shape=(3, 32, 32), normal_init=True)
    first = normal.generator.net.net[0].weight.detach()  # (latent + proj, 4 width, 4, 4)
    assert abs(float(first.std()) - 0.02) < 1e-3 and abs(float(first.mean())) < 1e-3


def test_caption_accuracy_on_hand_made_predictions():
    predicted = {"digit": torch.tensor([7, 1, 2, 3]), "colour": torch.tensor([0, 0, 5, 5])}
    wanted = {"digit": torch.tensor([7, 2, 2, 3]), "colour": torch.tensor([0, -1, 5, 4])}
    heldout = torch.tensor([True, True, False, False])
    acc = caption_accuracy(predicted, wanted, heldout)
    assert acc["heldout_digit"] == 0.5 and acc["seen_digit"] == 1.0
    assert acc["heldout_colour"] == 1.0  # row 1 says no colour: not counted
    assert acc["seen_colour"] == 0.5


def test_cli_sample_with_text_on_a_tiny_trained_run(tmp_path):
    data = synthetic("blobs", n=16, shape=(3, 4, 4), seed=1)
    texts = ["a red one" if int(y) % 2 else "a thin blue two" for y in data.y]
    data = Dataset(data.x, data.y, data.name, fields={"text": tokenize(texts)})
    torch.manual_seed(0)
    model = genlab.create("text2image", shape=(3, 4, 4), latent=4, width=4, words=4, text=6,
                          proj=3)
    fit(model, data, steps=3, batch_size=4, out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "captions.png").exists()
    out = tmp_path / "s.png"
    cmd = [sys.executable, "-m", "genlab.cli", "sample", str(tmp_path / "run"), "--text",
           "a thick red seven", "--text", "a green zero", "-n", "3", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.exists()


def test_frechet_distance_against_closed_forms():
    from genlab.metrics.translation import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)  # 3 dims * 2^2
    # One dimension: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2.
    x = torch.randn(4000, 1, generator=g)
    b = 3 * x + 1
    want = (float(x.mean()) - float(b.mean())) ** 2 + (float(x.std()) - float(b.std())) ** 2
    assert frechet_distance(x, b) == pytest.approx(want, rel=1e-6)


def test_r1_penalises_d_on_real_images_with_their_own_text():
    """With r1 = gamma, D's loss grows by gamma / 2 E||grad_x D(x, t)||^2 on the real batch
    paired with its own captions (same weights, same noise); r1 < 0 is refused."""
    model = tiny("text2image")
    batch = tiny_batch(model)
    added = loss_added_by(model, batch, "d", seed=2, r1=3.0)
    t = model.text_encoder(batch["text"])
    penalty = r1_by_hand(lambda v: model.discriminator(v, t), batch["x"] * 2 - 1)
    assert penalty > 0
    torch.testing.assert_close(added, 1.5 * penalty, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="r1"):
        tiny("text2image", r1=-0.5)


def test_projection_adds_the_inner_product_of_text_and_pooled_image_features():
    """projection = true: D's logit is the joint path's plus <W t, sum of D's 4x4 map over
    space>; with the joint path's last layer zeroed only that inner product is left."""
    model = tiny("text2image", projection=True)
    batch = tiny_batch(model)
    d = model.discriminator
    torch.nn.init.zeros_(d.joint[-1].weight)
    torch.nn.init.zeros_(d.joint[-1].bias)
    with torch.no_grad():
        t = model.text_encoder(batch["text"])
        fmap = d.image_map(batch["x"] * 2 - 1)  # (B, F, s, s)
        want = torch.stack([d.project(t[i]) @ fmap[i].sum((1, 2)) for i in range(len(t))])
        torch.testing.assert_close(d.judge(fmap, t), want)
        assert not torch.allclose(d.judge(fmap, t), d.judge(fmap, t.flip(0)))


def test_every_digit_rewrites_the_digit_ten_ways_and_marks_held_out_pairs():
    colours = list(ATTRIBUTES["colour"])
    texts = [f"a {c} {noun} on navy" for d in range(10) for c in colours
             for noun in (DIGIT_WORDS[d], f"number {d}")]
    texts.append("a red trouser on navy")
    versions, allowed, digit, named = every_digit(tokenize(texts))
    assert versions.shape == (10, len(texts), MAX_WORDS) and named[:-1].all() and not named[-1]
    for row, text in enumerate(texts[:-1]):
        words = text.split()
        said = next(i for i, w in enumerate(words) if w in DIGIT_WORDS or w.isdigit())
        colour = colours.index(words[1])
        truth = DIGIT_WORDS.index(words[said]) if words[said] in DIGIT_WORDS else int(words[said])
        assert int(digit[row]) == truth
        for d in range(10):
            got = detokenize(versions[d, row:row + 1])[0].split()
            want = list(words)
            want[said] = str(d) if words[said].isdigit() else DIGIT_WORDS[d]
            assert got == want
            assert bool(allowed[row, d]) == (d == truth or (d, colour) not in HELDOUT)
    assert all(torch.equal(versions[d, -1], versions[0, -1]) for d in range(10))


def test_digit_loss_is_d_choosing_its_caption_among_the_ten_digits_on_real_and_fake():
    """digit_choice: cross-entropy over the digit head's scores of the ten digit versions of
    each caption (held-out pairs excluded), by hand; digit_loss adds it to D's loss on real
    images and to G's on its fakes (same noise), G's term moves only G; no digit, no term."""
    model = tiny("text2image", digit_loss=1.0)
    batch = tiny_batch(model)
    n = len(batch["x"])
    colours = list(ATTRIBUTES["colour"])
    texts = [f"a {colours[i % 8]} {DIGIT_WORDS[(3 * i) % 10]}" for i in range(n)]
    batch["text"] = tokenize(texts)
    d = model.discriminator

    def by_hand(fmap: torch.Tensor) -> torch.Tensor:
        pooled = fmap.sum((2, 3))  # (B, F)
        total = 0.0
        for i, text in enumerate(texts):
            digit, scores = (3 * i) % 10, []
            for other in range(10):
                if other != digit and (other, i % 8) in HELDOUT:
                    continue
                version = text.replace(DIGIT_WORDS[digit], DIGIT_WORDS[other])
                head = d.digit_head(model.text_encoder(tokenize([version])))[0]  # (F,)
                scores.append((other, head @ pooled[i]))
            logits = torch.stack([s for _, s in scores])
            total = total - torch.log_softmax(logits, 0)[[o for o, _ in scores].index(digit)]
        return total / n

    real_map = d.image_map(batch["x"] * 2 - 1)
    torch.testing.assert_close(model.digit_choice(real_map, batch["text"]), by_hand(real_map))
    model.config.digit_loss = 0.0
    added = loss_added_by(model, batch, "d", seed=4, digit_loss=2.0)
    torch.testing.assert_close(added, 2.0 * by_hand(real_map), rtol=1e-4, atol=1e-5)
    logged = model.loss(batch, "d")[1]["digit"]
    assert logged == pytest.approx(float(by_hand(real_map).detach()), 1e-5)

    torch.manual_seed(5)
    fake = model.generator(torch.randn(n, model.config.latent),
                           model.text_encoder(batch["text"]))
    want = 2.0 * by_hand(d.image_map(fake)).detach()
    model.config.digit_loss = 0.0
    added = loss_added_by(model, batch, "g", seed=5, digit_loss=2.0)
    torch.testing.assert_close(added, want, rtol=1e-4, atol=1e-5)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    model.loss(batch, "g")[0].backward()
    assert all(p.grad is None for p in [*d.parameters(), *model.text_encoder.parameters()])
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.generator.parameters())

    none = tokenize(["a red trouser"] * n)
    assert float(model.digit_choice(real_map, none).detach()) == 0.0
    with pytest.raises(ValueError, match="digit_loss > 0"):
        tiny("text2image").digit_choice(real_map, batch["text"])
