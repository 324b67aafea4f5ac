"""CUDA kernel of ``box_iou`` against the CPU kernel (bit for bit: both use csrc/box_math.h) and
the reference, on fresh random inputs and the edge cases. Skipped without a CUDA device and a
CUDA build of mdssd.

Sizes are chosen to reach both launch shapes of csrc/cuda/box_iou.cu: the tiled one (M a multiple
of the vector width and M >= 128 floats / 64 doubles) and the flat one (any other M), with
16-byte aligned and misaligned pointers (the scalar fallback).
"""

from __future__ import annotations

import pytest
import torch

import mdssd
from mdssd import ops, reference
from conftest import random_boxes
from devices import device_memory_bytes

pytestmark = pytest.mark.usefixtures("cuda_device")

DTYPES = [torch.float32, torch.float64]


def check(cuda_device, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """CUDA result, asserted equal to the CPU kernel bit for bit and close to the reference."""
    out = ops.box_iou(boxes1.to(cuda_device), boxes2.to(cuda_device))
    cpu = ops.box_iou(boxes1.cpu(), boxes2.cpu())
    assert out.device.type == cuda_device.type and out.dtype == boxes1.dtype and out.shape == cpu.shape
    assert out.is_contiguous()
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=0)
    ref = reference.box_iou(boxes1.to(cuda_device), boxes2.to(cuda_device))
    torch.testing.assert_close(out, ref)
    assert not out.isnan().any()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n,m", [(0, 3), (3, 0), (0, 0), (1, 1), (7, 13), (5, 50), (300, 257), (129, 128), (1000, 64)]
)
def test_2d_matches_cpu(cuda_device, gen, dtype, n, m):
    check(cuda_device, random_boxes(n, gen, dtype), random_boxes(m, gen, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "batch,n,m", [(0, 3, 4), (2, 0, 5), (2, 5, 0), (3, 17, 50), (2, 50, 512), (4, 9, 3), (5, 1, 1)]
)
def test_batched_matches_cpu(cuda_device, gen, dtype, batch, n, m):
    check(cuda_device, random_boxes(n, gen, dtype, batch=batch), random_boxes(m, gen, dtype, batch=batch))


@pytest.mark.parametrize("dtype", DTYPES)
def test_benchmark_sizes(cuda_device, gen, dtype):
    # The workload in both orientations (flat shape for M = 50, tiled for M = 31,232).
    priors = random_boxes(31_232, gen, dtype, batch=32, max_size=0.5)
    gts = random_boxes(50, gen, dtype, batch=32)
    check(cuda_device, priors, gts)
    check(cuda_device, gts, priors)


@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_boxes(cuda_device, dtype):
    boxes = torch.tensor(
        [
            [0.1, 0.1, 0.4, 0.4],  # ordinary
            [0.1, 0.1, 0.4, 0.4],  # identical to the first: IoU exactly 1
            [0.2, 0.2, 0.2, 0.5],  # zero width
            [0.3, 0.3, 0.3, 0.3],  # a point
            [0.5, 0.5, 0.2, 0.2],  # inverted: area 0
            [0.3, 0.3, 0.3, 0.3],  # the same point: empty union, IoU 0 (not NaN)
            [0.0, 0.0, 1.0, 1.0],  # contains everything
        ],
        dtype=dtype,
    )
    out = check(cuda_device, boxes, boxes)
    assert out[0, 1] == 1 and out[1, 0] == 1
    assert out[3, 5] == 0 and out[5, 5] == 0 and out[4, 4] == 0
    # The same boxes batched, and as a width that takes the tiled shape.
    check(cuda_device, boxes[None].repeat(3, 1, 1), boxes[None].repeat(3, 1, 1))
    wide = boxes.repeat(40, 1)  # 280 boxes
    check(cuda_device, boxes, wide)


def misaligned(cuda_device, boxes: torch.Tensor) -> torch.Tensor:
    """`boxes` on the GPU at a storage offset of one element: contiguous, but the data pointer
    is not 16-byte aligned."""
    storage = torch.empty(boxes.numel() + 1, dtype=boxes.dtype, device=cuda_device)
    storage[1:].copy_(boxes.reshape(-1))
    out = storage[1:].view(boxes.shape)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [5, 256])
def test_misaligned_and_strided_inputs(cuda_device, gen, dtype, m):
    # Misaligned pointers take the kernel's scalar-load path; strided views are made contiguous
    # by the glue.
    b1, b2 = random_boxes(33, gen, dtype), random_boxes(m, gen, dtype)
    check(cuda_device, misaligned(cuda_device, b1), misaligned(cuda_device, b2))
    check(cuda_device, misaligned(cuda_device, b1), b2)
    t1 = b1.t().contiguous().t()
    assert not t1.is_contiguous()
    check(cuda_device, t1, b2)


@pytest.mark.slow
@pytest.mark.parametrize("n", [33_000, 32_771])  # tiled (M % 4 == 0) and flat; N * M > 2^30
def test_64bit_indices(cuda_device, gen, n):
    # Outputs over 2^30 elements take the int64 index path (4.4 GB of float32 IoUs); a few rows,
    # the first, middle and last, are checked against the CPU kernel bit for bit.
    if device_memory_bytes(cuda_device) < 12 * 2**30:
        pytest.skip("needs 12 GiB of device memory")
    b1, b2 = random_boxes(n, gen), random_boxes(n, gen)
    out = ops.box_iou(b1.to(cuda_device), b2.to(cuda_device))
    rows = torch.tensor([0, 1, n // 2, n - 2, n - 1])
    torch.testing.assert_close(out[rows.to(cuda_device)].cpu(), ops.box_iou(b1[rows], b2), rtol=0, atol=0)


def test_output_is_deterministic(cuda_device, gen):
    b1 = random_boxes(200, gen, batch=3).to(cuda_device)
    b2 = random_boxes(300, gen, batch=3).to(cuda_device)
    assert torch.equal(ops.box_iou(b1, b2), ops.box_iou(b1, b2))


@pytest.mark.parametrize("batched", [False, True])
def test_opcheck(cuda_device, gen, batched):
    batch = 2 if batched else None
    args = (random_boxes(9, gen, batch=batch).to(cuda_device), random_boxes(130, gen, batch=batch).to(cuda_device))
    torch.library.opcheck(torch.ops.mdssd.box_iou.default, args)


def test_argument_errors_match_cpu(cuda_device, gen):
    boxes = random_boxes(4, gen).to(cuda_device)
    with pytest.raises(RuntimeError, match="box_iou: boxes2 must be"):
        ops.box_iou(boxes, boxes[None])
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.box_iou(boxes.half(), boxes.half())
    with pytest.raises(RuntimeError, match="box_iou: boxes1 is on"):
        ops.box_iou(boxes, boxes.cpu())
