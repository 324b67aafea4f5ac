"""CUDA kernels of ``nms`` and ``batched_nms`` against the CPU kernels, the reference and
torchvision (where it imports). Skipped without a CUDA device and a CUDA build of mdssd.

The CUDA and CPU kernels evaluate IoUs with the same arithmetic (csrc/box_math.h) and rank with
the same rule (descending score, ties to the lower index), so their kept lists must be identical,
ties included; torchvision is compared on tie-free scores only, where its order is defined.
"""

from __future__ import annotations

import pytest
import torch

import mdssd
from mdssd import ops, reference

pytestmark = pytest.mark.usefixtures("cuda_device")

DTYPES = [torch.float32, torch.float64]


def random_boxes(n: int, gen: torch.Generator, dtype: torch.dtype, min_size=0.01, max_size=0.2):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    wh = min_size + (max_size - min_size) * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def tie_free_scores(n: int, gen: torch.Generator, dtype: torch.dtype):
    # A permutation of distinct values: no two scores are equal in float32 or float64.
    return (torch.randperm(n, generator=gen).to(torch.float64) / max(n, 1)).to(dtype)


def run_both(cuda_device, fn, *args):
    """fn on CPU tensors and on their CUDA copies; returns (cpu, cuda moved to CPU)."""
    cpu = fn(*args)
    cuda = fn(*[a.to(cuda_device) if isinstance(a, torch.Tensor) else a for a in args])
    assert cuda.device.type == cuda_device.type and cuda.dtype == torch.long and cuda.dim() == 1
    return cpu, cuda.cpu()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 127, 129, 1000, 4099])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 1.0])
def test_nms_matches_cpu_and_reference(cuda_device, dtype, n, threshold):
    gen = torch.Generator().manual_seed(1000 * n + int(threshold * 10))
    boxes = random_boxes(n, gen, dtype)
    scores = torch.rand(n, generator=gen, dtype=dtype)
    cpu, cuda = run_both(cuda_device, ops.nms, boxes, scores, threshold)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)
    torch.testing.assert_close(cuda, reference.nms(boxes, scores, threshold), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 64, 65, 1000, 3000])
@pytest.mark.parametrize("num_groups", [1, 3, 40])
def test_batched_nms_matches_cpu_and_reference(cuda_device, dtype, n, num_groups):
    gen = torch.Generator().manual_seed(7 * n + num_groups)
    boxes = random_boxes(n, gen, dtype, max_size=0.4)
    scores = torch.rand(n, generator=gen, dtype=dtype)
    # Negative and sparse group ids: the kernel must not assume 0..G-1.
    idxs = torch.randint(0, num_groups, (n,), generator=gen) * 1000 - 5000
    cpu, cuda = run_both(cuda_device, ops.batched_nms, boxes, scores, idxs, 0.5)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)
    torch.testing.assert_close(
        cuda, reference.batched_nms(boxes, scores, idxs, 0.5), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_cases(cuda_device, dtype):
    dev = cuda_device
    empty = ops.nms(torch.zeros(0, 4, dtype=dtype, device=dev), torch.zeros(0, dtype=dtype, device=dev), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long and empty.device.type == cuda_device.type
    empty_b = ops.batched_nms(
        torch.zeros(0, 4, dtype=dtype, device=dev),
        torch.zeros(0, dtype=dtype, device=dev),
        torch.zeros(0, dtype=torch.long, device=dev),
        0.5,
    )
    assert empty_b.shape == (0,) and empty_b.dtype == torch.long

    one = ops.nms(torch.tensor([[0.1, 0.1, 0.5, 0.5]], dtype=dtype, device=dev), torch.tensor([0.3], dtype=dtype, device=dev), 0.5)
    assert one.tolist() == [0]

    # Zero-area and inverted boxes have IoU 0 with everything: nothing is suppressed, even with
    # threshold 0 (IoU > 0 is needed) and identical coordinates.
    degenerate = torch.tensor(
        [[0.2, 0.2, 0.2, 0.6], [0.2, 0.2, 0.2, 0.6], [0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.3, 0.3]],
        dtype=dtype,
    )
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=dtype)
    for thr in (0.0, 0.5):
        cpu, cuda = run_both(cuda_device, ops.nms, degenerate, scores, thr)
        assert cuda.tolist() == cpu.tolist() == [1, 2, 3, 0]

    # Identical boxes with exactly tied scores: the lowest index survives.
    same = torch.tensor([[0.1, 0.1, 0.4, 0.4]], dtype=dtype).repeat(100, 1)
    tied = torch.full((100,), 0.5, dtype=dtype)
    cpu, cuda = run_both(cuda_device, ops.nms, same, tied, 0.5)
    assert cuda.tolist() == cpu.tolist() == [0]

    # All scores tied, random boxes: the rank is the index order.
    gen = torch.Generator().manual_seed(3)
    boxes = random_boxes(2000, gen, dtype, max_size=0.3)
    cpu, cuda = run_both(cuda_device, ops.nms, boxes, torch.zeros(2000, dtype=dtype), 0.4)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)
    # -0.0 and +0.0 are equal scores: ties by index, as on CPU.
    signed_zero = torch.where(torch.arange(2000) % 2 == 0, torch.tensor(-0.0, dtype=dtype), torch.tensor(0.0, dtype=dtype))
    cpu, cuda = run_both(cuda_device, ops.nms, boxes, signed_zero, 0.4)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)

    # Few distinct scores (many ties) with groups.
    scores = torch.randint(0, 4, (2000,), generator=gen).to(dtype)
    idxs = torch.randint(0, 5, (2000,), generator=gen)
    cpu, cuda = run_both(cuda_device, ops.batched_nms, boxes, scores, idxs, 0.4)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)


