"""CUDA kernel of ``match_encode`` against the CPU kernel and the reference: labels equal bit for
bit, offsets within 1e-6 relative, on fresh random inputs and the matching rule's edge cases
(exact ties, forced matches, G > P, more ground truths than one shared-memory chunk). Also
opcheck, determinism and CUDA-graph capture and replay. Skipped without a CUDA device and a
CUDA build of mdssd.
"""

from __future__ import annotations

import pytest
import torch

import mdssd
from mdssd import ops, reference
from conftest import random_boxes, random_priors

pytestmark = pytest.mark.usefixtures("cuda_device")

DTYPES = [torch.float32, torch.float64]


def make_targets(batch, max_gt, gen, dtype=torch.float32, num_classes=21, counts=None):
    boxes = random_boxes(max_gt, gen, dtype, batch=batch, min_size=0.02)
    labels = torch.randint(1, num_classes, (batch, max_gt), generator=gen)
    if counts is None:
        counts = torch.randint(0, max_gt + 1, (batch,), generator=gen)
    counts = torch.as_tensor(counts, dtype=torch.long)
    for b in range(batch):  # padding rows hold garbage: only the first counts[b] may be read
        boxes[b, counts[b]:] = 7.0
        labels[b, counts[b]:] = 0
    return boxes, labels, counts


def run_cuda(cuda_device, priors, boxes, labels, counts, threshold=0.5, vxy=0.1, vwh=0.2):
    return ops.match_encode(priors.to(cuda_device), boxes.to(cuda_device), labels.to(cuda_device), counts.to(cuda_device), threshold,
                            vxy, vwh)


def check(cuda_device, priors, boxes, labels, counts, threshold=0.5, vxy=0.1, vwh=0.2, with_reference=True):
    loc, lab = run_cuda(cuda_device, priors, boxes, labels, counts, threshold, vxy, vwh)
    assert loc.device.type == cuda_device.type and loc.dtype == priors.dtype and lab.dtype == torch.long
    cpu_loc, cpu_lab = ops.match_encode(priors.cpu(), boxes.cpu(), labels.cpu(), counts.cpu(),
                                        threshold, vxy, vwh)
    torch.testing.assert_close(lab.cpu(), cpu_lab, rtol=0, atol=0)
    torch.testing.assert_close(loc.cpu(), cpu_loc, rtol=1e-6, atol=1e-6)
    if with_reference:
        ref_loc, ref_lab = reference.match_encode(priors.to(cuda_device), boxes.to(cuda_device), labels.to(cuda_device),
                                                  counts.to(cuda_device), threshold, vxy, vwh)
        torch.testing.assert_close(lab, ref_lab, rtol=0, atol=0)
        torch.testing.assert_close(loc, ref_loc, rtol=1e-6, atol=1e-6)
    return loc, lab


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "batch,num_priors,max_gt",
    [(1, 1, 1), (1, 10, 1), (4, 500, 8), (3, 2000, 30), (2, 2049, 5), (5, 5000, 50)],
)
def test_matches_cpu_and_reference(cuda_device, gen, dtype, batch, num_priors, max_gt):
    priors = random_priors(num_priors, gen, dtype)
    check(cuda_device, priors, *make_targets(batch, max_gt, gen, dtype))


