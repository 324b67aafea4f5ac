import pytest
import torch

from mdssd import ops, reference
from conftest import random_boxes, random_priors


def make_targets(batch, max_gt, gen, dtype=torch.float32, num_classes=21, counts=None):
    boxes = random_boxes(max_gt, gen, dtype, batch=batch, min_size=0.02)
    labels = torch.randint(1, num_classes, (batch, max_gt), generator=gen)
    if counts is None:
        counts = torch.randint(0, max_gt + 1, (batch,), generator=gen)
    counts = torch.as_tensor(counts, dtype=torch.long)
    # Padding rows hold garbage on purpose: only the first counts[b] rows may be read.
    for b in range(batch):
        boxes[b, counts[b]:] = 7.0
        labels[b, counts[b]:] = 0
    return boxes, labels, counts


def check(priors, boxes, labels, counts, threshold=0.5, vxy=0.1, vwh=0.2):
    loc, lab = ops.match_encode(priors, boxes, labels, counts, threshold, vxy, vwh)
    ref_loc, ref_lab = reference.match_encode(priors, boxes, labels, counts, threshold, vxy, vwh)
    assert lab.dtype == torch.long and loc.dtype == priors.dtype
    torch.testing.assert_close(lab, ref_lab, rtol=0, atol=0)
    torch.testing.assert_close(loc, ref_loc, rtol=1e-6, atol=1e-6)
    return loc, lab


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,num_priors,max_gt", [(1, 10, 1), (4, 500, 8), (3, 2000, 30)])
def test_matches_reference(gen, dtype, batch, num_priors, max_gt):
    priors = random_priors(num_priors, gen, dtype)
    check(priors, *make_targets(batch, max_gt, gen, dtype))


def test_mdssd512_size(gen):
    # The largest size we claim: 90,100 priors (MDSSD512), 50 ground truths.
    priors = random_priors(90_100, gen)
    boxes, labels, counts = make_targets(2, 50, gen, counts=[50, 17])
    loc, lab = check(priors, boxes, labels, counts)
    assert (lab > 0).sum() >= 50 + 17 - 2  # every gt forces a prior (rare collisions allowed)


def test_no_ground_truth_is_all_background(gen):
    priors = random_priors(100, gen)
    boxes, labels, counts = make_targets(3, 4, gen, counts=[0, 0, 0])
    loc, lab = check(priors, boxes, labels, counts)
    assert (lab == 0).all() and (loc == 0).all()


def test_zero_ground_truth_columns():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    loc, lab = ops.match_encode(priors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                                torch.zeros(2, dtype=torch.long))
    assert loc.shape == (2, 1, 4) and (lab == 0).all()


def test_no_priors(gen):
    boxes, labels, counts = make_targets(2, 3, gen)
    loc, lab = ops.match_encode(torch.zeros(0, 4), boxes, labels, counts)
    assert loc.shape == (2, 0, 4) and lab.shape == (2, 0)


def test_more_ground_truths_than_priors(gen):
    priors = random_priors(5, gen)
    check(priors, *make_targets(2, 40, gen, counts=[40, 33]))


def test_forced_match_below_threshold():
    # One tiny gt overlapping a big prior weakly: forced despite IoU << threshold.
    priors = torch.tensor([[0.5, 0.5, 0.8, 0.8], [0.1, 0.1, 0.05, 0.05]])
    boxes = torch.tensor([[[0.45, 0.45, 0.5, 0.5]]])
    loc, lab = check(priors, boxes, torch.tensor([[3]]), torch.tensor([1]))
    assert lab.tolist() == [[3, 0]]


def test_tie_rules():
    # Two identical priors: the gt takes the lower prior index by force; the other prior also
    # matches it by threshold. Two identical gts: the forced prior goes to the higher gt index,
    # a threshold match takes the lower gt index.
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    box = [0.4, 0.4, 0.6, 0.6]
    boxes = torch.tensor([[box, box]])
    loc, lab = check(priors, boxes, torch.tensor([[5, 7]]), torch.tensor([2]))
    # gt0 and gt1 both force prior 0 -> gt1 (label 7) wins; prior 1 matches gt0 (lowest index).
    assert lab.tolist() == [[7, 5, 0]]


def test_zero_area_ground_truth_forces_nothing():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]])
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.3, 0.3]]])
    loc, lab = check(priors, boxes, torch.tensor([[4, 6]]), torch.tensor([2]))
    assert lab.tolist() == [[0, 6]]
    assert torch.isfinite(loc).all()


def test_encoding_values():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    boxes = torch.tensor([[[0.45, 0.35, 0.65, 0.75]]], dtype=torch.float64)
    loc, lab = ops.match_encode(priors, boxes, torch.tensor([[1]]), torch.tensor([1]), 0.5, 0.1, 0.2)
    expected = torch.tensor([(0.55 - 0.5) / (0.1 * 0.2), (0.55 - 0.5) / (0.1 * 0.4),
                             torch.log(torch.tensor(0.2 / 0.2)) / 0.2, torch.log(torch.tensor(0.4 / 0.4)) / 0.2],
                            dtype=torch.float64)
    torch.testing.assert_close(loc[0, 0], expected)


def test_threshold_is_inclusive():
    # Dyadic coordinates make IoU exactly 0.5 for prior 0; prior 1 is the gt itself (forced), so
    # prior 0 is positive only through the threshold, which is inclusive.
    priors = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.375, 0.5, 0.25, 0.5]])
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.75]]])
    iou = reference.box_iou(boxes[0], reference.point_form(priors))
    assert iou.tolist() == [[0.5, 1.0]]
    loc, lab = check(priors, boxes, torch.tensor([[2]]), torch.tensor([1]))
    assert lab.tolist() == [[2, 2]]
    loc, lab = check(priors, boxes, torch.tensor([[2]]), torch.tensor([1]), threshold=0.5001)
    assert lab.tolist() == [[0, 2]]


def test_opcheck(gen):
    priors = random_priors(30, gen)
    args = (priors, *make_targets(2, 4, gen, counts=[4, 1]), 0.5, 0.1, 0.2)
    torch.library.opcheck(torch.ops.mdssd.match_encode.default, args)
