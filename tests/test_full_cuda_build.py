"""A CUDA build of mdssd (``MDSSD_CUDA=1``: CPU kernels, glue and nvcc-compiled kernels in one
``mdssd._C``) on a machine with no GPU and no driver, as on a build machine or CI: it imports,
registers every op for the CPU and CUDA dispatch keys, and its CPU ops work.

Skipped unless the imported mdssd has CUDA kernels (the CPU-only and the emulated builds have
none); ``MDSSD_EXPECT_CUDA_BUILD=1`` turns that skip into a failure, for CI's stage that has just
built the CUDA extension (.ci/run). On a machine with a GPU the CUDA tests (tests/test_cuda_*.py)
run the kernels themselves.
"""

from __future__ import annotations

import os

import pytest
import torch

import mdssd
from mdssd import ops, reference
from benchmarks import inputs

# The public ops (mdssd.ops); csrc/mdssd.cpp may define more (backward kernels).
OPS = ("box_iou", "match_encode", "l2norm_sum", "nms", "batched_nms", "ssd_postprocess")


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mdssd::{op}", key)


@pytest.fixture(scope="module", autouse=True)
def cuda_build():
    if not has_kernel("box_iou", "CUDA"):
        message = f"mdssd at {mdssd.__file__} is not a CUDA build (MDSSD_CUDA=1)"
        if os.environ.get("MDSSD_EXPECT_CUDA_BUILD") == "1":
            pytest.fail(message + ", but MDSSD_EXPECT_CUDA_BUILD=1")
        pytest.skip(message)


def test_every_op_has_cpu_and_cuda_kernels():
    defined = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("mdssd::"))
    assert set(OPS) <= set(defined), defined
    for op in defined:
        assert has_kernel(op, "CPU"), op
        assert has_kernel(op, "CUDA"), op
        assert not has_kernel(op, "PrivateUse1"), f"{op}: this is the emulated build, not the CUDA one"
    assert torch.version.cuda is not None


def test_imports_without_a_driver():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: tests/test_cuda_*.py run this build's kernels")
    # The kernels are registered, but there is no device to run them on.
    assert not ops.cuda_available()
    assert not ops.cuda_emu_available()


def test_cpu_ops_work_in_the_cuda_build():
    gen = torch.Generator().manual_seed(0)
    priors = inputs.priors("mdssd300")[0][::64].contiguous()
    boxes = inputs.small_boxes((40,), gen)
    assert torch.equal(ops.box_iou(boxes, boxes[:7]), reference.box_iou(boxes, boxes[:7]))

    cand, scores, classes = inputs.nms_candidates(400, gen)
    assert torch.equal(ops.nms(cand, scores, 0.5), reference.nms(cand, scores, 0.5))
    assert torch.equal(ops.batched_nms(cand, scores, classes, 0.5),
                       reference.batched_nms(cand, scores, classes, 0.5))

    gt = inputs.ground_truth(2, 5, gen)
    for got, want in zip(ops.match_encode(priors, *gt), reference.match_encode(priors, *gt)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    loc, conf = inputs.head_outputs(2, priors.shape[0], 4, gen)
    for got, want in zip(ops.ssd_postprocess(loc, conf, priors), reference.ssd_postprocess(loc, conf, priors)):
        torch.testing.assert_close(got, want)

    # l2norm_sum forward and its backward kernel (the autograd formula registered from Python).
    maps = inputs.fusion_maps(1, 8, 5, gen, torch.float64)
    a, b, sa, sb = (t.double().requires_grad_() for t in maps)
    torch.autograd.gradcheck(lambda *x: ops.l2norm_sum(*x, 1e-10), (a, b, sa, sb))
