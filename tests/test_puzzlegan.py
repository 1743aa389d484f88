"""PuzzleGAN (Lee et al. 2018): unused patch slots change nothing, the masks' shape and range,
the spatial and appearance losses and the measures on hand-made inputs, D's re-assembled
fakes, conditional sampling and the CLI --patches path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed, tiny, tiny_batch, tiny_patches

import genlab
from genlab.data import Dataset, synthetic
from genlab.data.patches import patch_cond
from genlab.models.puzzlegan import (
    mask_iou,
    overlap_loss,
    patch_l1,
    reassembled,
    region,
    spatial_loss,
)
from genlab.train import fit

SHAPE = (3, 8, 8)


def boxes(*spec: tuple[int, int, int, int], side: int = 8) -> torch.Tensor:
    """(1, K, side, side) bool masks, True inside each (top, left, bottom, right) box."""
    m = torch.zeros(1, len(spec), side, side, dtype=torch.bool)
    for k, (t, left, b, r) in enumerate(spec):
        m[0, k, t:b, left:r] = True
    return m


# ---- unused slots ------------------------------------------------------------------------------


def test_an_unused_slot_changes_nothing():
    model = perturbed("puzzlegan", SHAPE, noise=0.3)
    batch = tiny_batch(model, 6)
    valid = batch["patch_valid"].clone()
    valid[:, 2] = False  # slot 2 unused everywhere, slot 1 in some rows
    other = batch["patches"].clone()
    other[~valid] = torch.rand_like(other[~valid])  # new pixels in every unused slot
    model.eval()
    outs = []
    for patches in (batch["patches"], other):
        torch.manual_seed(3)
        outs.append(model.complete(patches, valid))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    # ... and the masks of unused slots are empty.
    assert float(outs[0][1][~valid].max()) < 1e-6
    # The same in training (batch statistics): G's loss does not see the unused pixels either.
    model.train()
    losses = []
    for patches in (batch["patches"], other):
        torch.manual_seed(4)
        losses.append(model.loss({**batch, "patches": patches, "patch_valid": valid}, "g")[0])
    assert torch.equal(losses[0], losses[1])
    # While a used slot's pixels do reach the outputs.
    used = batch["patches"].clone()
    used[:, 0] = 1 - used[:, 0]
    torch.manual_seed(3)
    model.eval()
    changed = model.complete(used, valid)
    assert not torch.allclose(changed[0], outs[0][0]) and not torch.allclose(changed[1], outs[0][1])


def test_a_patch_gets_the_same_mask_in_any_slot():
    """The encoder and the mask generator are shared by the slots and the codes are summed:
    swapping two patches' slots swaps their masks and leaves the image alone."""
    model = perturbed("puzzlegan", SHAPE, noise=0.3).eval()
    patches = tiny_batch(model, 4)["patches"]
    valid = torch.tensor([[True, True, False]] * 4)
    swapped = patches[:, [1, 0, 2]]
    torch.manual_seed(0)
    image, masks = model.complete(patches, valid)
    torch.manual_seed(0)
    image2, masks2 = model.complete(swapped, valid)
    assert torch.allclose(image, image2, atol=1e-5)
    assert torch.allclose(masks[:, [1, 0]], masks2[:, :2], atol=1e-5)


def test_masks_shape_and_range_and_bad_inputs():
    model = tiny("puzzlegan", SHAPE).eval()
    batch = tiny_batch(model, 5)
    image, masks = model.complete(batch["patches"], batch["patch_valid"])
    assert image.shape == (5, *SHAPE) and masks.shape == (5, 3, 8, 8)
    for t in (image, masks):
        assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert model.complete(batch["patches"])[1].shape == (5, 3, 8, 8)  # valid: all slots
    with pytest.raises(ValueError, match="patches must be"):
        model.complete(batch["patches"][:, :2])
    with pytest.raises(ValueError, match="patch_valid must be"):
        model.complete(batch["patches"], batch["patch_valid"][:, :2])


# ---- the losses and measures on hand-made inputs --------------------------------------------


def test_spatial_loss_is_zero_for_the_true_masks_and_the_log_loss_otherwise():
    truth = boxes((0, 0, 4, 4), (2, 3, 6, 7), (0, 0, 0, 0))
    valid = torch.tensor([[True, True, False]])
    sure = torch.where(truth, 30.0, -30.0)  # logits saying exactly the truth
    assert float(spatial_loss(sure, truth, valid)) < 1e-10
    # An unused slot never counts, whatever its logits.
    wild = sure.clone()
    wild[0, 2] = 30.0
    assert float(spatial_loss(wild, truth, valid)) < 1e-10
    # Against torch's own log loss on random logits, over the used slots only.
    logits = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    want = F.binary_cross_entropy_with_logits(logits[0, :2], truth[0, :2].float())
    assert float(spatial_loss(logits, truth, valid)) == pytest.approx(float(want), rel=1e-6)
    # A mask that is exactly half: log 2 per pixel.
    assert float(spatial_loss(torch.zeros(1, 3, 8, 8), truth, valid)) == pytest.approx(
        0.693147, rel=1e-5)
    assert float(spatial_loss(logits, truth, torch.zeros(1, 3, dtype=torch.bool))) == 0.0


