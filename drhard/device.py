"""One CPU/GPU code path: the cores this process may use, the device, the autocast context.

torch is imported when a function needs it, so CPU-only tools (preprocess) can count cores
without loading it.
"""
from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(no_cuda: bool = False, index: int = 0) -> "torch.device":
    """``cuda:<index>`` when a GPU is visible and not refused, else CPU."""
    import torch
    if not no_cuda and torch.cuda.is_available():
        if index >= torch.cuda.device_count():
            raise ValueError(f"GPU {index} requested but only {torch.cuda.device_count()} visible")
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


_warned = set()


def autocast(device: "torch.device", fp16: bool = False, bf16: bool = False):
    """Mixed precision context for the encoder forward; a no-op when disabled.

    fp16 needs a CUDA GPU: on the CPU it is ignored with a warning (fp32), so a
    GPU command line still runs on a laptop.  bf16 uses the CPU's autocast there.
    """
    if not (fp16 or bf16):
        return contextlib.nullcontext()
    import torch
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16 if fp16 else torch.bfloat16)
    if bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if "fp16" not in _warned:
        _warned.add("fp16")
        logger.warning("--fp16 needs a CUDA GPU and none is in use: running in fp32 on the CPU")
    return contextlib.nullcontext()
