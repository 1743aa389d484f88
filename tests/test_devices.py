"""Devices: resolving names, refusing missing GPUs in one line, no model tensor left behind on
the CPU, and the bfloat16 training loss. All on a CPU-only machine."""

from __future__ import annotations

import inspect
import traceback
import weakref
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_batch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import genlab
from genlab.data import synthetic
from genlab.devices import DeviceError, check_precision, resolve_device
from genlab.models.autoregressive import PixelAutoregressive

NAMES = list(genlab.MODELS)
GENLAB = str(Path(genlab.__file__).parent)
OPTIM = str(Path(torch.optim.__file__).parent)
aten = torch.ops.aten

# Beyond each tiny config: the K-level, colour and class-conditional code paths.
VARIANTS: list[tuple[str, tuple[int, int, int], dict]] = [
    *[(name, (1, 4, 4), {}) for name in NAMES],
    *[(name, (3, 2, 2), {"levels": 4}) for name in NAMES
      if "levels" in genlab.MODELS[name].Config.__dataclass_fields__],
    ("made", (1, 2, 2), {"levels": 256}),
    ("gated_pixelcnn", (1, 4, 4), {"classes": 3}),
    ("nade", (1, 4, 4), {"ordering": "random"}),
    ("made", (1, 4, 4), {"order_agnostic": True}),
    ("dcgan", (3, 16, 16), {}),  # batch norm in both nets (none at 4x4)
    ("aae", (1, 4, 4), {"prior": "labelled_mog", "components": 3}),
    ("aae", (1, 4, 4), {"clusters": 3}),
    ("infogan", (3, 8, 12), {"arch": "paper"}),  # fully connected layers with batch norm
]


def build(name: str, shape: tuple[int, int, int], extra: dict) -> genlab.models.GenerativeModel:
    torch.manual_seed(0)
    return genlab.create(name, shape=shape, **{**TINY[name], **extra})


def batch_for(model: genlab.models.GenerativeModel, n: int) -> dict:
    """tiny_batch, on the model's grid of levels when it has K of them, labels < classes."""
    batch = tiny_batch(model, n=n)
    levels = getattr(model, "levels", 2)
    if levels > 2:
        batch["x"] = torch.round(batch["x"] * (levels - 1)) / (levels - 1)
    batch["y"] = batch["y"] % max(int(getattr(model.config, "classes", 0)), 1)
    return batch


def variant_id(v: tuple) -> str:
    name, shape, extra = v
    return "-".join([name, "x".join(map(str, shape)), *(f"{k}={x}" for k, x in extra.items())])


# ---- resolve_device --------------------------------------------------------------------------


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want
    for bad in ("tpu", "gpu", "cuda:x", "meta"):
        with pytest.raises(DeviceError, match="unknown device"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:3"])
def test_asking_for_a_missing_gpu_is_one_line(spec):
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    msg = str(e.value)
    assert msg.startswith(f"CUDA was asked for (--device {spec}) but torch sees no GPU")
    assert msg.endswith("use --device cpu") and "\n" not in msg


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_asking_for_missing_mps_is_one_line():
    with pytest.raises(DeviceError, match=r"MPS was asked for .* use --device cpu$"):
        resolve_device("mps")


def test_cuda_index_follows_local_rank_and_is_checked(monkeypatch):
    # Pretend there are two GPUs: only the index logic runs, no CUDA call is made.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun each rank takes its own GPU
    assert resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"cuda:3 was asked for but torch sees 2 GPUs "
                                          r"\(cuda:0 \.\. cuda:1\); use --device cuda:0"):
        resolve_device("cuda:3")


