"""The CPU ops against torchvision's on the same inputs: ``box_iou``, ``nms``, ``batched_nms``, and
``ssd_postprocess`` against the same post-processing written with torchvision's ``batched_nms``
(``benchmarks.kernels.torchvision_postprocess``, the benchmarks' torchvision contestant), up to the
largest sizes the CPU benchmarks time. Skipped where torchvision does not import (the main
development environment); CI runs them in its torch + torchvision venv (.ci/run).

Exactness: boxes are put on a 1/1024 grid, where widths, areas, intersections and unions are
exact in float32 (areas < 2^21 grid units), so only the final division rounds, correctly on both
sides, and both compute bit-identical IoUs. Thresholds are ones whose float32 rounding is not
above them (0.45, 0.5, 0.7): our kernels compare with the threshold rounded to the boxes' dtype
and torchvision in float64, which differ only for an IoU equal to float32(t) > t.

The tie rule: torchvision's ``nms`` ranks equal scores by lower index (a stable sort), as ours
does, but its ``batched_nms`` for more than 1,000 CPU boxes (one ``nms`` per class) re-sorts the
kept boxes with an unstable sort, so equal scores may come back in any order. With ties the
kept SETS and the sequence of kept scores must agree; the order of the indices only without ties.
"""

from __future__ import annotations

import pytest
import torch

tv_ops = pytest.importorskip("torchvision.ops")

from benchmarks import inputs, kernels  # noqa: E402
from conftest import random_boxes  # noqa: E402
from mdssd import ops, reference  # noqa: E402

GRID = 1024
THRESHOLDS = (0.45, 0.5, 0.7)
# The CPU benchmarks' sizes (benchmarks/kernels.py): nms and batched_nms on 1,000-100,000
# candidates in 20 classes, box_iou of MDSSD512's 90,100 priors x 50 ground truths and a batch
# of 32 x 31,232 x 50, ssd_postprocess on MDSSD300/512 priors with 21 classes.
NMS_SIZES = (1_000, 10_000, 100_000)
CLASSES = 20


def on_grid(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes * GRID).round() / GRID


def tie_free_scores(n: int, gen: torch.Generator) -> torch.Tensor:
    # A permutation of distinct values: no two scores are equal in float32.
    return torch.randperm(n, generator=gen).float() / max(n, 1)


def tied_scores(n: int, gen: torch.Generator, levels: int = 16) -> torch.Tensor:
    # 16 values for up to 100,000 boxes: nearly every score is shared by many boxes.
    return torch.randint(0, levels, (n,), generator=gen).float() / levels


def assert_same_kept(ours: torch.Tensor, theirs: torch.Tensor, scores: torch.Tensor, ties: bool):
    assert ours.dtype == theirs.dtype == torch.long
    if not ties:
        assert torch.equal(ours, theirs)
        return
    assert ours.numel() == theirs.numel()
    assert torch.equal(ours.sort().values, theirs.sort().values), "kept sets differ"
    assert torch.equal(scores[ours], scores[theirs]), "kept score sequences differ"
    # Ours ranks by descending score with ties to the lower index (the order torchvision's
    # batched_nms leaves unspecified).
    kept = scores[ours]
    assert bool((kept[1:] <= kept[:-1]).all())
    tied = kept[1:] == kept[:-1]
    assert bool((ours[1:][tied] > ours[:-1][tied]).all())


# ---------------------------------------------------------------------------------------------
# box_iou


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m", [(1, 1), (7, 300), (inputs.NUM_PRIORS["mdssd512"], 50)])
def test_box_iou_random(gen, dtype, n, m):
    # Off the grid too: torchvision's box_iou is the same sequence of elementwise torch ops
    # (areas, intersection, (area1 + area2) - inter, division) as ours, so it is bit-identical
    # wherever the union is positive.
    boxes1 = random_boxes(n, gen, dtype, max_size=0.4)
    boxes2 = random_boxes(m, gen, dtype, max_size=0.4)
    assert torch.equal(ops.box_iou(boxes1, boxes2), tv_ops.box_iou(boxes1, boxes2))


def test_box_iou_batched_at_benchmark_size(gen):
    # The benchmark's batched case, 32 x MDSSD300's 31,232 priors x 50 small objects; torchvision's
    # op is 2-D, so its user loops over the batch.
    priors, _ = inputs.priors("mdssd300")
    prior_boxes = reference.point_form(priors).expand(32, -1, -1).contiguous()
    gts = inputs.small_boxes((32, 50), gen)
    ours = ops.box_iou(prior_boxes, gts)
    for b in range(32):
        assert torch.equal(ours[b], tv_ops.box_iou(prior_boxes[b], gts[b])), b


def test_box_iou_edge_cases():
    boxes = torch.tensor([
        [0.1, 0.1, 0.4, 0.5],    # 0 a box
        [0.1, 0.1, 0.4, 0.5],    # 1 identical to 0: IoU exactly 1
        [0.2, 0.2, 0.2, 0.3],    # 2 zero width, inside 0
        [0.3, 0.3, 0.35, 0.3],   # 3 zero height, inside 0
        [0.2, 0.2, 0.2, 0.3],    # 4 identical to the zero-area box 2: empty union
        [0.4, 0.1, 0.6, 0.5],    # 5 touches 0 along an edge: IoU 0
        [0.15, 0.15, 0.3, 0.3],  # 6 nested in 0
        [0.0, 0.0, 1.0, 1.0],    # 7 the whole image
        [0.7, 0.7, 0.7, 0.7],    # 8 a point
    ])
    for dtype in (torch.float32, torch.float64):
        b = boxes.to(dtype)
        ours, theirs = ops.box_iou(b, b), tv_ops.box_iou(b, b)
        assert ours[0, 1] == 1 and ours[0, 5] == 0 and ours[0, 2] == 0
        # torchvision divides 0 by 0 where the union is empty (two zero-area boxes that meet):
        # NaN; ours defines that IoU as 0 (mdssd.ops). Everywhere else the two are bit-identical.
        empty_union = theirs.isnan()
        assert empty_union.any()
        zero_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) == 0
        assert bool((zero_area[:, None] & zero_area[None, :])[empty_union].all())
        assert bool((ours[empty_union] == 0).all())
        assert torch.equal(ours[~empty_union], theirs[~empty_union])


