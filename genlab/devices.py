"""Where models and batches live, and the training step's optional mixed precision.

``resolve_device`` is the one place a device name ("auto", "cpu", "cuda", "cuda:1", "mps" or a
``torch.device``) becomes a ``torch.device``: ``fit``, ``load`` and every CLI command call it,
so a device that is not there fails the same way everywhere, in one line. "auto" means CUDA
when torch sees a GPU, else the CPU. MPS is used only when asked for: genlab sums
log-likelihoods in float64, which MPS does not have, so likelihood models cannot run there.

``precision="bf16"`` runs the training loss under CUDA autocast (bfloat16 matmuls and
convolutions; no loss scaling needed, bfloat16 has float32's range). It never applies to
``log_prob`` in evaluation, and the models' float64 sums are left alone by autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16")


class DeviceError(RuntimeError):
    """A device or precision was asked for that this machine (or this torch) cannot give."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for ``spec``; a missing device is one ``DeviceError`` line.

    A bare "cuda" gets an index: the process's GPU under torchrun (``LOCAL_RANK``), else the
    current one, so that each data-parallel rank trains on its own GPU.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"unknown device {str(spec)!r}: use one of {', '.join(DEVICES)}"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        return _cuda(device, str(spec))
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"MPS was asked for (--device {spec}) but torch sees no Apple GPU on this "
                "machine; use --device cpu"
            )
        return torch.device("mps")
    raise DeviceError(f"unknown device {str(spec)!r}: use one of {', '.join(DEVICES)}")


def _cuda(device: torch.device, spec: str) -> torch.device:
    if not torch.cuda.is_available():
        why = "" if torch.version.cuda else " (this torch build has no CUDA support)"
        raise DeviceError(
            f"CUDA was asked for (--device {spec}) but torch sees no GPU on this machine{why}; "
            "use --device cpu"
        )
    count = torch.cuda.device_count()
    index = device.index
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    if not 0 <= index < count:
        seen = "cuda:0" if count == 1 else f"cuda:0 .. cuda:{count - 1}"
        raise DeviceError(
            f"{spec} was asked for but torch sees {count} GPU{'s' if count > 1 else ''} "
            f"({seen}); use --device cuda:0"
        )
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, in one line, a precision the device cannot train in."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    if precision == "bf16":
        if device.type != "cuda":
            raise DeviceError(
                f"bf16 mixed precision is CUDA-only and this run is on {device}; "
                "use --precision fp32 (the default) or --device cuda"
            )
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise DeviceError(
                f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; "
                "use --precision fp32"
            )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the training loss runs in: bfloat16 autocast for "bf16", else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor on ``device``; other fields (lists of text...) as they are."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Restore the CPU RNG and ``device``'s own RNG afterwards (only that one accelerator)."""
    if device.type in ("cpu", "meta"):
        with torch.random.fork_rng(devices=[]):
            yield
    else:
        with torch.random.fork_rng(devices=[device], device_type=device.type):
            yield


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DeviceError",
    "autocast",
    "check_precision",
    "fork_rng",
    "resolve_device",
    "to_device",
]