def test_precision_bf16_is_cuda_only():
    check_precision("fp32", torch.device("cpu"))
    with pytest.raises(DeviceError, match="bf16 mixed precision is CUDA-only"):
        check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("fp16", torch.device("cpu"))
    data = synthetic("bars", n=16, shape=(1, 4, 4))
    with pytest.raises(DeviceError, match="CUDA-only"):
        genlab.fit(build("independent", (1, 4, 4), {}), data, steps=1, batch_size=4,
                   device="cpu", precision="bf16", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_fit_and_load_refuse_a_missing_gpu_before_any_work(tmp_path):
    data = synthetic("bars", n=16, shape=(1, 4, 4))
    model = build("independent", (1, 4, 4), {})
    with pytest.raises(DeviceError, match="CUDA was asked for"):
        genlab.fit(model, data, steps=1, batch_size=4, device="cuda", progress=False,
                   out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    genlab.fit(model, data, steps=1, batch_size=4, device="cpu", progress=False,
               out=tmp_path / "run")
    with pytest.raises(DeviceError, match="CUDA was asked for"):
        genlab.load(tmp_path / "run", device="cuda")
    assert genlab.load(tmp_path / "run").device == torch.device("cpu")  # the default


def test_images_on_another_device_are_one_clear_error():
    model = build("nade", (1, 4, 4), {}).to("meta")
    with pytest.raises(ValueError, match=r"nade is on meta but the images are on cpu: "
                                         r"pass x.to\(model.device\)"):
        model.log_prob(torch.zeros(2, 1, 4, 4))


# ---- no tensor off the model's device ----------------------------------------------------------


class _OnMeta:
    """Run model code on the ``meta`` device and record every tensor made anywhere else.

    Meta tensors have shapes and dtypes but no data, so every operation runs (and checks its
    operands' devices) without a GPU. A factory call that forgets ``device=`` (``torch.rand(n)``
    instead of ``torch.rand(n, device=self.device)``), a ``torch.tensor(...)`` or a ``.cpu()``
    produces a CPU tensor: the dispatch mode sees every operation's outputs and records those
    with the genlab line that made them. On a GPU the same line would put a tensor on the
    wrong device. Python-side reads of values (``bool``, ``int``, ``.tolist()``), which meta
    tensors cannot answer, get stand-ins: 0, True for flags, and for ``any``/``all`` the answer
    that lets input checks pass (they are tested on real data elsewhere); ``bincount``, sized by
    the values, gives its ``minlength`` zeros. Code compiled by TorchScript is invisible to
    the modes, but a CPU tensor it made would still meet a meta one and fail. Not covered:
    completion (``cond``), whose boolean indexing meta cannot run.
    """

    def __init__(self) -> None:
        self.strays: list[str] = []
        # id -> (weak reference, answer) for the results of any/all (tensors compare
        # elementwise, so they cannot be dictionary keys themselves).
        self.verdicts: dict[int, tuple[weakref.ref, bool]] = {}

    def __enter__(self) -> _OnMeta:
        # There are no meta random generators: one asked for on meta is a stand-in whose
        # manual_seed gives None, i.e. no generator (a CPU one would still fail on meta).
        torch.Generator = _GeneratorOrStandIn
        self._modes = [_Values(), _Watch(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        torch.Generator = _REAL_GENERATOR


_REAL_GENERATOR = torch.Generator


class _GeneratorOrStandIn(_REAL_GENERATOR):
    """torch.Generator while the watch runs (still a type: torch's own annotations use it)."""

    def __new__(cls, device: str | torch.device = "cpu") -> object:
        if torch.device(device).type == "meta":
            return _NoGenerator()
        return _REAL_GENERATOR(device)


class _NoGenerator:
    def manual_seed(self, seed: int) -> None:
        return None  # the random functions then draw without a generator


def _zeros(shape: tuple[int, ...]) -> object:
    return [_zeros(shape[1:]) for _ in range(shape[0])] if shape else 0


def _genlab_line() -> str | None:
    """The genlab line that is making a tensor; None inside torch.optim, whose step counters
    live on the CPU by design."""
    stack = traceback.extract_stack()
    if any(OPTIM in f.filename for f in stack):
        return None
    frames = [f for f in stack if f.filename.startswith(GENLAB)]
    if not frames:
        return "(outside genlab)"
    return f"{Path(frames[-1].filename).relative_to(GENLAB)}:{frames[-1].lineno}"


class _Values(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist and args[0].is_meta:
            return _zeros(tuple(args[0].shape))  # built without torch: nothing to record
        return func(*args, **kwargs)


class _Watch(TorchDispatchMode):
    def __init__(self, owner: _OnMeta) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is aten._local_scalar_dense.default and args[0].is_meta:
            ref, answer = self.owner.verdicts.get(id(args[0]), (None, False))
            if ref is not None and ref() is args[0]:
                return answer
            return args[0].dtype == torch.bool or 0  # flags True (e.g. "the loss is finite")
        if func is aten.bincount.default and args[0].is_meta:  # sized by the values otherwise
            minlength = (kwargs or {}).get("minlength", args[2] if len(args) > 2 else 0)
            return torch.zeros(minlength, dtype=torch.long, device="meta")
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (aten.any, aten.all):
            self.owner.verdicts[id(out)] = (weakref.ref(out), func.overloadpacket is aten.all)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta and (line := _genlab_line()):
                self.owner.strays.append(f"{line} {func} made a {t.device} tensor")
        return out


def _exercise(model: genlab.models.GenerativeModel, batch: dict) -> list[torch.Tensor]:
    """Every capability once: each player's loss and backward, sample, log_prob, encode, and
    the baselines' closed-form fit."""
    outs = []
    if callable(getattr(model, "estimate", None)):  # (elsewhere a string naming the method)
        model.estimate(batch["x"])
    model.train()
    for player in model.players:
        loss, _ = model.loss(batch, player)
        loss.backward()
    model.eval()
    if model.has("sample"):
        outs.append(model.sample(3))
    if model.has("translate"):
        cond = {"attrs": batch["attrs"]} if "attrs" in batch else {"to": "b"}  # on its device
        outs.append(model.translate(batch["x"], cond))
    if isinstance(model, PixelAutoregressive):
        outs.append(model.reference_sample(2))
    if model.has("log_prob"):
        # A few importance samples, not the VAE's 5000: the modes make each operation slow.
        k = {"k": 2} if "k" in inspect.signature(model.log_prob).parameters else {}
        outs.append(model.log_prob(batch["x"], **k))
        model.train()  # e.g. RNADE draws fresh noise in training mode, from a fixed seed in eval
        outs.append(model.log_prob(batch["x"], **k))
    if model.has("encode"):
        outs.append(model.encode(batch["x"]))
    return outs


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_no_tensor_is_made_off_the_models_device(variant):
    model = build(*variant)
    batch = {k: v.to("meta") for k, v in batch_for(model, 4).items()}
    model.to("meta")
    with _OnMeta() as watch:
        outs = _exercise(model, batch)
    assert not watch.strays, "\n".join(dict.fromkeys(watch.strays))
    assert all(t.is_meta for t in outs)
    assert all(p.grad is None or p.grad.is_meta for p in model.parameters())


def test_the_watch_catches_a_missing_device():
    """The check above can fail: a factory call without ``device=`` is reported."""
    model = build("vae", (1, 4, 4), {}).to("meta")
    with _OnMeta() as watch:
        torch.randn(3, model.config.latent)  # what VAE.sample would do without device=
        model.sample(2)
    assert len(watch.strays) == 1 and "randn" in watch.strays[0]


def test_fit_moves_every_batch_to_the_models_device(monkeypatch):
    """The loop on a fake device: a CPU batch meeting meta weights would raise."""
    import genlab.train

    monkeypatch.setattr(genlab.train, "resolve_device", lambda spec: torch.device("meta"))
    model = build("vae", (1, 4, 4), {})
    data = synthetic("bars", n=16, shape=(1, 4, 4))
    with _OnMeta() as watch:
        genlab.fit(model, data, val_data=data, steps=2, batch_size=4, val_every=1,
                   progress=False, device="meta")
    assert model.device.type == "meta"
    strays = [s for s in watch.strays if not s.startswith("data")]  # batches start on CPU
    assert not strays, "\n".join(dict.fromkeys(strays))


# ---- bfloat16 autocast (CPU autocast stands in for CUDA's) --------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_the_training_loss_survives_bf16_autocast(variant):
    """Hand-written kernels keep float32 under autocast and log_prob sums stay float64: the
    bfloat16 loss is finite, close to the float32 one, and gives finite gradients."""
    model = build(*variant)
    batch = batch_for(model, 8)
    for player in model.players:
        torch.manual_seed(1)
        full, _ = model.loss(batch, player)
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = model.loss(batch, player)
            if model.exact:
                assert model.log_prob(batch["x"]).dtype == torch.float64
        half.backward()
        assert torch.isfinite(half), f"{player}: {half}"
        want = pytest.approx(float(full.detach()), rel=0.05, abs=0.05)
        assert float(half.detach()) == want, player
        grads = [p.grad for p in model.parameters_for(player) if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