@pytest.mark.parametrize("num_priors", [31_232, 90_100])
def test_benchmark_sizes(cuda_device, gen, num_priors):
    # 32 images x MDSSD300/512 priors x up to 50 ground truths (the CPU kernel is the oracle
    # here; the per-image Python reference is checked on the smaller sizes).
    priors = random_priors(num_priors, gen)
    # Image 0 full: its count must be fixed before make_targets blanks the padding rows (raising
    # it afterwards would make padding rows with label 0 real, which the CPU kernel rejects).
    counts = torch.randint(0, 51, (32,), generator=gen)
    counts[0] = 50
    boxes, labels, counts = make_targets(32, 50, gen, counts=counts)
    loc, lab = check(cuda_device, priors, boxes, labels, counts, with_reference=False)
    assert (lab[0] > 0).sum() >= 48  # every ground truth forces a prior (rare collisions)


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_ground_truths_than_a_shared_memory_chunk(cuda_device, gen, dtype):
    # The kernel stages ground truths 128 at a time: 300 crosses two chunk boundaries.
    priors = random_priors(3000, gen, dtype)
    check(cuda_device, priors, *make_targets(3, 300, gen, dtype, counts=[300, 129, 128]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_ground_truths_than_priors(cuda_device, gen, dtype):
    priors = random_priors(3, gen, dtype)
    boxes, labels, counts = make_targets(2, 10, gen, dtype, counts=[10, 7])
    check(cuda_device, priors, boxes, labels, counts)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_ties(cuda_device, dtype):
    # Priors 0 and 1 identical, priors 2 and 3 identical; ground truths 0 and 1 identical.
    priors = torch.tensor(
        [[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2],
         [0.5, 0.5, 0.9, 0.9]],
        dtype=dtype,
    )
    boxes = torch.tensor(
        [[[0.2, 0.2, 0.4, 0.4], [0.2, 0.2, 0.4, 0.4], [0.6, 0.6, 0.8, 0.8], [0.0, 0.0, 0.0, 0.0]]],
        dtype=dtype,
    )
    labels = torch.tensor([[3, 5, 7, 9]])
    counts = torch.tensor([4])
    loc, lab = check(cuda_device, priors, boxes, labels, counts)
    # gt 0 and gt 1 both force prior 0 (lowest of the tied priors); the higher gt (1) wins.
    # Prior 1 takes its best gt by threshold: the lowest of the tied gts (0). gt 2 forces prior 2.
    # gt 3 has zero area: it overlaps nothing and forces nothing.
    assert lab[0].tolist()[:4] == [5, 3, 7, 7]


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_across_warps_and_blocks(cuda_device, gen, dtype):
    # 7 distinct priors repeated 700 times (4,900 priors, 3 blocks of 2,048): every best prior
    # ties with copies in other lanes, warps and prior blocks, and the lowest index must win;
    # ground truths 10..19 repeat 0..9, so ground-truth ties too.
    priors = random_priors(7, gen, dtype).repeat(700, 1)
    boxes, labels, counts = make_targets(2, 20, gen, dtype, counts=[20, 20])
    boxes[:, 10:] = boxes[:, :10]
    check(cuda_device, priors, boxes, labels, counts)


def test_misaligned_priors(cuda_device, gen):
    # A priors pointer off 16-byte alignment takes the scalar load path.
    priors = random_priors(3000, gen)
    storage = torch.empty(priors.numel() + 1, device=cuda_device)
    storage[1:].copy_(priors.reshape(-1))
    misaligned = storage[1:].view(priors.shape)
    assert misaligned.is_contiguous() and misaligned.data_ptr() % 16 != 0
    check(cuda_device, misaligned, *make_targets(3, 20, gen))


@pytest.mark.slow
def test_more_images_than_grid_rows(cuda_device, gen):
    # 70,000 images > 65,535 grid rows: blocks loop over images in steps of gridDim.y.
    priors = random_priors(5, gen)
    check(cuda_device, priors, *make_targets(70_000, 2, gen), with_reference=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_ground_truths_force_nothing(cuda_device, gen, dtype):
    priors = random_priors(400, gen, dtype)
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.5, 0.5], [0.6, 0.6, 0.4, 0.8], [0.3, 0.3, 0.3, 0.7], [0.1, 0.1, 0.3, 0.3]]],
        dtype=dtype,
    )  # a point, an inverted box, a zero-width box, an ordinary box
    labels = torch.tensor([[1, 2, 3, 4]])
    loc, lab = check(cuda_device, priors, boxes, labels, torch.tensor([4]))
    assert set(lab[0].unique().tolist()) <= {0, 4} and (lab[0] == 4).any()


@pytest.mark.parametrize("threshold", [0.3, 1.0, 1.0 / 3.0])
def test_thresholds(cuda_device, gen, threshold):
    # 1/3 is not representable: the kernel must compare against float(1/3) like the CPU.
    priors = random_priors(1500, gen)
    check(cuda_device, priors, *make_targets(4, 20, gen), threshold=threshold)


