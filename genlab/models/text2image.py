"""Generative adversarial text-to-image synthesis (Reed et al. 2016, arXiv:1605.05396).

A DCGAN whose generator and discriminator both read a sentence. The sentence is encoded to a
vector t; the generator compresses t (a linear layer + LeakyReLU to ``proj`` dims), appends it
to the noise z and draws the image from that. The discriminator looks at the image through
stride-2 convolutions down to a 4x4 map, tiles its own compression of t over that map,
concatenates, and a 1x1 then a 4x4 convolution give one logit: "is this a real image *of this
sentence*?".

GAN-CLS (matching-aware D). A plain conditional D only learns "real or fake"; it never has to
check that the image fits the text, so G gets no signal to follow the text. Reed et al. add a
third kind of input: a real image with a *wrong* sentence (here: the batch's sentences shifted
by one, a permutation without fixed points), which D must call fake. D's loss is

    -log D(x, t) - (log(1 - D(x, t_wrong)) + log(1 - D(G(z, t), t))) / 2.

GAN-INT. Sentences are sparse points in embedding space; G also draws images for points
between them, t_int = beta * t1 + (1 - beta) * t2 (beta 0.5, t2 the shifted batch), and is
asked only that D find them real for t_int (there is no real image for such a text, so D gets
no term for it). This fills the embedding manifold between captions: here it is what lets
held-out (digit, colour) combinations be drawn from pieces seen apart.

The text encoder. The paper pre-trains a char-CNN-RNN with a structured joint embedding on
images' features. Here a word-level encoder (an embedding of :data:`~genlab.data.captions.VOCAB`
ids, two 1-D convolutions of width 3, a masked mean over the words) is trained *jointly*, by
the discriminator's GAN-CLS loss alone: telling right from wrong sentences for real images is
exactly a matching objective, so no separate pre-training stage (nor a second image encoder)
is needed, and everything stays inside one run. It belongs to player "d"; G's step reads the
embedding detached (G could otherwise move the text encoder to make its fakes easier to pass,
and the conformance rule is that a player's step changes only its own weights). Convolutions
rather than a GRU: captions here are short attribute phrases in several word orders, a
width-3 window already tells "red ... on white" (background) from "white" (stroke colour),
and convolutions are cheaper on a CPU.

Two settings beyond the paper. ``r1`` (Mescheder et al. 2018) penalises D's gradient on real
images with their own caption, so D cannot win outright early on (here it doubles how often a
sample shows its caption's colour; benchmarks/RESULTS.md, text-to-image). ``projection`` (Miyato &
Koyama 2018) adds the inner product of the text with D's pooled image features to the logit,
a direct test of the match. ``digit_loss`` is AC-GAN's auxiliary classifier with its classes
read from the caption (:meth:`Text2Image.digit_choice`): a head of D chooses each image's
caption among the caption rewritten with every digit, learnt on real images, and G is asked
to make that choice right on its fakes. Trained alone, D learns to read the digit from such a
10-way choice and never from GAN-CLS's negatives (``benchmarks/text2image_matching.py``);
inside the GAN, G learns to satisfy the head without drawing the digit, so it stays off
(benchmarks/RESULTS.md, text-to-image).

Sampling: ``sample(n, cond={"text": [n strings]})`` tokenizes with
:func:`genlab.data.captions.tokenize`. Without a text each image gets a caption drawn from a
fixed pool of 1024 random training-like captions (:func:`random_captions`: digit and
attributes drawn uniformly, phrased by :func:`genlab.data.captions.caption`), so it may be a
held-out pair. Images are RGB in [0, 1] (tanh outputs rescaled).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data import captions
from genlab.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from genlab.models.adversarial import Adversarial, r1_penalty
from genlab.nn import ConvDiscriminator, ConvGenerator, dcgan_init, frozen, minibatch_std


@dataclass
class Text2ImageConfig:
    latent: int = 100  # noise dims
    width: int = 64  # channels of G's last / D's first convolution (DCGAN)
    words: int = 128  # word embedding dims
    text: int = 256  # sentence embedding dims (the text encoder's output)
    proj: int = 128  # compressed text embedding appended to z / tiled over D's 4x4 map
    beta: float = 0.5  # GAN-INT: t_int = beta * t + (1 - beta) * t_shifted
    interpolation: float = 1.0  # weight of G's GAN-INT term (0: GAN-CLS only)
    slope: float = 0.2  # LeakyReLU slope (D and the text compressions)
    minibatch_std: bool = False  # D also sees its 4x4 map's spread over the batch (see judge)
    ema: float = 0.0  # decay of the generator's moving average used for sampling (0: off)
    lr_d: float | None = None  # D's (and the text encoder's) learning rate (None: the trainer's)
    lr_g: float | None = None  # G's learning rate (None: the trainer's)
    normal_init: bool = False  # DCGAN's N(0, 0.02) weights (genlab.nn.dcgan_init)
    digit_negatives: float = 0.0  # share of wrong texts that are the right one, digit changed
    r1: float = 0.0  # gamma of the R1 penalty on real images with their own text (0: off)
    projection: bool = False  # D's logit also gets <text embedding, pooled image features>
    digit_loss: float = 0.0  # weight of D's 10-way choice of its caption's digit (0: off)


# ---- the text side ------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """ids (B, L) int64, PAD = 0 -> sentence embedding (B, text): word embeddings, two width-3
    1-D convolutions, the mean over the non-pad words."""

    def __init__(self, words: int, text: int, slope: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(captions.VOCAB), words, padding_idx=captions.PAD)
        self.convs = nn.Sequential(
            nn.Conv1d(words, text, 3, padding=1), nn.LeakyReLU(slope),
            nn.Conv1d(text, text, 3, padding=1), nn.LeakyReLU(slope),
        )

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != captions.PAD).unsqueeze(1)  # (B, 1, L)
        h = self.convs(self.embed(ids).transpose(1, 2)) * mask  # (B, text, L)
        return h.sum(2) / mask.sum(2).clamp(min=1)  # (B, text)


def compression(text: int, proj: int, slope: float) -> nn.Module:
    """The paper's text compression: linear + LeakyReLU, (B, text) -> (B, proj)."""
    return nn.Sequential(nn.Linear(text, proj), nn.LeakyReLU(slope))


