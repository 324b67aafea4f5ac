"""Which device the CUDA tests run on: the one place that decides it (tests/conftest.py's
``cuda_device`` fixture and any other test module use :func:`cuda_test_device`).

Order: a real GPU when torch sees one and mdssd was built with CUDA; else the emulated CUDA
device ``"cuda_emu"`` when mdssd was built with ``MDSSD_CUDA_EMU=1`` (docs/cuda_emu.md); else
none, and the CUDA tests skip. ``MDSSD_CUDA_TEST_DEVICE=cuda|cuda_emu|none`` forces a choice
(an unavailable forced device is an error, not a skip).
"""

from __future__ import annotations

import functools
import os

import torch

import mdssd.ops

CHOICES = ("cuda", "cuda_emu", "none")


@functools.cache
def cuda_test_device() -> torch.device | None:
    """The device for the CUDA tests, or None when there is none."""
    forced = os.environ.get("MDSSD_CUDA_TEST_DEVICE", "").strip()
    if forced and forced not in CHOICES:
        raise ValueError(f"MDSSD_CUDA_TEST_DEVICE must be one of {CHOICES}, got {forced!r}")
    available = {"cuda": mdssd.ops.cuda_available(), "cuda_emu": mdssd.ops.cuda_emu_available()}
    if forced == "none":
        return None
    if forced:
        if not available[forced]:
            raise RuntimeError(f"MDSSD_CUDA_TEST_DEVICE={forced} but this build or machine has no such device")
        return torch.device(forced)
    for kind in ("cuda", "cuda_emu"):
        if available[kind]:
            return torch.device(kind)
    return None


def is_emulated(device: torch.device | str) -> bool:
    """Whether `device` is the emulated CUDA device (kernels run on the CPU: no streams, graphs
    or timing, and sizes must stay small)."""
    return torch.device(device).type == "cuda_emu"


SKIP_REASON = "needs a CUDA device and a CUDA build of mdssd, or the emulated build (MDSSD_CUDA_EMU=1)"


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of `device`: the GPU's, or the host's for the emulated device."""
    if is_emulated(device):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return torch.cuda.get_device_properties(device).total_memory