def test_counts_out_of_range_are_clamped(cuda_device, gen):
    # Not value-checked on CUDA (no host sync): clamped to [0, G] in the kernels.
    priors = random_priors(700, gen)
    boxes, labels, _ = make_targets(3, 6, gen, counts=[6, 6, 6])
    loc, lab = run_cuda(cuda_device, priors, boxes, labels, torch.tensor([-3, 100, 4]))
    exp_loc, exp_lab = ops.match_encode(priors, boxes, labels, torch.tensor([0, 6, 4]))
    torch.testing.assert_close(lab.cpu(), exp_lab, rtol=0, atol=0)
    torch.testing.assert_close(loc.cpu(), exp_loc, rtol=1e-6, atol=1e-6)


def test_empty_shapes(cuda_device, gen):
    priors = random_priors(50, gen).to(cuda_device)
    # No ground-truth slots at all: everything background.
    loc, lab = ops.match_encode(priors, torch.zeros(2, 0, 4, device=cuda_device),
                                torch.zeros(2, 0, dtype=torch.long, device=cuda_device),
                                torch.zeros(2, dtype=torch.long, device=cuda_device))
    assert loc.shape == (2, 50, 4) and (lab == 0).all() and (loc == 0).all()
    # No priors, no images.
    boxes, labels, counts = make_targets(2, 3, gen)
    loc, lab = run_cuda(cuda_device, priors[:0], boxes, labels, counts)
    assert loc.shape == (2, 0, 4) and lab.shape == (2, 0)
    loc, lab = run_cuda(cuda_device, priors, boxes[:0], labels[:0], counts[:0])
    assert loc.shape == (0, 50, 4) and lab.shape == (0, 50)


def test_non_contiguous_inputs(cuda_device, gen):
    priors = random_priors(900, gen).t().contiguous().t()
    boxes, labels, counts = make_targets(3, 12, gen)
    boxes = boxes.transpose(0, 1).contiguous().transpose(0, 1)
    assert not priors.is_contiguous() and not boxes.is_contiguous()
    check(cuda_device, priors, boxes, labels, counts)


def test_deterministic(cuda_device, gen):
    priors = random_priors(31_232, gen).to(cuda_device)
    boxes, labels, counts = (t.to(cuda_device) for t in make_targets(8, 50, gen))
    first = ops.match_encode(priors, boxes, labels, counts)
    second = ops.match_encode(priors, boxes, labels, counts)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_opcheck(cuda_device, gen):
    priors = random_priors(3000, gen).to(cuda_device)
    boxes, labels, counts = (t.to(cuda_device) for t in make_targets(3, 9, gen))
    torch.library.opcheck(torch.ops.mdssd.match_encode.default,
                          (priors, boxes, labels, counts, 0.5, 0.1, 0.2))


def test_cuda_graph_capture_and_replay(real_cuda_device, gen):
    cuda_device = real_cuda_device
    priors = random_priors(31_232, gen).to(cuda_device)
    boxes, labels, counts = (t.to(cuda_device) for t in make_targets(32, 50, gen))
    # Warm up on a side stream (allocator, lazy init), as torch.cuda.graphs recommends.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.match_encode(priors, boxes, labels, counts)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loc, lab = ops.match_encode(priors, boxes, labels, counts)

    for _ in range(2):  # new inputs written into the captured buffers, then replay
        new_boxes, new_labels, new_counts = make_targets(32, 50, gen)
        boxes.copy_(new_boxes)
        labels.copy_(new_labels)
        counts.copy_(new_counts)
        graph.replay()
        torch.cuda.synchronize()
        exp_loc, exp_lab = ops.match_encode(priors, boxes, labels, counts)
        assert torch.equal(lab, exp_lab) and torch.equal(loc, exp_loc)
        cpu_loc, cpu_lab = ops.match_encode(priors.cpu(), new_boxes, new_labels, new_counts)
        torch.testing.assert_close(lab.cpu(), cpu_lab, rtol=0, atol=0)
        torch.testing.assert_close(loc.cpu(), cpu_loc, rtol=1e-6, atol=1e-6)