def test_batched_nms_groups_never_interact(cuda_device):
    # Same box in every group: each group keeps it; no coordinate offset trick can leak.
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float32, device=cuda_device).repeat(6, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], device=cuda_device)
    idxs = torch.tensor([2, 1, 2, 0, 1, 0], device=cuda_device)
    assert ops.batched_nms(box, scores, idxs, 0.5).tolist() == [0, 1, 3]


def test_batched_nms_no_coordinate_offset(cuda_device):
    # torchvision's trick (offset each group by idx * (max + 1)) collapses these float32 boxes to
    # zero area at an offset of ~5e7 (ulp 4), so nothing would be suppressed.
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.52]]).repeat(2, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([0, 0, 2**25, 2**25])
    cpu, cuda = run_both(cuda_device, ops.batched_nms, boxes, scores, idxs, 0.5)
    assert cuda.tolist() == cpu.tolist() == [0, 2]


@pytest.mark.parametrize("num_groups", [2, 20, 500])
def test_batched_nms_many_tiles_per_group(cuda_device, num_groups):
    # 20k small boxes (most kept): groups span many 64-box tiles and tiles span several groups,
    # so the mask kernel skips the tiles past a row tile's last group and the scan must stop
    # exactly there (it would read unwritten words otherwise).
    gen = torch.Generator().manual_seed(31 + num_groups)
    n = 20_000
    boxes = random_boxes(n, gen, torch.float32, min_size=0.005, max_size=0.05)
    scores = tie_free_scores(n, gen, torch.float32)
    idxs = torch.randint(0, num_groups, (n,), generator=gen)
    cpu, cuda = run_both(cuda_device, ops.batched_nms, boxes, scores, idxs, 0.3)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)


def test_nms_more_tiles_than_scan_threads(cuda_device):
    # 1027 tiles > 1024 scan threads: each scan thread ORs more than one column tile (~340 MB
    # mask). Small boxes, so most are kept and the scan does real work.
    gen = torch.Generator().manual_seed(13)
    n = 64 * 1026 + 1
    boxes = random_boxes(n, gen, torch.float32, min_size=0.002, max_size=0.01)
    scores = tie_free_scores(n, gen, torch.float32)
    cpu, cuda = run_both(cuda_device, ops.nms, boxes, scores, 0.5)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)


def test_nan_scores_rank_first_like_the_reference(cuda_device):
    # Non-finite scores are rejected on CPU and unchecked on CUDA; there, every NaN (either sign,
    # any payload) ranks first, tied by index, as in the reference's sort.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.9, 1.0],
                          [0.5, 0.5, 0.6, 0.6]], device=cuda_device)
    scores = torch.tensor([0.5, float("nan"), -float("nan"), 0.3], device=cuda_device)
    got = ops.nms(boxes, scores, 0.5)
    assert got.tolist() == reference.nms(boxes.cpu(), scores.cpu(), 0.5).tolist() == [1, 3]


def test_non_contiguous_inputs(cuda_device):
    gen = torch.Generator().manual_seed(5)
    boxes = random_boxes(500, gen, torch.float32).to(cuda_device)
    scores = torch.rand(500, generator=gen).to(cuda_device)
    wide = torch.cat([boxes, boxes], dim=1)[:, 4:]  # non-contiguous view of the same boxes
    padded_scores = torch.stack([scores, scores], dim=1)[:, 0]
    assert not wide.is_contiguous() and not padded_scores.is_contiguous()
    torch.testing.assert_close(ops.nms(wide, padded_scores, 0.5), ops.nms(boxes, scores, 0.5), rtol=0, atol=0)


