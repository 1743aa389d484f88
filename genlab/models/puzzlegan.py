"""PuzzleGAN (Lee et al. 2018, "Unsupervised Holistic Image Generation from Key Local
Patches", arXiv:1703.10730): the whole image from a few of its pieces, locations unknown.

The input is 1 to K small crops of an image ("key patches": here pieces of a digit's stroke,
:mod:`genlab.data.patches`), each an image by itself, with no word on where it came from. The
model must draw the whole image *and* say where each patch belongs: one mask per patch slot.
Nothing labels the parts; the only supervision is the source image and the crops' boxes,
which come free with the crops.

The networks (the paper's parts):

- a **patch encoder** shared by all slots (a Siamese encoder: the same weights read every
  patch) turns each patch into a code e_k. Slots not in use have their pixels and their code
  set to zero, so nothing in them reaches any output. The codes are **summed** over the slots
  (as the authors' code does): an order-free summary h of what is known, the same whichever
  slot a patch sits in;
- an **image generator** draws the whole image from [z, h] (noise + the summary), a DCGAN
  generator with tanh;
- a **mask generator** draws slot k's mask from [e_k, h]: the patch itself and the company it
  keeps (the loop of a 9 goes on top, but only once you know there is also a stem). One
  network for all slots, so a patch gets the same mask whatever slot it is given in;
- a **discriminator** on images. It does *not* see the masks: checking the authors' code, D
  reads images only, and is taught what fits together by two more kinds of fakes: the real
  image with its patch regions taken from another image of the batch, and another image with
  this image's patch regions pasted in ("shuffled part, real background" and "real part,
  shuffled background"). A D that calls those fake must check that the parts and the rest of
  an image agree, which pushes G to draw the rest consistently with the given patches.

The losses of G (player "g"):

- **spatial**: binary cross-entropy between slot k's predicted mask and the true box mask of
  patch k, mean over pixels and over the slots in use (the authors' code uses an L1 on one
  union mask; a mask per slot says which patch goes where, and the log loss does not vanish
  while a mask is still wrong but already near 0 or 1), plus ``overlap`` times 1 - the soft
  IoU of the two. The cross-entropy alone learns each pixel's probability of lying in the
  box, which stays under 1/2 everywhere when a stroke piece could sit in several places (a
  straight piece of a 1): a mask thresholded at 1/2 is then empty. The soft IoU rewards
  committing to one region of the right size;
- **appearance**: L1 between the generated and the source image *inside the true boxes* of
  the patches given (mean over those pixels). This is the authors' choice (their code compares
  the two images on the patch regions, not the whole image): a whole-image L1 would drag the
  rest of the image, which the patches do not determine, to the blurry mean of all
  completions. The generator's pixels are compared on the true boxes, not on its own masks,
  so the two losses teach two things: the masks where, the image what;
- **adversarial**: the non-saturating loss (``objective`` "ns"; or hinge, lsgan) on D's logit
  of the generated image, which makes everything outside the patches look real.

Not having a patch. With probability ``drop`` a training row's patches are all hidden from G
(and its spatial and appearance losses, which have nothing to compare, vanish for that row):
the model then also learns to draw images from noise alone, and ``sample(n)`` without
patches draws from that. ``complete(patches, valid)`` gives the images and the masks;
``sample(n, cond={"patches", "patch_valid"})`` the images alone.

``encode(x)`` is the discriminator's 4x4 feature map, flattened: the features D learned by
telling real images from generated and re-assembled ones (the patch encoder reads patches,
not whole images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.patches import MAX_PATCHES
from genlab.models.adversarial import Adversarial, check_objective, critic_schedule, d_loss, g_loss
from genlab.nn import ConvDiscriminator, ConvGenerator, frozen


@dataclass
class PuzzleGANConfig:
    latent: int = 128  # noise dims (the authors' z_dim)
    embed: int = 128  # a patch's code (the authors' part_embed_dim)
    patch: int = 12  # side at which patches are encoded (others are resized to it)
    width: int = 64  # channels of G's last convolution and the encoder's first (conv_dim)
    mask_width: int = 32  # channels of the mask generator's last convolution
    d_width: int = 64  # channels of D's first convolution
    spatial: float = 10.0  # weight of the spatial (mask) loss
    overlap: float = 1.0  # weight of its soft-IoU term (0: cross-entropy alone)
    appearance: float = 10.0  # weight of the appearance (patch-region L1) loss
    mixed: float = 1.0  # weight of D's re-assembled fakes (0: D sees real and generated only)
    drop: float = 0.1  # share of training rows whose patches are all hidden from G
    g_every: int = 1  # D steps per G step (the authors' code: 2)
    objective: str = "ns"  # the adversarial losses (genlab.models.adversarial)
    slope: float = 0.2  # LeakyReLU slope of the encoder
    ema: float = 0.0  # decay of the generator's moving average used for sampling (0: off)


# ---- the networks ------------------------------------------------------------------------------


class PatchEncoder(nn.Module):
    """Patches (B, K, C, h, w) in [0, 1] and ``valid`` (B, K) bool -> codes (B, K, embed), zero
    for unused slots. Patches are resized to ``side`` x ``side``, then a 3x3 convolution and
    stride-2 4x4 convolutions (channels doubling) down to 3x3 or less, and a linear map."""

    def __init__(self, channels: int, side: int, width: int, embed: int, slope: float) -> None:
        super().__init__()
        self.side = side
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(slope)]
        s, c = side, width
        while s > 3:  # 12 -> 6 -> 3
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(slope)]
            s, c = s // 2, 2 * c
        layers += [nn.Flatten(), nn.Linear(c * s * s, embed)]
        self.net = nn.Sequential(*layers)

    def forward(self, patches: Tensor, valid: Tensor) -> Tensor:
        b, k = valid.shape
        use = valid.flatten().to(patches.dtype)  # (B K,)
        p = patches.flatten(0, 1) * use[:, None, None, None]  # (B K, C, h, w): unused -> 0
        if p.shape[-2:] != (self.side, self.side):
            p = F.interpolate(p, size=(self.side, self.side), mode="bilinear",
                              align_corners=False)
        codes = self.net(p * 2 - 1) * use[:, None]  # (B K, embed): unused slots say nothing
        return codes.view(b, k, -1)


class Completer(nn.Module):
    """G: (patches (B, K, C, h, w), valid (B, K), z (B, latent)) -> (image (B, C, H, W) in
    [-1, 1], mask logits (B, K, H, W)); an unused slot's logits are -inf-like (mask 0)."""

    def __init__(self, shape: tuple[int, int, int], config: PuzzleGANConfig) -> None:
        super().__init__()
        c, h, w = shape
        self.encoder = PatchEncoder(c, config.patch, config.width, config.embed, config.slope)
        self.image = ConvGenerator(config.latent + config.embed, shape, config.width)
        self.masks = ConvGenerator(2 * config.embed, (1, h, w), config.mask_width)

    def forward(self, patches: Tensor, valid: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        codes = self.encoder(patches, valid)  # (B, K, E)
        b, k, e = codes.shape
        summary = codes.sum(1)  # (B, E): what is known, in no particular order
        image = torch.tanh(self.image(torch.cat([z, summary], 1)))  # (B, C, H, W)
        pairs = torch.cat([codes, summary[:, None].expand(b, k, e)], 2)  # (B, K, 2E)
        logits = self.masks(pairs.flatten(0, 1)).view(b, k, *image.shape[2:])  # (B, K, H, W)
        # An unused slot has no patch, hence no place: its mask is 0 (a logit of -30).
        logits = torch.where(valid[:, :, None, None], logits, torch.full_like(logits, -30.0))
        return image, logits


# ---- the losses, and the measures built on them -------------------------------------------------


def region(truth: Tensor, valid: Tensor) -> Tensor:
    """(B, K, H, W) box masks and (B, K) valid -> (B, 1, H, W) float: 1 inside any used box."""
    return (truth.to(torch.float32) * valid[:, :, None, None]).amax(1, keepdim=True)


def spatial_loss(logits: Tensor, truth: Tensor, valid: Tensor) -> Tensor:
    """Binary cross-entropy of mask logits (B, K, H, W) against the true box masks (B, K, H, W)
    bool, mean over pixels and over the slots in use (``valid`` (B, K)); 0 when none is."""
    t, x = truth.to(torch.float32), logits.to(torch.float32)
    bce = (F.softplus(x) - x * t).mean((2, 3))  # (B, K): -t log s(x) - (1 - t) log(1 - s(x))
    use = valid.to(torch.float32)
    return (bce * use).sum() / use.sum().clamp(min=1)


def overlap_loss(logits: Tensor, truth: Tensor, valid: Tensor) -> Tensor:
    """1 - soft IoU (sum p t / sum (p + t - p t), p = sigmoid(logits)) of each used slot's mask
    (B, K, H, W) against its true box (B, K, H, W), mean over the used slots; 0 when none is."""
    p, t = torch.sigmoid(logits.to(torch.float32)), truth.to(torch.float32)
    inter = (p * t).sum((2, 3))
    soft_iou = inter / (p.sum((2, 3)) + t.sum((2, 3)) - inter).clamp(min=1e-6)  # (B, K)
    use = valid.to(torch.float32)
    return ((1 - soft_iou) * use).sum() / use.sum().clamp(min=1)


def patch_l1(generated: Tensor, source: Tensor, truth: Tensor, valid: Tensor) -> Tensor:
    """Mean |generated - source| (both (B, C, H, W), same scale) over the sub-pixels inside the
    true boxes of the used slots: the appearance loss, and the patch-region L1 measure."""
    inside = region(truth, valid)  # (B, 1, H, W)
    diff = (generated.to(torch.float32) - source.to(torch.float32)).abs() * inside
    return diff.sum() / (inside.sum() * generated.shape[1]).clamp(min=1)


def mask_iou(masks: Tensor, truth: Tensor, valid: Tensor, threshold: float = 0.5) -> float:
    """Mean over the used slots of |predicted & true| / |predicted | true|, the predicted mask
    being ``masks`` (B, K, H, W) in [0, 1] at ``threshold``; an empty union counts 0."""
    pred, t = masks >= threshold, truth.bool()
    inter = (pred & t).sum((2, 3)).to(torch.float64)
    union = (pred | t).sum((2, 3)).to(torch.float64)
    iou = inter / union.clamp(min=1)  # (B, K)
    if not bool(valid.any()):
        raise ValueError("mask IoU of nothing: no slot is in use")
    return float(iou[valid.bool()].mean())


def reassembled(x: Tensor, inside: Tensor, fallback: Tensor) -> Tensor:
    """D's re-assembled fakes (2B, C, H, W) from images x (B, C, H, W) and their patch regions
    inside (B, 1, H, W): x with the regions taken from the next image of the batch, and the
    next image with x's regions pasted in. A row with no region would be a real image (or its
    neighbour): it gets ``fallback`` (B, C, H, W), a generated image, instead."""
    other = torch.roll(x, -1, 0)
    parts = other * inside + x * (1 - inside)  # shuffled part, real background
    background = x * inside + other * (1 - inside)  # real part, shuffled background
    some = inside.flatten(1).amax(1)[:, None, None, None] > 0  # (B, 1, 1, 1)
    return torch.cat([torch.where(some, parts, fallback), torch.where(some, background, fallback)])


# ---- the model ---------------------------------------------------------------------------------


class PuzzleGAN(Adversarial):
    """Whole images and patch masks from 1..K key patches (batch fields ``patches``,
    ``patch_valid``, ``masks``; see :mod:`genlab.data.patches`)."""

    name = "puzzlegan"
    paper = ("Lee et al. 2018, Unsupervised Holistic Image Generation from Key Local Patches "
             "(arXiv:1703.10730)")
    Config = PuzzleGANConfig
    data_kind = "continuous"
    needs = ("x", "patches", "patch_valid", "masks")
    conditions = ("patches",)
    # G owns the patch encoder, the image and the mask generators (one module, so the moving
    # average, when on, covers all three); D owns the discriminator.
    owners = {"d": ("discriminator",), "g": ("generator",)}
    presets = {
        # mnist-patches (3x32x32, 1-3 patches of 12x12) on one CPU core: narrow networks
        # (width 32, mask width 16, D width 32, codes and noise of 64), batch 32, about 0.15 s
        # a step on an idle core (10 minutes). After these 4000 steps the masks beat "every
        # patch in the centre box" (IoU 0.47 against 0.34) and the completions take the
        # patches' colours, but show no readable digit (the classifier agrees with the
        # source's digit at chance): see benchmarks/RESULTS.md.
        "cpu": {
            "data": "mnist-patches",
            "model": {"latent": 64, "embed": 64, "width": 32, "mask_width": 16, "d_width": 32},
            "train": {"batch_size": 32, "lr": 2e-4, "steps": 4000, "binarize": None},
        },
        # The authors' settings: z 128, part codes 128, conv_dim 64, Adam lr 2e-4 beta1 0.5,
        # batch 64, 25 epochs (of 10k images: 3900 steps of D), G updated every second D step.
        # Their mask and appearance weights decay from 1e-2 to 1e-4 over the epochs on
        # whole-image means; here they are constant, on means over the boxes.
        "paper": {
            "data": "mnist-patches",
            "model": {"g_every": 2},
            "train": {"batch_size": 64, "lr": 2e-4, "steps": 3900, "binarize": None},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: PuzzleGANConfig | None = None) -> None:
        config = config if config is not None else PuzzleGANConfig()
        super().__init__(shape, config)
        check_objective(config.objective)
        if config.objective == "wgan":
            raise ValueError("objective wgan needs a gradient penalty: use ns, hinge or lsgan")
        if min(config.latent, config.embed, config.patch, config.width, config.mask_width,
               config.d_width, config.g_every) < 1:
            raise ValueError("latent, embed, patch, widths and g_every must be at least 1")
        if not 0.0 <= config.drop < 1.0:
            raise ValueError(f"drop must be in [0, 1), got {config.drop}")
        self.slots = MAX_PATCHES
        self.generator = Completer(self.shape, config)
        self.discriminator = ConvDiscriminator(self.shape, config.d_width, slope=config.slope)
        self.keep_average()

    def players_at(self, step: int) -> tuple[str, ...]:
        return critic_schedule(step, self.config.g_every)

    def _noise(self, n: int) -> Tensor:
        return torch.randn(n, self.config.latent, device=self.device)  # (n, latent)

    def _shown(self, valid: Tensor) -> Tensor:
        """The slots G is given: all used ones, except on the ``drop`` share of rows."""
        keep = torch.rand(valid.shape[0], device=valid.device) >= self.config.drop  # (B,)
        return valid & keep[:, None]

    # ---- the training protocol ---------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        patches, valid, truth = batch["patches"], batch["patch_valid"].bool(), batch["masks"]
        real = x * 2 - 1  # (B, C, H, W) in [-1, 1]
        b, obj = x.shape[0], self.config.objective
        shown = self._shown(valid)  # (B, K)
        if player == "d":
            with torch.no_grad():  # D's step must not build (or backprop into) G's graph
                fake, _ = self.generator(patches, shown, self._noise(b))
            real_logit = self.discriminator(real)  # (B,)
            fake_logit = self.discriminator(fake)
            loss = d_loss(obj, real_logit, fake_logit)
            logs = {"d_real": float(torch.sigmoid(real_logit).detach().mean()),
                    "d_fake": float(torch.sigmoid(fake_logit).detach().mean())}
            if self.config.mixed > 0 and b > 1:
                # A second real-vs-fake game whose fakes are real pieces put together wrongly.
                mixed = self.discriminator(reassembled(real, region(truth, valid), fake))
                loss = loss + self.config.mixed * d_loss(obj, real_logit, mixed)
                logs["d_mixed"] = float(torch.sigmoid(mixed).detach().mean())
            return loss, logs
        if player == "g":
            fake, logits = self.generator(patches, shown, self._noise(b))
            with frozen(self.discriminator):  # G's step must not touch D's weights
                adv = g_loss(obj, self.discriminator(fake))
            spatial = spatial_loss(logits, truth, shown)
            overlap = overlap_loss(logits, truth, shown)
            appearance = patch_l1((fake + 1) / 2, x, truth, shown)
            loss = (adv + self.config.spatial * (spatial + self.config.overlap * overlap)
                    + self.config.appearance * appearance)
            return loss, {"g_adv": float(adv.detach()), "spatial": float(spatial.detach()),
                          "overlap": float(overlap.detach()),
                          "appearance": float(appearance.detach())}
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    # ---- sampling ------------------------------------------------------------------------------
    def _no_patches(self, n: int) -> tuple[Tensor, Tensor]:
        c, p = self.shape[0], self.config.patch
        return (torch.zeros(n, self.slots, c, p, p, device=self.device),
                torch.zeros(n, self.slots, dtype=torch.bool, device=self.device))

    @torch.no_grad()
    def complete(self, patches: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Whole images (B, C, H, W) in [0, 1] and one mask per slot (B, K, H, W) in [0, 1]
        (0 for unused slots) for patches (B, K, C, h, w) in [0, 1] (K = 3 slots; any h x w,
        resized to ``patch``), the slots in use ``valid`` (B, K) bool (default: all)."""
        if patches.dim() != 5 or patches.shape[1] != self.slots or \
                patches.shape[2] != self.shape[0]:
            raise ValueError(f"patches must be (B, {self.slots}, {self.shape[0]}, h, w), got "
                             f"{tuple(patches.shape)}")
        if valid is None:
            valid = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        if valid.shape != patches.shape[:2]:
            raise ValueError(f"patch_valid must be {tuple(patches.shape[:2])}, got "
                             f"{tuple(valid.shape)}")
        patches, valid = patches.to(self.device, torch.float32), valid.to(self.device).bool()
        image, logits = self.sampler(patches, valid, self._noise(len(patches)))
        return (image + 1) / 2, torch.sigmoid(logits)

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Any] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] completing ``cond["patches"]`` (n, K, C, h, w)
        with ``cond["patch_valid"]`` (n, K) bool (:func:`genlab.data.patches.patch_cond` builds
        both); without patches, images drawn from noise alone (what the model learnt on the
        ``drop`` share of rows with every patch hidden). ``complete`` also gives the masks."""
        cond = cond or {}
        if cond.get("patches") is None:
            return self.complete(*self._no_patches(n))[0]
        patches = cond["patches"]
        if len(patches) != n:
            raise ValueError(f"cond['patches'] must hold {n} rows (one per image), "
                             f"got {len(patches)}")
        return self.complete(patches, cond.get("patch_valid"))[0]

    # ---- capabilities ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """D's 4x4 feature map flattened (B, F)."""
        self.check_input(x)
        return self.discriminator.features(x * 2 - 1)

    # ---- pictures ------------------------------------------------------------------------------
    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """``puzzles.png``, one column per image (8): its patches tiled on a dark canvas, the
        generated whole, the predicted masks over it (slot 1 red, 2 green, 3 blue, where the
        mask is at least 0.5), then the source image with its true boxes the same way."""
        from genlab.images import save_grid

        fields = getattr(data, "fields", {})
        if "patches" not in fields or "masks" not in fields:
            return []
        n = min(8, len(data.x))
        x, truth = data.x[:n].float(), fields["masks"][:n]
        patches, valid = fields["patches"][:n].float(), fields["patch_valid"][:n].bool()
        image, masks = self.complete(patches, valid)
        image, masks = image.float().cpu(), masks.float().cpu()
        rows = [tiled(patches, valid, self.shape), image, overlaid(image, masks >= 0.5),
                overlaid(x, truth.bool())]
        return [save_grid(torch.cat([rgb(r) for r in rows]), Path(folder) / "puzzles.png",
                          nrow=n, scale=4)]


# ---- pictures' helpers ---------------------------------------------------------------------------

SLOT_COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.3, 1.0]])  # (K, 3)


