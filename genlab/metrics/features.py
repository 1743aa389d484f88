"""genlab's own feature networks: small classifiers whose penultimate layer FID and its relatives
use in place of Inception (whose weights cannot be downloaded behind many firewalls, and which
were never trained on 28x28 digits anyway).

genlab ships two, trained with ``genlab features train`` (through :func:`genlab.fit`, so each is
just another run) and exported as safetensors + JSON into ``genlab/metrics/weights/``:

    load_feature_net("mnist")            # genlab-mnist-classifier
    load_feature_net("fashion-mnist")    # genlab-fashion-mnist-classifier
    load_feature_net("runs/features")    # any run folder `genlab features train` wrote
    feature_net_for("mnist")             # the shipped net for a data source, or one clear error

Any labelled image folder gets its own the same way. Reports name the network
(``net.description``: "genlab-mnist-classifier, 128-d penultimate layer"), never "Inception".

Training: grey images are kept grey (no binarization), but generated samples of binary models
are {0, 1}, so in training mode ``loss`` augments each batch: every image is shifted by up to
``max_shift`` pixels (edge pixels repeated), and a ``binarize_fraction`` of the images of every
batch is replaced by one Bernoulli(grey) draw. Per image rather than per batch, so BatchNorm's
running statistics see the mix the network will be scored on, not one kind or the other.
The schedule is cosine over the budget; there is no early stopping (fit's validation is NLL,
which a classifier has not): the validation and test accuracies are measured at the end and
recorded in the run's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.base import (
    MAX_SUBPIXELS,
    RunError,
    Trainable,
    atomic_write,
    read_config,
    read_safetensors_header,
)

# The shipped networks: data source name -> file stem in WEIGHTS_DIR.
WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {"mnist": "genlab-mnist-classifier", "fashion-mnist": "genlab-fashion-mnist-classifier",
           # The 3x32x32 conditional sources share one: it reads digits in every rendering.
           **dict.fromkeys(("digits32", "mnist-attrs", "mnist-captions", "mnist-patches",
                            "mnist:mnist-colour", "mnist:typeset"), "genlab-digits32-classifier")}
# Bounds on a config from a stranger, checked before anything is allocated.
MAX_WIDTH = 4096


def _train_hint(source: str) -> str:
    return f"`genlab features train --data {source} --out runs/features-{slug(source)}`"


def slug(source: str) -> str:
    """'mnist' -> 'mnist'; '/data/My Flowers/' -> 'my-flowers' (for names and folders)."""
    stem = Path(str(source).rstrip("/")).name or str(source)
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "data"


@dataclass
class FeatureConfig:
    """What builds a :class:`FeatureNet` (stored in config.json / the shipped JSON)."""

    shape: tuple[int, int, int]  # (C, H, W) of the images
    classes: list[str]  # class names; logits come in this order
    name: str = "genlab-classifier"
    channels: tuple[int, int] = (32, 64)  # widths of the two convolutional stages
    dim: int = 128  # penultimate (feature) width
    dropout: float = 0.3
    max_shift: int = 2  # augmentation: random shifts of up to this many pixels
    binarize_fraction: float = 0.3  # augmentation: share of images replaced by Bernoulli(grey)
    # Extra heads, one softmax per attribute (name -> its values), trained on a batch field
    # "attrs" (N, len(attributes)) of value indices, -100 where unknown (genlab.data.digits32).
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.channels = tuple(int(c) for c in self.channels)  # type: ignore[assignment]
        self.classes = [str(c) for c in self.classes]
        if len(self.shape) != 3 or min(self.shape) < 1 or math.prod(self.shape) > MAX_SUBPIXELS:
            raise ValueError(f"shape must be (C, H, W) of at most {MAX_SUBPIXELS:,} sub-pixels, "
                             f"got {self.shape}")
        if len(self.channels) != 2 or not all(1 <= c <= MAX_WIDTH for c in self.channels):
            raise ValueError(f"channels must be two widths in 1..{MAX_WIDTH}, got {self.channels}")
        if not 1 <= self.dim <= MAX_WIDTH:
            raise ValueError(f"dim must be in 1..{MAX_WIDTH}, got {self.dim}")
        if not 2 <= len(self.classes) <= 100_000:
            raise ValueError(f"a classifier needs 2 or more classes, got {len(self.classes)}")
        self.attributes = {str(k): [str(v) for v in values]
                           for k, values in dict(self.attributes).items()}
        if not all(2 <= len(v) <= 1000 for v in self.attributes.values()):
            raise ValueError("every attribute needs 2 to 1000 values")
        if not (0 <= self.dropout < 1 and 0 <= self.binarize_fraction <= 1 and self.max_shift >= 0):
            raise ValueError("dropout must be in [0, 1), binarize_fraction in [0, 1] and "
                             "max_shift >= 0")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> FeatureConfig:
        """From JSON, with one error line naming ``where`` for anything malformed."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or not {"shape", "classes"} <= set(d) or set(d) - names:
            raise RunError(f"{where} does not describe a genlab feature network")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise RunError(f"{where} describes no feature network genlab can build: {e}") from None