def shifted(n: int, device: torch.device | None = None) -> Tensor:
    """(n,) indices i -> i + 1 mod n: the batch's "wrong" texts, a permutation without fixed
    points for n >= 2 (for n = 1 there is no other text; the row is its own pair)."""
    return torch.roll(torch.arange(n, device=device), -1)


@functools.cache
def _word_ids() -> tuple[Tensor, Tensor]:
    """(2, 10) ids of the digit words ("zero".."nine") and numerals ("0".."9"), and (V,) the
    stroke colour index of each vocabulary word (-1 for a word that names no stroke colour)."""
    digits = torch.tensor([[captions.WORD_ID[w] for w in captions.DIGIT_WORDS],
                           [captions.WORD_ID[str(d)] for d in range(10)]])
    colour = torch.full((len(captions.VOCAB),), -1, dtype=torch.long)
    for i, name in enumerate(ATTRIBUTES["colour"]):
        for w in captions.COLOUR_SYNONYMS.get(name, [name]):
            colour[captions.WORD_ID[w]] = i
    return digits, colour


def _digit_slots(ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What a caption says of its digit, for ids (B, L): the (2, 10) digit-word table, (B, L)
    the digit's position, (B,) whether one is named, its form (0 word, 1 numeral), the digit,
    and (B, 10) the digits it may become without making a held-out (digit, colour) pair."""
    digits, colour_of = (a.to(ids.device) for a in _word_ids())
    hit = ids[:, :, None, None] == digits  # (B, L, 2, 10)
    where = hit.flatten(2).any(2)  # (B, L): the digit's position
    form_digit = hit.flatten(1).float().argmax(1)  # (B,) index into L * 2 * 10
    colour = colour_of[ids].max(1).values  # (B,) -1 where no stroke colour is named
    allowed = torch.ones(ids.shape[0], 10, dtype=torch.bool, device=ids.device)
    for d, c in captions.HELDOUT:
        allowed[:, d] &= colour != c
    return digits, where, where.any(1), (form_digit // 10) % 2, form_digit % 10, allowed


def change_digit(ids: Tensor, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Hard wrong texts: ids (B, L) with the digit each caption names replaced by another
    digit in the same form ("seven" -> "two", "7" -> "2"), everything else kept.

    The new digit is uniform over the other nine, less those that would make a held-out
    (digit, colour) pair (:data:`genlab.data.captions.HELDOUT`): held-out captions stay
    unseen in training, as negatives too. Returns the edited ids and (B,) bool, False for a
    row that names no digit (left unchanged)."""
    digits, where, named, form, digit, allowed = _digit_slots(ids)
    allowed[torch.arange(ids.shape[0], device=ids.device), digit] = False
    new = torch.multinomial(allowed.float(), 1, generator=g).squeeze(1)  # (B,)
    # A row naming no digit has no True in `where`, so it comes back unchanged.
    return torch.where(where, digits[form, new][:, None], ids), named


def every_digit(ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each caption of ids (B, L) rewritten with each digit 0..9 in the same form: (10, B, L);
    (B, 10) bool, False where that would be a held-out (digit, colour) pair; (B,) the digit
    the caption names; (B,) whether it names one (rows that do not are unchanged)."""
    digits, where, named, form, digit, allowed = _digit_slots(ids)
    versions = torch.stack([torch.where(where, digits[form, d][:, None], ids)
                            for d in range(10)])  # (10, B, L)
    allowed[torch.arange(ids.shape[0], device=ids.device), digit] = True  # the caption itself
    return versions, allowed, digit, named


def interpolate(t: Tensor, beta: float) -> Tensor:
    """GAN-INT embeddings (B, E): beta * t + (1 - beta) * t[shifted]."""
    return beta * t + (1 - beta) * t[shifted(t.shape[0], t.device)]


def matching_d_loss(real_right: Tensor, real_wrong: Tensor, fake_right: Tensor) -> Tensor:
    """GAN-CLS discriminator loss from logits (B,): -log D(x, t) - (log(1 - D(x, t_wrong)) +
    log(1 - D(G(z, t), t))) / 2, with log sigmoid(s) = -softplus(-s)."""
    return (F.softplus(-real_right).mean()
            + (F.softplus(real_wrong).mean() + F.softplus(fake_right).mean()) / 2)


def matching_g_loss(fake_right: Tensor, fake_between: Tensor | None = None,
                    weight: float = 1.0) -> Tensor:
    """G's non-saturating loss -log D(G(z, t), t), plus ``weight`` times the GAN-INT term
    -log D(G(z', t_int), t_int) when logits for interpolated texts are given."""
    loss = F.softplus(-fake_right).mean()
    if fake_between is not None:
        loss = loss + weight * F.softplus(-fake_between).mean()
    return loss


def random_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` training-like captions: digit and each attribute uniform, phrased (template,
    synonyms, what goes unsaid) exactly as the mnist-captions data phrases its images."""
    g = torch.Generator().manual_seed(seed)
    digits = [str(d) for d in range(10)]
    out = []
    for _ in range(n):
        label = int(torch.randint(0, 10, (1,), generator=g))
        attrs = torch.tensor([int(torch.randint(0, len(ATTRIBUTES[k]), (1,), generator=g))
                              for k in ATTRIBUTE_NAMES])
        out.append(captions.caption(label, attrs, g, digits))
    return out


POOL = 1024  # random captions sample(n) draws from without a text


@functools.cache
def _pool() -> Tensor:
    with torch.device("cpu"):  # also when a model is built on the meta device (genlab.load)
        return captions.tokenize(random_captions(POOL))  # (POOL, MAX_WORDS)


# ---- the two networks ---------------------------------------------------------------------------


class _Generator(nn.Module):
    """(z (B, latent), t (B, text)) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, shape: tuple[int, int, int], config: Text2ImageConfig) -> None:
        super().__init__()
        self.compress = compression(config.text, config.proj, config.slope)
        self.net = ConvGenerator(config.latent + config.proj, shape, config.width)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return torch.tanh(self.net(torch.cat([z, self.compress(t)], 1)))


class _Discriminator(nn.Module):
    """(x (B, C, H, W) in [-1, 1], t (B, text)) -> one logit (B,): D's 4x4 image map with the
    compressed text tiled over it, a 1x1 convolution, then one over the whole map."""

    def __init__(self, shape: tuple[int, int, int], config: Text2ImageConfig) -> None:
        super().__init__()
        self.image = ConvDiscriminator(shape, config.width, slope=config.slope)
        self.image.head = nn.Identity()  # the image-only logit is replaced by the joint one
        halvings = sum(isinstance(m, nn.Conv2d) for m in self.image.body)
        self.side = self.image.side >> halvings  # 4 (2 on tiny images)
        chans = self.image.out_dim // self.side**2
        self.compress = compression(config.text, config.proj, config.slope)
        self.spread = config.minibatch_std
        self.joint = nn.Sequential(
            nn.Conv2d(chans + int(self.spread) + config.proj, chans, 1),
            nn.LeakyReLU(config.slope),
            nn.Conv2d(chans, 1, self.side),
        )
        # Miyato & Koyama 2018: an inner product of the text with the image's features
        # tests their match directly, where the joint path must learn a product from sums.
        self.project = nn.Linear(config.text, chans) if config.projection else None
        # digit_loss: a head of its own, apart from the real/fake logit (through `judge` the
        # ten-way choice swamped that logit and G learned nothing; RESULTS.md, text-to-image).
        self.digit_head = nn.Linear(config.text, chans) if config.digit_loss > 0 else None

    def image_map(self, x: Tensor) -> Tensor:
        return self.image.feature_map(x)  # (B, F, 4, 4)

    def judge(self, fmap: Tensor, t: Tensor) -> Tensor:
        """Logits (B,) of image maps (B, F, s, s) paired with texts t (B, text).

        With ``minibatch_std`` the map gets one more channel, its standard deviation over the
        batch (ProGAN's remedy for mode collapse, :func:`genlab.nn.minibatch_std`): a G that
        draws the same digit for every noise and caption gives a batch with a small spread,
        which D can then see. Each call's batch is one kind of image (real, or generated)."""
        if self.spread:
            fmap = minibatch_std(fmap)  # (B, F + 1, s, s)
        c = self.compress(t)[:, :, None, None].expand(-1, -1, *fmap.shape[2:])  # (B, proj, s, s)
        logit = self.joint(torch.cat([fmap, c], 1)).flatten()  # (B,)
        if self.project is not None:
            pooled = fmap[:, :self.project.out_features].sum((2, 3))  # (B, F): no spread channel
            logit = logit + (self.project(t) * pooled).sum(1)
        return logit

    def choose(self, fmap: Tensor, texts: Tensor) -> Tensor:
        """Scores (B, K) of image maps (B, F, s, s) against K texts each (K, B, text): the
        inner product of the digit head's view of each text with the pooled image features."""
        pooled = fmap[:, :self.digit_head.out_features].sum((2, 3))  # (B, F)
        return torch.einsum("kbf,bf->bk", self.digit_head(texts), pooled)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.judge(self.image_map(x), t)


# ---- the model ----------------------------------------------------------------------------------


class Text2Image(Adversarial):
    """GAN-CLS + GAN-INT on RGB images in [0, 1] with captions (batch field ``text``)."""

    name = "text2image"
    paper = "Reed et al. 2016, Generative Adversarial Text to Image Synthesis (arXiv:1605.05396)"
    Config = Text2ImageConfig
    data_kind = "grey"
    needs = ("x", "text")
    conditions = ("text",)
    # D owns the text encoder (trained by the matching-aware loss) and its own compression;
    # G owns its compression and the image generator.
    owners = {"d": ("text_encoder", "discriminator"), "g": ("generator",)}
    presets = {
        # mnist-captions (3x32x32): a small DCGAN (width 32), batch 64, 6,000 steps, about 21
        # minutes on two idle cores. D wins from the first steps without help, so G learns 5x
        # faster (lr_g 1e-3), R1 holds D back, and 90% of D's wrong captions are the right one
        # with its digit changed: FID 33.9 against 56.5 without the last two, colour read
        # 83-86%; the digit is still at chance and a caption gives nearly one image whatever
        # the noise (benchmarks/RESULTS.md, text-to-image).
        "cpu": {
            "data": "mnist-captions",
            "model": {"width": 32, "words": 64, "text": 128, "proj": 64, "lr_g": 1e-3,
                      "r1": 1.0, "digit_negatives": 0.9},
            "train": {"batch_size": 64, "lr": 2e-4, "steps": 6000, "binarize": None},
        },
        # The paper: DCGAN 64x64, z 100, text compressed to 128, Adam lr 2e-4 beta1 0.5,
        # batch 64, 600 epochs; its char-CNN-RNN text encoder is replaced by the word encoder.
        "paper": {
            "data": "mnist-captions",
            "model": {},
            "train": {"batch_size": 64, "lr": 2e-4, "steps": 100000, "binarize": None},
        },
    }

    def __init__(self, shape: tuple[int, int, int], config: Text2ImageConfig | None = None) -> None:
        config = config if config is not None else Text2ImageConfig()
        super().__init__(shape, config)
        if min(config.latent, config.width, config.words, config.text, config.proj) < 1:
            raise ValueError("latent, width, words, text and proj must be at least 1")
        if not config.digit_loss >= 0:
            raise ValueError(f"digit_loss must be 0 (off) or more, got {config.digit_loss}")
        if not 0.0 <= config.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {config.beta}")
        self.text_encoder = TextEncoder(config.words, config.text, config.slope)
        self.generator = _Generator(self.shape, config)
        self.discriminator = _Discriminator(self.shape, config)
        # Token ids (POOL, MAX_WORDS) of the captions `sample` draws from when given no text;
        # a buffer, so it sits on the model's device, but not saved (it is always the same).
        self.register_buffer("pool", _pool().clone(), persistent=False)
        if config.normal_init:
            dcgan_init(self)
        self.keep_average()

    def _noise(self, n: int, device: torch.device) -> Tensor:
        return torch.randn(n, self.config.latent, device=device)  # (n, latent)

    # ---- the training protocol (players "d" and "g", Adam beta1 0.5: Adversarial) ---------
    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x = batch["x"]
        self.check_input(x)
        ids = batch["text"]  # (B, L) token ids
        b = x.shape[0]
        wrong = shifted(b, x.device)
        if player == "d":
            t = self.text_encoder(ids)  # (B, text), trained by this loss
            with torch.no_grad():  # D's step must not build (or backprop into) G's graph
                fake = self.generator(self._noise(b, x.device), t.detach())
            real = x * 2 - 1  # (B, C, H, W)
            real_map = self.discriminator.image_map(real)  # (B, F, 4, 4)
            real_right = self.discriminator.judge(real_map, t)  # (B,)
            t_wrong = t[wrong]  # (B, text)
            if self.config.digit_negatives > 0:  # some rows: own caption, another digit
                edited, named = change_digit(ids)
                use = named & (torch.rand(b, device=x.device) < self.config.digit_negatives)
                t_wrong = torch.where(use[:, None], self.text_encoder(edited), t_wrong)
            real_wrong = self.discriminator.judge(real_map, t_wrong)  # (B,)
            fake_right = self.discriminator(fake, t)  # (B,)
            loss = matching_d_loss(real_right, real_wrong, fake_right)
            logs = {"d_real": float(torch.sigmoid(real_right).detach().mean()),
                    "d_wrong": float(torch.sigmoid(real_wrong).detach().mean()),
                    "d_fake": float(torch.sigmoid(fake_right).detach().mean())}
            loss = loss + self._digit_term(real_map, ids, logs)  # real only, as in AC-GAN
            if self.config.r1 > 0:
                loss = loss + self.config.r1 / 2 * r1_penalty(
                    lambda v: self.discriminator(v, t), real)
            return loss, logs
        if player == "g":
            with torch.no_grad():  # the text encoder is D's: G reads its output as data
                t = self.text_encoder(ids)
            # G's step must not touch D's weights (the text encoder is D's too)
            with frozen(self.discriminator, self.text_encoder):
                fake = self.generator(self._noise(b, x.device), t)  # (B, C, H, W)
                fake_map = self.discriminator.image_map(fake)  # (B, F, 4, 4)
                fake_right = self.discriminator.judge(fake_map, t)  # (B,)
                between = None
                if self.config.interpolation > 0:
                    t_int = interpolate(t, self.config.beta)  # (B, text)
                    between = self.discriminator(
                        self.generator(self._noise(b, x.device), t_int), t_int)
                loss = matching_g_loss(fake_right, between, self.config.interpolation)
                logs = {"d_fake": float(torch.sigmoid(fake_right).detach().mean())}
                loss = loss + self._digit_term(fake_map, ids, logs)  # D should find it in fakes
            return loss, logs
        raise KeyError(f"{self.name} has players {self.players}, not {player!r}")

    def _digit_term(self, fmap: Tensor, ids: Tensor, logs: dict[str, float]) -> Tensor | float:
        """digit_loss times :meth:`digit_choice` (0 when off), its value logged as "digit"
        (nats; ln 10 = 2.30 is a blind guess)."""
        if self.config.digit_loss <= 0:
            return 0.0
        choice = self.digit_choice(fmap, ids)
        logs["digit"] = float(choice.detach())
        return self.config.digit_loss * choice

    def digit_choice(self, fmap: Tensor, ids: Tensor) -> Tensor:
        """Cross-entropy of D's digit head choosing, for each image (maps (B, F, s, s)), its
        caption ids (B, L) among the ten versions of it with each digit (:func:`every_digit`;
        held-out pairs left out, rows naming no digit skipped): D learns it on real images,
        and G is asked to draw images in which D finds the caption's digit (AC-GAN's auxiliary
        classifier, with the classes read from the caption)."""
        if self.discriminator.digit_head is None:
            raise ValueError("digit_choice needs the digit head: build the model with "
                             "digit_loss > 0")
        versions, allowed, digit, named = every_digit(ids)
        if not bool(named.any()):
            return fmap.sum() * 0.0
        texts = self.text_encoder(versions.flatten(0, 1)).unflatten(0, versions.shape[:2])
        scores = self.discriminator.choose(fmap, texts).masked_fill(~allowed, float("-inf"))
        return F.cross_entropy(scores[named], digit[named])  # over (B, 10)

    # ---- sampling -----------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> Tensor:
        """Sentence embeddings (n, text) of raw strings, tokenized as training was."""
        return self.text_encoder(captions.tokenize(list(texts)).to(self.device))

    @torch.no_grad()
    def sample(self, n: int, cond: dict[str, Any] | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] for ``cond["text"]`` (a list of n strings), or
        for ``n`` random training-like captions when no text is given."""
        texts = (cond or {}).get("text")
        if texts is None:  # random training-like captions, from the fixed pool
            ids = self.pool[torch.randint(0, len(self.pool), (n,), device=self.device)]
            return (self.sampler(self._noise(n, self.device), self.text_encoder(ids)) + 1) / 2
        if isinstance(texts, str):
            texts = [texts] * n
        if len(texts) != n:
            raise ValueError(f"cond['text'] must hold {n} strings (one per image), "
                             f"got {len(texts)}")
        t = self.embed(texts)  # (n, text)
        return (self.sampler(self._noise(n, self.device), t) + 1) / 2

    # ---- capabilities -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """D's 4x4 image map flattened (B, F): features learned by matching images to text."""
        self.check_input(x)
        return self.discriminator.image_map(x * 2 - 1).flatten(1)

    # ---- pictures -----------------------------------------------------------------------------
    def pictures(self, folder: Path, data: Any) -> list[Path]:
        """``captions.png``: 8 samples for each of :data:`PICTURE_CAPTIONS` (half of them
        held-out (digit, colour) pairs), one labelled row per caption."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from genlab.images import grid

        k = 8
        texts = [t for t in PICTURE_CAPTIONS for _ in range(k)]
        x = self.sample(len(texts), cond={"text": texts}).float().cpu()  # (10 k, C, H, W)
        fig, axes = plt.subplots(len(PICTURE_CAPTIONS), 1, figsize=(9, 1.1 * len(texts) / k))
        for i, (ax, text) in enumerate(zip(axes, PICTURE_CAPTIONS, strict=True)):
            ax.imshow(grid(x[i * k:(i + 1) * k], nrow=k), interpolation="nearest")
            ax.set_axis_off()
            ax.text(-4, x.shape[-2] / 2, f"{text}\n({_tag(text)})", ha="right", va="center",
                    fontsize=9)
        fig.subplots_adjust(left=0.3, right=0.99, top=0.99, bottom=0.01, hspace=0.15)
        path = Path(folder) / "captions.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]


def _heldout_caption(digit: int) -> str:
    colour = ATTRIBUTES["colour"][dict(captions.HELDOUT)[digit]]
    return f"a {colour} {captions.DIGIT_WORDS[digit]}"


# Ten fixed captions: five combinations seen in training, five held out (captions.HELDOUT).
PICTURE_CAPTIONS: list[str] = [
    "a red seven", "a thick blue two", "a thin green zero on white", "a large yellow four",
    "a white one tilted left",
    *(_heldout_caption(d) for d in (0, 3, 5, 8, 9)),
]


def _tag(text: str) -> str:
    words = captions.words(text)
    digit = next(d for d, w in enumerate(captions.DIGIT_WORDS) if w in words)
    colour = next(i for i, c in enumerate(ATTRIBUTES["colour"]) if c in words)
    return "held out" if (digit, colour) in captions.HELDOUT else "seen"


# ---- measures: does a sample show what its caption says? ----------------------------------------


def caption_accuracy(predicted: dict[str, Tensor], wanted: dict[str, Tensor],
                     heldout: Tensor) -> dict[str, float]:
    """Accuracies of a classifier's ``predicted`` heads (each (N,) int64: "digit", "colour",
    "thickness", ...) against the ``wanted`` values of the captions the N samples were drawn
    for (same keys; -1 where the caption does not say), split by ``heldout`` (N,) bool:
    ``{"heldout_digit": ..., "seen_digit": ..., "heldout_colour": ...}`` over the rows whose
    caption names that attribute (NaN where no row does)."""
    out = {}
    for key, want in wanted.items():
        hit = (predicted[key] == want).float()
        said = want >= 0
        for split, rows in (("heldout", heldout), ("seen", ~heldout)):
            rows = rows & said
            out[f"{split}_{key}"] = float(hit[rows].mean()) if bool(rows.any()) else float("nan")
    return out


def caption_targets(data: Any) -> dict[str, Tensor]:
    """What each caption of a mnist-captions Dataset says: digit, colour, and thickness (-1
    where the caption leaves the thickness unsaid, i.e. normal and not mentioned)."""
    thickness = data.attrs[:, ATTRIBUTE_NAMES.index("thickness")].clone()
    named = torch.tensor([any(w in captions.words(c) for w in _THICKNESS_WORDS)
                          for c in data.caption])
    thickness[~named] = -1
    return {"digit": data.y.clone(), "colour": data.attrs[:, ATTRIBUTE_NAMES.index("colour")],
            "thickness": thickness}


_THICKNESS_WORDS = {w for ps in captions.PHRASES["thickness"].values() for p in ps
                    for w in p.split()}