def rgb(x: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def tiled(patches: Tensor, valid: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """(B, K, C, h, w) patches -> (B, C, H, W) dark grey canvases (the grid's border is mid
    grey) with the used ones side by side (rows of as many as fit, a 1-pixel gap), not where
    they belong: the model is not told."""
    b, k, c, h, w = patches.shape
    _, H, W = shape
    canvas = torch.full((b, c, H, W), 0.2)
    per_row = max(1, (W - 1) // (w + 1))
    for i in range(k):
        r, col = divmod(i, per_row)
        top, left = 1 + r * (h + 1), 1 + col * (w + 1)
        if top + h > H or left + w > W:
            break
        show = valid[:, i, None, None, None]
        canvas[:, :, top:top + h, left:left + w] = torch.where(
            show, patches[:, i], canvas[:, :, top:top + h, left:left + w])
    return canvas


def overlaid(x: Tensor, masks: Tensor) -> Tensor:
    """Images (B, C, H, W) with each slot's mask (B, K, H, W) bool tinted in its colour."""
    out = rgb(x).clone()
    for k in range(masks.shape[1]):
        tint = SLOT_COLOURS[k % len(SLOT_COLOURS)][None, :, None, None]  # (1, 3, 1, 1)
        m = masks[:, k, None].float()  # (B, 1, H, W)
        out = out * (1 - 0.45 * m) + 0.45 * m * tint
    return out


# ---- measures: does a completion put the patches back, and where? -------------------------------


def puzzle_measures(generated: Tensor, masks: Tensor, source: Tensor, truth: Tensor,
                    valid: Tensor, digit_generated: Tensor | None = None,
                    digit_source: Tensor | None = None) -> dict[str, float]:
    """The measures of completions ``generated`` (N, C, H, W) with predicted ``masks``
    (N, K, H, W) in [0, 1] of source images ``source`` (N, C, H, W) whose patches had the true
    box masks ``truth`` (N, K, H, W) in the slots ``valid`` (N, K):

    - ``mask_iou``: :func:`mask_iou` at threshold 0.5, mean over the used slots;
    - ``patch_l1``: :func:`patch_l1`, generated vs source inside the true boxes ([0, 1] units);
    - ``digit_agreement`` (when a classifier's digits for both are given): the share of rows
      where the digit read in the completion is the one read in the source image.
    """
    out = {"mask_iou": mask_iou(masks, truth, valid), "patch_l1": float(
        patch_l1(generated, source, truth, valid))}
    if digit_generated is not None and digit_source is not None:
        from genlab.metrics.conditional import agreement

        out["digit_agreement"] = agreement(digit_generated.cpu(), digit_source.cpu())
    return out