def test_overlap_loss_is_one_minus_the_iou_of_sure_masks():
    truth = boxes((0, 0, 4, 4), (4, 4, 8, 8), (0, 0, 2, 2))
    valid = torch.tensor([[True, True, False]])
    sure = torch.where(truth, 30.0, -30.0)
    assert float(overlap_loss(sure, truth, valid)) < 1e-6
    shifted = torch.full((1, 3, 8, 8), -30.0)
    shifted[0, 0, 0:4, 2:6] = 30.0  # 8 shared pixels of 24: IoU 1/3
    shifted[0, 1, 4:8, 4:8] = 30.0  # exact
    assert float(overlap_loss(shifted, truth, valid)) == pytest.approx((2 / 3 + 0) / 2, rel=1e-5)
    half = torch.zeros(1, 3, 8, 8)  # p = 1/2 everywhere: 8 / (32 + 16 - 8) for a 4x4 box
    assert float(overlap_loss(half, truth, valid)) == pytest.approx(1 - 8 / 40, rel=1e-5)
    assert float(overlap_loss(half, truth, torch.zeros(1, 3, dtype=torch.bool))) == 0.0


def test_patch_l1_counts_only_the_used_boxes():
    truth = boxes((0, 0, 2, 4), (4, 4, 8, 8))
    source = torch.zeros(1, 3, 8, 8)
    generated = torch.ones(1, 3, 8, 8)  # wrong by 1 everywhere ...
    generated[:, :, 0:2, 0:4] = 0.25  # ... but by 0.25 in the first box
    both = torch.tensor([[True, True]])
    first = torch.tensor([[True, False]])
    assert float(patch_l1(generated, source, truth, first)) == pytest.approx(0.25)
    # 8 pixels at 0.25 and 16 at 1.
    assert float(patch_l1(generated, source, truth, both)) == pytest.approx((8 * 0.25 + 16) / 24)
    # Overlapping boxes count each pixel once.
    overlap = boxes((0, 0, 2, 4), (0, 0, 2, 2))
    assert float(patch_l1(generated, source, overlap, both)) == pytest.approx(0.25)
    assert float(patch_l1(generated, source, truth, torch.zeros(1, 2, dtype=torch.bool))) == 0.0
    assert region(truth, first).sum() == 8


def test_mask_iou_on_hand_made_masks():
    truth = boxes((0, 0, 4, 4), (4, 4, 8, 8), (0, 0, 2, 2))
    pred = torch.zeros(1, 3, 8, 8)
    pred[0, 0, 0:4, 2:6] = 0.9  # shifted by 2: 8 shared pixels of 24
    pred[0, 1, 4:8, 4:8] = 0.6  # exact, above the threshold
    pred[0, 2, 0:2, 0:2] = 0.4  # below the threshold: empty, IoU 0 -- but the slot is unused
    valid = torch.tensor([[True, True, False]])
    assert mask_iou(pred, truth, valid) == pytest.approx((8 / 24 + 1) / 2)
    assert mask_iou(pred, truth, torch.tensor([[False, False, True]])) == 0.0
    assert mask_iou(pred, truth, torch.tensor([[False, False, True]]), threshold=0.3) == 1.0
    with pytest.raises(ValueError, match="no slot"):
        mask_iou(pred, truth, torch.zeros(1, 3, dtype=torch.bool))


def test_reassembled_fakes_swap_parts_and_backgrounds():
    x = torch.stack([torch.full((1, 4, 4), float(v)) for v in (1, 2, 3)])  # (3, 1, 4, 4)
    inside = torch.zeros(3, 1, 4, 4)
    inside[0, :, :2, :2] = 1
    inside[1, :, 2:, 2:] = 1  # image 2 has no region
    fallback = torch.full((3, 1, 4, 4), -5.0)
    out = reassembled(x, inside, fallback)
    parts, background = out[:3], out[3:]
    # Image 0 with its region from image 1, and image 1 around image 0's region.
    assert float(parts[0, 0, 0, 0]) == 2 and float(parts[0, 0, 3, 3]) == 1
    assert float(background[0, 0, 0, 0]) == 1 and float(background[0, 0, 3, 3]) == 2
    assert float(parts[1, 0, 3, 3]) == 3 and float(parts[1, 0, 0, 0]) == 2
    assert torch.equal(parts[2], fallback[2]) and torch.equal(background[2], fallback[2])