@pytest.mark.slow
def test_nms_100k_boxes_matches_cpu(cuda_device):
    # Large boxes so that the CPU kernel keeps few and finishes quickly; the CUDA mask still holds
    # 100k x 100k pairs.
    gen = torch.Generator().manual_seed(11)
    n = 100_000
    boxes = random_boxes(n, gen, torch.float32, min_size=0.2, max_size=0.6)
    scores = tie_free_scores(n, gen, torch.float32)
    cpu, cuda = run_both(cuda_device, ops.nms, boxes, scores, 0.5)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)
    idxs = torch.randint(0, 20, (n,), generator=gen)
    cpu, cuda = run_both(cuda_device, ops.batched_nms, boxes, scores, idxs, 0.5)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)


@pytest.mark.slow
def test_nms_removed_vector_in_global_memory(cuda_device):
    # 5121 tiles of 64: one more than the scan keeps in shared memory (kScanSharedWords in
    # csrc/cuda/nms.cu), so its removed-bit vector lives in global memory (mask: 6.7 GB).
    gen = torch.Generator().manual_seed(12)
    n = 64 * 5121
    boxes = random_boxes(n, gen, torch.float32, min_size=0.2, max_size=0.6)
    scores = tie_free_scores(n, gen, torch.float32)
    cpu, cuda = run_both(cuda_device, ops.nms, boxes, scores, 0.5)
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_determinism(cuda_device, dtype):
    gen = torch.Generator().manual_seed(21)
    boxes = random_boxes(5000, gen, dtype).to(cuda_device)
    scores = torch.randint(0, 50, (5000,), generator=gen).to(dtype).to(cuda_device)  # many ties
    idxs = torch.randint(0, 7, (5000,), generator=gen).to(cuda_device)
    assert torch.equal(ops.nms(boxes, scores, 0.5), ops.nms(boxes, scores, 0.5))
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), ops.batched_nms(boxes, scores, idxs, 0.5))


def test_opcheck(cuda_device):
    gen = torch.Generator().manual_seed(8)
    boxes = random_boxes(300, gen, torch.float32).to(cuda_device)
    scores = torch.rand(300, generator=gen).to(cuda_device)
    idxs = torch.randint(0, 4, (300,), generator=gen).to(cuda_device)
    torch.library.opcheck(torch.ops.mdssd.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.mdssd.batched_nms.default, (boxes, scores, idxs, 0.5))


def test_argument_errors_match_cpu(cuda_device):
    boxes = torch.rand(5, 4)
    for device in ("cpu", cuda_device):
        with pytest.raises(RuntimeError, match="nms: boxes must be"):
            ops.nms(boxes[:, :3].to(device), torch.rand(5, device=device), 0.5)
        with pytest.raises(RuntimeError, match="iou_threshold must be in"):
            ops.nms(boxes.to(device), torch.rand(5, device=device), 1.5)
        with pytest.raises(RuntimeError, match="idxs must be int64"):
            ops.batched_nms(boxes.to(device), torch.rand(5, device=device), torch.zeros(5, dtype=torch.int32, device=device), 0.5)
    with pytest.raises(RuntimeError, match="is on"):
        ops.nms(boxes.to(cuda_device), torch.rand(5), 0.5)


@pytest.mark.parametrize("n", [10, 1000, 10_000, 100_000])
def test_against_torchvision(cuda_device, n):
    tv_ops = pytest.importorskip("torchvision.ops")
    gen = torch.Generator().manual_seed(n)
    # Coordinates on a 1/256 grid: widths, areas, intersections and unions are then exact in
    # float32, so only the final division rounds (correctly, on both sides) and torchvision's
    # kernel, whatever its FMA contraction, computes bit-identical IoUs.
    size = 0.2 if n <= 1000 else 0.05
    boxes = (random_boxes(n, gen, torch.float64, max_size=size) * 256).round().div(256).float().to(cuda_device)
    scores = tie_free_scores(n, gen, torch.float32).to(cuda_device)
    idxs = torch.randint(0, 30, (n,), generator=gen).to(cuda_device)
    for thr in (0.3, 0.7):
        assert torch.equal(ops.nms(boxes, scores, thr), tv_ops.nms(boxes, scores, thr))
        assert torch.equal(
            ops.batched_nms(boxes, scores, idxs, thr), tv_ops.batched_nms(boxes, scores, idxs, thr)
        )
