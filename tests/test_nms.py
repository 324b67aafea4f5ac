import pytest
import torch

from mdssd import ops, reference
from conftest import random_boxes


def clustered_boxes(n, gen, dtype=torch.float32, clusters=None):
    """Boxes jittered around a few centres, so that NMS really suppresses."""
    clusters = clusters or max(1, n // 10)
    centres = random_boxes(clusters, gen, torch.float64, min_size=0.02, max_size=0.2)
    pick = torch.randint(0, clusters, (n,), generator=gen)
    jitter = 0.02 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return (centres[pick] + jitter).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 50, 1000])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_reference(gen, dtype, n, threshold):
    boxes = clustered_boxes(n, gen, dtype)
    scores = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    keep = ops.nms(boxes, scores, threshold)
    assert keep.dtype == torch.long
    assert torch.equal(keep, reference.nms(boxes, scores, threshold))


def test_nms_10k(gen):
    boxes = clustered_boxes(10_000, gen, clusters=2000)
    scores = torch.rand(10_000, generator=gen)
    assert torch.equal(ops.nms(boxes, scores, 0.5), reference.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("kind", ["mixed_sizes", "grid_fallback"])
def test_nms_long_lists_match_reference(gen, kind):
    # From 2048 candidates on, the CPU kernel uses its grid. Mixed sizes, zero-area and inverted
    # boxes, far-away coordinates; and a mix that makes the grid lists too long (half tiny boxes,
    # half boxes spanning everything), where the kernel falls back to the plain sweep.
    n = 3000
    boxes = clustered_boxes(n, gen, torch.float64, clusters=600)
    if kind == "mixed_sizes":
        boxes[::7, 2:] = boxes[::7, :2] + 0.5  # big boxes
        boxes[::11, 2:] = boxes[::11, :2]  # zero area
        boxes[::13] = boxes[::13][:, [2, 3, 0, 1]]  # inverted
        boxes[::17] += 100.0  # far from the rest
    else:
        boxes[::2] = boxes[::2] * 0.01
        boxes[1::2] = torch.tensor([-1.0, -1.0, 2.0, 2.0], dtype=torch.float64) + 0.1 * boxes[1::2]
    boxes = boxes.float()
    scores = torch.rand(n, generator=gen)
    for threshold in (0.0, 0.5):
        assert torch.equal(ops.nms(boxes, scores, threshold), reference.nms(boxes, scores, threshold))
    idxs = torch.randint(0, 2, (n,), generator=gen)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), reference.batched_nms(boxes, scores, idxs, 0.5))


def test_nms_100k_is_consistent(gen):
    # 100k boxes: the suppression sweeps run in parallel; check the defining property of the
    # result instead of the (slow) reference: kept boxes never overlap above the threshold and
    # every dropped box overlaps a better-ranked kept box.
    n = 100_000
    boxes = clustered_boxes(n, gen, clusters=5_000)
    scores = torch.rand(n, generator=gen)
    keep = ops.nms(boxes, scores, 0.5)
    kept = boxes[keep]
    iou = ops.box_iou(kept, kept)
    assert not (iou.triu(1) > 0.5).any()
    assert (scores[keep][:-1] >= scores[keep][1:]).all()
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[keep] = False
    sample = torch.nonzero(dropped)[:, 0][:2000]
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.sort(scores, descending=True, stable=True).indices] = torch.arange(n)
    overlap = ops.box_iou(boxes[sample], kept) > 0.5
    better = rank[keep][None, :] < rank[sample][:, None]
    assert (overlap & better).any(1).all()


def test_nms_empty():
    assert ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


def test_nms_exact_ties_keep_lower_index():
    box = [0.1, 0.1, 0.4, 0.4]
    boxes = torch.tensor([box, box, box, [0.6, 0.6, 0.9, 0.9]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5])
    # Rank: 2 (0.9), then the tie 0, 1, 3 in index order. 0 and 1 are identical to 2.
    assert ops.nms(boxes, scores, 0.5).tolist() == [2, 3]
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 3]


def test_nms_degenerate_boxes_are_kept():
    # Zero-area and inverted boxes overlap nothing (IoU 0), so they are never suppressed.
    boxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]])
    scores = torch.tensor([0.3, 0.2, 0.1])
    assert ops.nms(boxes, scores, 0.0).tolist() == [0, 1, 2]


def test_nms_threshold_is_strict():
    # IoU exactly 0.5 is not "> 0.5": both boxes stay.
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.25, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert ops.box_iou(boxes[:1], boxes[1:]).item() == 0.5
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.4999).tolist() == [0]


@pytest.mark.parametrize("n,num_idx", [(1, 1), (200, 1), (500, 7), (3000, 40)])
def test_batched_nms_matches_reference(gen, n, num_idx):
    boxes = clustered_boxes(n, gen)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(-3, num_idx - 3, (n,), generator=gen)
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, reference.batched_nms(boxes, scores, idxs, 0.5))


def test_batched_nms_groups_never_interact():
    box = [0.1, 0.1, 0.4, 0.4]
    boxes = torch.tensor([box, box, box])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    # Huge coordinates would break the coordinate-offset trick; we do not use it.
    big = torch.tensor([[0.0, 0.0, 1e6, 1e6], [1e6, 1e6, 2e6, 2e6]])
    assert ops.batched_nms(big, torch.tensor([0.5, 0.6]), torch.tensor([0, 1]), 0.5).tolist() == [1, 0]


def test_opcheck(gen):
    boxes = clustered_boxes(20, gen)
    scores = torch.rand(20, generator=gen)
    idxs = torch.randint(0, 3, (20,), generator=gen)
    torch.library.opcheck(torch.ops.mdssd.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.mdssd.batched_nms.default, (boxes, scores, idxs, 0.5))