# ---- training and sampling ---------------------------------------------------------------------


def test_losses_and_hidden_rows():
    model = tiny("puzzlegan", SHAPE)
    batch = tiny_batch(model, 6)
    loss, logs = model.loss(batch, "g")
    assert set(logs) == {"g_adv", "spatial", "overlap", "appearance"} and torch.isfinite(loss)
    _, logs = model.loss(batch, "d")
    assert set(logs) == {"d_real", "d_fake", "d_mixed"}
    model.config.drop = 0.0
    assert torch.equal(model._shown(batch["patch_valid"]), batch["patch_valid"])
    model.config.drop = 0.5
    torch.manual_seed(0)
    shown = model._shown(batch["patch_valid"].repeat(50, 1))  # (300, 3)
    hidden = ~shown.any(1)
    assert 0.35 < float(hidden.float().mean()) < 0.65
    assert not bool((shown & ~batch["patch_valid"].repeat(50, 1)).any())  # only hides
    with pytest.raises(ValueError, match="drop"):
        genlab.create("puzzlegan", shape=SHAPE, drop=1.0)


def test_sample_follows_the_patches():
    model = perturbed("puzzlegan", SHAPE, noise=0.3).eval()
    batch = tiny_batch(model, 4)
    torch.manual_seed(1)
    x = model.sample(4, cond={"patches": batch["patches"], "patch_valid": batch["patch_valid"]})
    torch.manual_seed(1)
    want, _ = model.complete(batch["patches"], batch["patch_valid"])
    assert torch.equal(x, want)  # the cond went through the completion wrapper untouched
    torch.manual_seed(1)
    y = model.sample(4, cond={"patches": 1 - batch["patches"],
                              "patch_valid": batch["patch_valid"]})
    assert not torch.allclose(x, y)
    # patch_cond's cond (patches of any size, resized) and none at all.
    cond = patch_cond([torch.rand(3, 5, 5), torch.rand(3, 12, 12)], 3)
    assert model.sample(3, cond=cond).shape == (3, *SHAPE)
    free = model.sample(3)
    assert free.shape == (3, *SHAPE) and float(free.min()) >= 0 and float(free.max()) <= 1
    with pytest.raises(ValueError, match="must hold 5 rows"):
        model.sample(5, cond={"patches": batch["patches"]})


def test_cli_sample_with_patches_on_a_tiny_trained_run(tmp_path):
    from PIL import Image

    data = synthetic("blobs", n=16, shape=(3, 16, 16), seed=1)
    fields = tiny_patches(data.x, torch.Generator().manual_seed(0))
    data = Dataset(data.x, data.y, data.name, fields=fields)
    torch.manual_seed(0)
    model = genlab.create("puzzlegan", shape=(3, 16, 16), latent=4, embed=5, patch=4, width=4,
                          mask_width=3, d_width=4)
    fit(model, data, steps=3, batch_size=4, out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "puzzles.png").exists()
    paths = []
    for i in range(2):
        p = tmp_path / f"p{i}.png"
        Image.fromarray((torch.rand(12, 12, 3) * 255).byte().numpy()).save(p)
        paths.append(str(p))
    out = tmp_path / "s.png"
    cmd = [sys.executable, "-m", "genlab.cli", "sample", str(tmp_path / "run"), "--patches",
           *paths, "-n", "3", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.exists() and "from 2 patches" in done.stdout


def test_puzzle_measures_on_hand_made_completions():
    from genlab.models.puzzlegan import puzzle_measures

    truth = torch.cat([boxes((0, 0, 4, 4), (4, 4, 8, 8))] * 2)  # (2, 2, 8, 8)
    valid = torch.tensor([[True, False], [True, True]])
    source = torch.zeros(2, 3, 8, 8)
    generated = torch.full((2, 3, 8, 8), 0.5)
    masks = truth.float()  # every mask exactly right
    out = puzzle_measures(generated, masks, source, truth, valid,
                          torch.tensor([3, 4]), torch.tensor([3, 5]))
    assert out == {"mask_iou": 1.0, "patch_l1": pytest.approx(0.5), "digit_agreement": 0.5}
    masks[1, 1] = 0  # the second image's second mask empty: IoU 0 for that slot
    out = puzzle_measures(generated, masks, source, truth, valid)
    assert out["mask_iou"] == pytest.approx(2 / 3) and "digit_agreement" not in out
