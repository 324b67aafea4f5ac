"""Shared helpers: fresh random inputs for the op tests (a new seed per test run)."""

import os
import random
import zlib

import pytest
import torch


def pytest_report_header(config):
    return f"mdssd test seed: {SEED} (set MDSSD_TEST_SEED to repeat a run)"


SEED = int(os.environ.get("MDSSD_TEST_SEED", random.SystemRandom().randrange(2**31)))


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