# What `genlab features train --set KEY=VALUE` may change (shape, classes and name come from
# the data).
SETTINGS = {f.name for f in dataclasses.fields(FeatureConfig)} - {"shape", "classes", "name"}


class FeatureNet(Trainable):
    """A small CNN classifier whose penultimate layer is a feature space for sample metrics.

    3x3 conv-BN-ReLU blocks: ``channels[0]`` wide, 2x2 max pooling, ``channels[1]`` wide, 2x2
    max pooling, ``channels[1]`` wide again; average pooling to 7x7 whatever the image size (a
    28x28 image keeps its 7x7 map, a bigger one is summarised); dropout; a ``dim``-wide
    linear-BN-ReLU layer (the features); dropout; the class logits. Images are (B, C, H, W) in
    [0, 1] (uint8 in [0, 255] is also taken, as torchmetrics passes it).

    It follows the part of genlab's training protocol :func:`genlab.fit` uses (one player,
    ``loss(batch, player)`` with ``batch["x"]``, ``batch["y"]``), but it is no generative model:
    it is not in ``genlab.MODELS``. ``forward`` gives the features, so the network can be handed
    to torchmetrics as ``feature=`` (``num_features`` tells it the width).
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        # What the loaded file records (test accuracy, how it was trained); {} when fresh.
        self.recorded: dict[str, Any] = {}
        c, _, _ = config.shape
        a, b = config.channels

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        # ceil_mode: images as small as 3x3 still leave a 1x1 map after two poolings.
        self.body = nn.Sequential(
            *block(c, a), nn.MaxPool2d(2, ceil_mode=True),  # (B, a, H/2, W/2)
            *block(a, b), nn.MaxPool2d(2, ceil_mode=True),  # (B, b, H/4, W/4)
            *block(b, b),  # at a quarter of the resolution: half the cost of it at half
            nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Dropout(config.dropout),  # (B, 49b)
            nn.Linear(49 * b, config.dim, bias=False), nn.BatchNorm1d(config.dim),
            nn.ReLU(inplace=True),  # (B, dim): the features
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout),
                                  nn.Linear(config.dim, len(config.classes)))
        # Empty for the class-only networks, whose files therefore stay as they were.
        self.attribute_heads = nn.ModuleDict({
            name: nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.dim, len(values)))
            for name, values in config.attributes.items()})

    # ---- what metrics use -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dim(self) -> int:
        return self.config.dim

    num_features = dim  # the attribute torchmetrics' FID/KID read for a custom feature module

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.config.shape

    @property
    def description(self) -> str:
        """How reports name this feature space: 'genlab-mnist-classifier, 128-d penultimate
        layer'."""
        return f"{self.name}, {self.dim}-d penultimate layer"

    def _checked(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():  # uint8 in [0, 255], as torchmetrics' update passes it
            x = x.float() / 255
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            got = "x".join(map(str, x.shape[1:] if x.dim() == 4 else x.shape))
            raise ValueError(f"{self.name} takes images of shape {'x'.join(map(str, self.shape))}"
                             f", got {got}")
        return x.to(self.device)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, dim) penultimate activations."""
        # Like genlab's models: no autograd graph in eval mode unless x itself requires grad.
        with torch.set_grad_enabled(torch.is_grad_enabled() and (self.training or x.requires_grad)):
            return self.body(self._checked(x))

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, K) class logits, in the order of ``classes``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and (self.training or x.requires_grad)):
            return self.head(self.body(self._checked(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) images -> {"class": (B,) predicted class indices, and for each
        attribute head its (B,) predicted value indices}."""
        h = self.body(self._checked(x))  # (B, dim)
        out = {"class": self.head(h).argmax(1)}
        out.update({name: head(h).argmax(1) for name, head in self.attribute_heads.items()})
        return out

    # ---- the training protocol: Trainable's one-player defaults, and a loss -------------------
    @classmethod
    def has(cls, capability: str) -> bool:
        """No generative capability (sample, log_prob, encode): fit validates nothing."""
        return False

    def augment(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W): random shifts, and a share of Bernoulli(grey) images.

        Draws from torch's global generator, which fit checkpoints: resume stays exact.
        """
        n, _, h, w = x.shape
        s = self.config.max_shift
        if s > 0:
            shift = torch.randint(-s, s + 1, (n, 2), device=x.device).float()  # (B, 2) pixels
            theta = torch.zeros(n, 2, 3, device=x.device)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, 0, 2] = 2 * shift[:, 0] / w  # grid units span 2 over the image
            theta[:, 1, 2] = 2 * shift[:, 1] / h
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
        pick = torch.rand(n, device=x.device) < self.config.binarize_fraction  # (B,)
        return torch.where(pick[:, None, None, None], torch.bernoulli(x), x)

    def loss(self, batch: dict[str, Tensor], player: str) -> tuple[Tensor, dict[str, float]]:
        x, y = batch["x"], batch["y"]
        if self.training:
            x = self.augment(x)
        h = self.features(x)  # (B, dim)
        logits = self.head(h)  # (B, K)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        logs = {"train_acc": float(acc)}
        if self.attribute_heads:
            attrs = batch["attrs"]  # (B, A), -100 where an image has no such label
            for j, head in enumerate(self.attribute_heads.values()):
                known = attrs[:, j] != -100
                # The sum over the known rows by their number: a batch with none adds 0, not
                # the NaN of cross_entropy's mean over nothing.
                ce = F.cross_entropy(head(h), attrs[:, j], ignore_index=-100, reduction="sum")
                loss = loss + ce / max(int(known.sum()), 1)
        return loss, logs

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (under "feature_net" the config; ``extra`` merged in) and
        ``model.safetensors`` into folder ``path``, atomically."""
        from safetensors.torch import save_file

        from genlab import __version__

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config = read_config(folder) if (folder / "config.json").exists() else {}
        config.update({"kind": "feature network", "feature_net": dataclasses.asdict(self.config),
                       "genlab_version": __version__, "torch_version": torch.__version__,
                       **(extra or {})})
        state = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in self.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
        atomic_write(folder / "config.json",
                     lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True)))
        return folder


