"""Shared helpers: fresh random inputs for the op tests (a new seed per test run)."""

import os
import random
import zlib

import pytest
import torch

from devices import SKIP_REASON, cuda_test_device, is_emulated


def pytest_report_header(config):
    return f"mdssd test seed: {SEED} (set MDSSD_TEST_SEED to repeat a run)"


SEED = int(os.environ.get("MDSSD_TEST_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    """The device of the CUDA tests (tests/devices.py): a real GPU, else the emulated CUDA device
    of an MDSSD_CUDA_EMU=1 build, else the test skips."""
    device = cuda_test_device()
    if device is None:
        pytest.skip(SKIP_REASON)
    return device


@pytest.fixture
def real_cuda_device(cuda_device) -> torch.device:
    """A real GPU, for what the emulator does not model (streams, CUDA graphs)."""
    if is_emulated(cuda_device):
        pytest.skip("CUDA streams and graphs are not emulated")
    return cuda_device


def pytest_collection_modifyitems(config, items):
    # The slow CUDA tests (multi-GB buffers, 10^8 threads) would take hours on the emulator: they
    # run on a real GPU (benchmarks/gpu_check.sh), or with MDSSD_CUDA_EMU_SLOW=1.
    device = cuda_test_device()
    if device is None or not is_emulated(device) or os.environ.get("MDSSD_CUDA_EMU_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="too large for the emulated CUDA device (MDSSD_CUDA_EMU_SLOW=1 runs it)")
    for item in items:
        if "slow" in item.keywords and "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture
def gen(request):
    """A torch.Generator seeded from the run seed and the test's name: fresh inputs every run,
    reproducible with MDSSD_TEST_SEED."""
    g = torch.Generator()
    # crc32, not hash(): str hashes are salted per process, so they would not repeat a run.
    g.manual_seed(SEED ^ (zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF))
    return g


def random_boxes(n, gen, dtype=torch.float32, batch=None, min_size=0.0, max_size=0.3):
    """xyxy boxes in [0, 1] with sides in [min_size, max_size]."""
    shape = (n,) if batch is None else (batch, n)
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    wh = min_size + (max_size - min_size) * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    return torch.cat([xy, (xy + wh)], -1).clamp(0, 1).to(dtype)


def random_priors(n, gen, dtype=torch.float32):
    """cxcywh priors in [0, 1] with positive sizes."""
    c = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    wh = 0.02 + 0.4 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    return torch.cat([c, wh], -1).to(dtype)
