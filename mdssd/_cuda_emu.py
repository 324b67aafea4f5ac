"""Python side of the emulated-CUDA device ``"cuda_emu"`` (a build with ``MDSSD_CUDA_EMU=1``;
see docs/cuda_emu.md). The C++ side (csrc/cuda_emu/device.cpp) renames torch's PrivateUse1
backend, gives it host memory and a device guard; this module registers ``torch.cuda_emu``, the
device module torch looks up by the backend's name, and the ``Tensor.cuda_emu()`` methods.

The emulator runs every launch to completion on the calling thread: there is one device and one
stream, and synchronising is a no-op.
"""

from __future__ import annotations

import types

import torch

NAME = "cuda_emu"


def _module() -> types.ModuleType:
    module = types.ModuleType(f"torch.{NAME}", "mdssd's emulated CUDA device (host memory)")

    def is_available() -> bool:
        return True

    def device_count() -> int:
        return 1

    def current_device() -> int:
        return 0

    def set_device(device) -> None:
        index = torch.device(NAME, device).index if isinstance(device, int) else torch.device(device).index
        if index not in (None, 0):
            raise RuntimeError(f"{NAME}: there is one device, {NAME}:0; got {device}")

    def synchronize(device=None) -> None:
        """Launches are synchronous on the emulator: nothing to wait for."""

    def manual_seed_all(seed: int) -> None:
        """Random numbers for tensors on the device come from the CPU generator (see
        csrc/cuda_emu/device.cpp), which torch.manual_seed seeds itself: nothing more to seed."""

    module.is_available = is_available
    module.device_count = device_count
    module.current_device = current_device
    module.set_device = set_device
    module.synchronize = synchronize
    module.is_initialized = is_available
    module._is_in_bad_fork = lambda: False
    module.manual_seed_all = manual_seed_all
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    return module


def register() -> None:
    """Makes ``torch.cuda_emu`` and ``Tensor.cuda_emu()`` exist (idempotent)."""
    if hasattr(torch, NAME):
        return
    torch._register_device_module(NAME, _module())
    torch.utils.generate_methods_for_privateuse1_backend(
        for_tensor=True, for_module=True, for_packed_sequence=False, for_storage=True
    )