# ---------------------------------------------------------------------------------------------
# nms and batched_nms


def candidates(n: int, gen: torch.Generator, ties: bool):
    # The benchmark's detector-like candidates (about 8 jittered boxes per object), on the grid.
    boxes, scores, classes = inputs.nms_candidates(n, gen, num_classes=CLASSES)
    scores = tied_scores(n, gen) if ties else tie_free_scores(n, gen)
    return on_grid(boxes), scores, classes


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("n", [0, 1, 2, 50, *NMS_SIZES])
def test_nms(gen, n, ties):
    boxes, scores, _ = candidates(n, gen, ties)
    # torchvision's CPU nms on 100,000 boxes takes seconds: one threshold there.
    for threshold in THRESHOLDS if n < 100_000 else (0.5,):
        assert_same_kept(ops.nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold),
                         scores, ties)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("n", [0, 1, 50, 999, 1_001, *NMS_SIZES])
def test_batched_nms(gen, n, ties):
    # Up to 1,000 CPU boxes torchvision offsets each class's boxes (one nms over all), above it
    # runs one nms per class and re-sorts: 999/1,000 and 1,001 are the two sides of that switch.
    boxes, scores, classes = candidates(n, gen, ties)
    for threshold in THRESHOLDS:
        assert_same_kept(ops.batched_nms(boxes, scores, classes, threshold),
                         tv_ops.batched_nms(boxes, scores, classes, threshold), scores, ties)


@pytest.mark.parametrize("n", [500, 10_000])
def test_nms_random_boxes(gen, n):
    # Boxes of every size anywhere, not just detector-like clusters.
    boxes = on_grid(random_boxes(n, gen, max_size=0.5))
    scores = tie_free_scores(n, gen)
    classes = torch.randint(0, 7, (n,), generator=gen)
    for threshold in THRESHOLDS:
        assert torch.equal(ops.nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold))
        assert torch.equal(ops.batched_nms(boxes, scores, classes, threshold),
                           tv_ops.batched_nms(boxes, scores, classes, threshold))


def test_nms_identical_boxes_all_tied():
    # Worst case of the tie rule: 300 copies of one box with one score, in 3 classes. Each keeps
    # its lowest index, on both sides; torchvision may return the three in any order.
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.75]]).repeat(300, 1)
    scores = torch.full((300,), 0.5)
    classes = torch.arange(300) % 3
    assert torch.equal(ops.nms(boxes, scores, 0.5), tv_ops.nms(boxes, scores, 0.5))
    assert torch.equal(ops.nms(boxes, scores, 0.5), torch.tensor([0]))
    ours = ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(ours, torch.tensor([0, 1, 2]))
    assert_same_kept(ours, tv_ops.batched_nms(boxes, scores, classes, 0.5), scores, ties=True)


# ---------------------------------------------------------------------------------------------
# ssd_postprocess


@pytest.mark.parametrize("preset, batch", [("mdssd300", 8), ("mdssd512", 2)])
def test_ssd_postprocess(gen, preset, batch):
    # The benchmark's inputs (about 4% of priors above the score threshold per class, so the
    # per-class top-400 binds) at its per-image sizes, 21 classes; a smaller batch than its 32
    # (every image is independent work). Random logits: no ties. The scores differ from
    # torch.softmax's in the last bits, hence the tolerance; counts and labels must agree.
    priors, _ = inputs.priors(preset)
    loc, conf = inputs.head_outputs(batch, priors.shape[0], 21, gen)
    ours = ops.ssd_postprocess(loc, conf, priors)
    theirs = kernels.torchvision_postprocess(loc, conf, priors, batched_nms=tv_ops.batched_nms)
    assert kernels.check_postprocess(ours, theirs, None) == "ok"
    assert bool((ours[3] > 0).all())  # NMS had work to do in every image
    assert bool((ours[3] == 200).any())  # and keep_top_k binds


def test_nms_threshold_rounding_is_the_one_known_difference():
    # The one input where the two differ on purpose: an IoU of exactly float32(0.3) (3/10 here),
    # which lies above 0.3. Ours, like mdssd.reference (a float32 tensor compared with a Python
    # float), compares with the threshold rounded to float32 and keeps the second box; torchvision
    # compares in float64 and suppresses it. In float64 both keep it.
    boxes = torch.tensor([[0.0, 0.0, 6.5, 1.0], [3.5, 0.0, 10.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert ops.box_iou(boxes, boxes)[0, 1] == torch.tensor(0.3, dtype=torch.float32)
    assert ops.nms(boxes, scores, 0.3).tolist() == reference.nms(boxes, scores, 0.3).tolist() == [0, 1]
    assert tv_ops.nms(boxes, scores, 0.3).tolist() == [0]
    assert ops.nms(boxes.double(), scores.double(), 0.3).tolist() == [0, 1]
    assert tv_ops.nms(boxes.double(), scores.double(), 0.3).tolist() == [0, 1]