# ---- loading -------------------------------------------------------------------------------------


def _read(config_path: Path, weights: Path, device: str | torch.device) -> FeatureNet:
    """A FeatureNet from its JSON and safetensors, the header checked against the config before
    the network is allocated (a stranger's file cannot make genlab allocate what it claims)."""
    from safetensors.torch import load_file

    from genlab.devices import resolve_device

    target = resolve_device(device)
    try:
        stored = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {config_path}: {e}") from None
    config = FeatureConfig.from_dict(stored.get("feature_net") if isinstance(stored, dict)
                                     else None, str(config_path))
    header, data_start, size = read_safetensors_header(weights)
    with torch.device("meta"):
        expected = FeatureNet(config).state_dict()
    implied = data_start + sum(t.numel() * t.element_size() for t in expected.values())
    shapes = {k: list(t.shape) for k, t in expected.items()}
    if {k: v["shape"] for k, v in header.items()} != shapes or size != implied:
        raise RunError(f"{weights} does not match {config_path.name}: rebuild or re-export it")
    state = load_file(str(weights))
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise RunError(f"{weights} holds non-finite weights: the training diverged")
    net = FeatureNet(config)
    net.load_state_dict(state)
    net.recorded = stored
    return net.to(target).eval()


def load_feature_net(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> FeatureNet:
    """A shipped feature network ("mnist", "fashion-mnist"), one in a run folder that
    ``genlab features train`` wrote, or an exported ``NAME.safetensors`` (with its
    ``NAME.json`` beside it); in eval mode (features come without autograd graphs).
    ``net.recorded`` holds its JSON (test accuracy, training command and time)."""
    key = str(name_or_path)
    if key in SHIPPED:
        stem = WEIGHTS_DIR / SHIPPED[key]
        weights, config = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        if not weights.exists() or not config.exists():
            raise RunError(f"this genlab install lacks the shipped {SHIPPED[key]} weights "
                           f"({weights.name}): reinstall genlab or train one with "
                           f"{_train_hint(key)}")
        return _read(config, weights, device)
    folder = Path(name_or_path)
    if folder.suffix == ".safetensors" and folder.is_file():  # what `features export` wrote
        return _read(folder.with_suffix(".json"), folder, device)
    if not folder.is_dir():
        raise RunError(f"no feature network {key!r}: use {' or '.join(SHIPPED)} (shipped) or a "
                       f"run folder trained with {_train_hint('DATA')}")
    if not (folder / "config.json").exists():
        raise RunError(f"{folder} is not a feature network run (no config.json): train one "
                       f"with {_train_hint('DATA')}")
    return _read(folder / "config.json", folder / "model.safetensors", device)


def feature_net_for(source: str, device: str | torch.device = "cpu") -> FeatureNet:
    """The shipped feature network for data source ``source`` ("mnist", "fashion-mnist"), or
    one line saying how to train one for the others."""
    if str(source) not in SHIPPED:
        raise RunError(f"genlab ships no feature network for {source!r} (only for "
                       f"{', '.join(SHIPPED)}): train one with {_train_hint(str(source))} and "
                       "pass that run folder")
    return load_feature_net(str(source), device)


# ---- training ------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(net: FeatureNet, data: Any, batch_size: int = 500) -> float:
    """Share of ``data``'s images (a Dataset with labels ``y``) that ``net`` classifies right."""
    was_training = net.training
    net.eval()
    right = 0
    for i in range(0, len(data), batch_size):
        logits = net.logits(data.x[i:i + batch_size])  # (b, K)
        right += int((logits.argmax(1).cpu() == data.y[i:i + batch_size]).sum())
    net.train(was_training)
    return right / len(data)


@torch.no_grad()
def attribute_accuracy(net: FeatureNet, data: Any, batch_size: int = 500) -> dict[str, float]:
    """Share of ``data``'s images (those with the label) whose attribute the net predicts."""
    right = dict.fromkeys(net.attribute_heads, 0)
    total = dict.fromkeys(net.attribute_heads, 0)
    attrs = data.fields["attrs"]
    for i in range(0, len(data), batch_size):
        pred = net.predict(data.x[i : i + batch_size])
        for j, name in enumerate(net.attribute_heads):
            want = attrs[i : i + batch_size, j].to(pred[name].device)
            known = want != -100
            right[name] += int((pred[name] == want)[known].sum())
            total[name] += int(known.sum())
    return {k: round(right[k] / max(total[k], 1), 5) for k in right}


@dataclass
class TrainResult:
    net: FeatureNet
    steps: int
    seconds: float
    val_accuracy: float
    test_accuracy: float
    record: dict[str, Any] = field(default_factory=dict)


def _labelled(source: str, split: str, limit: int | None, seed: int) -> Any:
    from genlab.data import load

    # Grey values kept (binarize=None): the augmentation adds the binary draws.
    data = load(source, split, binarize=None, seed=seed, limit=limit)
    if data.y is None:
        raise RunError(f"{data.name} has no labels, and a feature network is a classifier: use a "
                       "folder with one sub-folder per class, or a .npz/IDX source with labels")
    return data


def train_feature_net(
    source: str,
    out: str | os.PathLike,
    *,
    time_budget: str | float | None = "4m",
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    threads: int | None = None,
    command: str | None = None,
    **settings: Any,
) -> TrainResult:
    """Train a feature network on the labelled data ``source`` through :func:`genlab.fit` into
    run folder ``out``; measure its validation and test accuracy (grey images, no augmentation)
    and record them, with the time and ``command``, in ``out/config.json``.

    ``settings``: fields of :class:`FeatureConfig` (channels, dim, dropout, max_shift,
    binarize_fraction); the name defaults to "genlab-<source>-classifier".
    """
    import time

    from genlab.train import fit

    train, val, test = (_labelled(source, s, limit, seed) for s in ("train", "val", "test"))
    if "attrs" in train.fields:  # rendered attributes: a head for each (genlab.data.digits32)
        from genlab.data.attributes import ATTRIBUTES

        settings.setdefault("attributes", {k: list(v) for k, v in ATTRIBUTES.items()})
        settings.setdefault("binarize_fraction", 0.0)  # colour images: no Bernoulli draws
    k = int(max(int(train.y.max()), int(val.y.max()), int(test.y.max()))) + 1
    classes = list(train.classes) if train.classes else [str(i) for i in range(k)]
    settings.setdefault("name", f"genlab-{slug(source)}-classifier")
    torch.manual_seed(seed)  # the same seed gives the same initial weights
    net = FeatureNet(FeatureConfig(shape=train.shape, classes=classes, **settings))
    start = time.perf_counter()
    history = fit(net, train, steps=steps, time_budget=time_budget, batch_size=batch_size, lr=lr,
                  schedule="cosine", seed=seed, sample_every=0, out=out, progress=progress,
                  device=device, threads=threads,
                  run_config={"data": train.origin, "command": command})  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    val_acc, test_acc = accuracy(net, val), accuracy(net, test)
    record = {"val_accuracy": round(val_acc, 5), "test_accuracy": round(test_acc, 5),
              **({"test_attribute_accuracy": attribute_accuracy(net, test)}
                 if net.attribute_heads else {}),
              "test_images": len(test), "train_steps": history.step,
              "train_seconds": round(history.elapsed, 1),
              "data": {"source": train.origin["source"] if train.origin else source,
                       "split_for_accuracy": "test", "binarize": None}}
    net.save(out, extra=record)
    return TrainResult(net.eval(), history.step, seconds, val_acc, test_acc, record)


def export(run: str | os.PathLike, to: str | os.PathLike = WEIGHTS_DIR) -> tuple[Path, Path]:
    """Copy the feature network of ``run`` into ``to`` (by default the package's weights folder,
    for shipping) as ``<name>.safetensors`` + ``<name>.json``; returns the two paths."""
    from safetensors.torch import save_file

    net = load_feature_net(run)
    stored = net.recorded
    keep = ("feature_net", "kind", "genlab_version", "torch_version", "val_accuracy",
            "test_accuracy", "test_attribute_accuracy", "test_images", "train_steps",
            "train_seconds", "data")
    meta = {k: stored[k] for k in keep if k in stored}
    meta["trained_with"] = stored.get("train", {}).get("command")
    meta["fit"] = stored.get("train", {}).get("fit")
    folder = Path(to)
    folder.mkdir(parents=True, exist_ok=True)
    weights, config = folder / f"{net.name}.safetensors", folder / f"{net.name}.json"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state, str(p)))
    atomic_write(config, lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
    return weights, config


__all__ = ["SHIPPED", "WEIGHTS_DIR", "FeatureConfig", "FeatureNet", "TrainResult", "accuracy",
           "attribute_accuracy",
           "export", "feature_net_for", "load_feature_net", "train_feature_net"]
