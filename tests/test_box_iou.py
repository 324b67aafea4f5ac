import pytest
import torch

from mdssd import ops, reference
from conftest import random_boxes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(1, 1), (7, 13), (300, 200)])
def test_matches_reference_bitwise(gen, dtype, n, m):
    a, b = random_boxes(n, gen, dtype), random_boxes(m, gen, dtype)
    torch.testing.assert_close(ops.box_iou(a, b), reference.box_iou(a, b), rtol=0, atol=0)


def test_batched(gen):
    a, b = random_boxes(50, gen, batch=3), random_boxes(40, gen, batch=3)
    out = ops.box_iou(a, b)
    assert out.shape == (3, 50, 40)
    torch.testing.assert_close(out, reference.box_iou(a, b), rtol=0, atol=0)
    for i in range(3):
        torch.testing.assert_close(out[i], ops.box_iou(a[i], b[i]), rtol=0, atol=0)


def test_largest_claimed_size(gen):
    # MDSSD512 priors against a crowded image; batched like the matching workload.
    a = random_boxes(50, gen, batch=2)
    b = random_boxes(90_100, gen, batch=2)
    torch.testing.assert_close(ops.box_iou(a, b), reference.box_iou(a, b), rtol=0, atol=0)


@pytest.mark.parametrize("n,m", [(0, 5), (5, 0), (0, 0)])
def test_empty(n, m):
    out = ops.box_iou(torch.zeros(n, 4), torch.zeros(m, 4))
    assert out.shape == (n, m)
    assert ops.box_iou(torch.zeros(2, n, 4), torch.zeros(2, m, 4)).shape == (2, n, m)


def test_degenerate_boxes_never_nan():
    boxes = torch.tensor(
        [
            [0.1, 0.1, 0.1, 0.1],  # zero area
            [0.5, 0.5, 0.2, 0.2],  # inverted: area 0
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 1.0, 1.0],  # identical to the previous box
            [0.3, 0.3, 0.3, 0.9],  # zero width
        ]
    )
    iou = ops.box_iou(boxes, boxes)
    assert torch.isfinite(iou).all()
    assert iou[0, 0] == 0 and iou[1, 1] == 0 and iou[4, 4] == 0  # empty union
    assert iou[2, 3] == 1 and iou[2, 2] == 1
    assert iou[1, 2] == 0  # an inverted box overlaps nothing
    torch.testing.assert_close(iou, reference.box_iou(boxes, boxes), rtol=0, atol=0)


def test_symmetry(gen):
    a, b = random_boxes(30, gen), random_boxes(20, gen)
    torch.testing.assert_close(ops.box_iou(a, b), ops.box_iou(b, a).T, rtol=0, atol=0)


def test_non_contiguous_inputs(gen):
    a = random_boxes(40, gen)[::2]
    b = random_boxes(30, gen, dtype=torch.float64).float().t().contiguous().t()
    torch.testing.assert_close(ops.box_iou(a, b), reference.box_iou(a, b), rtol=0, atol=0)


def test_opcheck(gen):
    a, b = random_boxes(6, gen), random_boxes(5, gen)
    torch.library.opcheck(torch.ops.mdssd.box_iou.default, (a, b))
    torch.library.opcheck(torch.ops.mdssd.box_iou.default, (a[None], b[None]))
