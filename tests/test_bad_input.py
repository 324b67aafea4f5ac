"""Bad input raises a clear RuntimeError naming the op and the problem, never a crash."""

import pytest
import torch

from mdssd import ops

B4 = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.7]])
PRIORS = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])


def gt(count=1):
    return B4[None].clone(), torch.tensor([[1, 2]]), torch.tensor([count])


def raises(match, fn, *args, **kwargs):
    with pytest.raises(RuntimeError, match=match):
        fn(*args, **kwargs)


def nan_boxes():
    b = B4.clone()
    b[1, 2] = float("nan")
    return b


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3), B4), r"box_iou: boxes1 must be \[N,4\]"),
        ((torch.zeros(3, 5), B4), r"box_iou: boxes1 must be \[N,4\]"),
        ((B4, B4[None]), r"box_iou: boxes2 must be \[M,4\]"),
        ((B4[None].expand(2, 2, 4), B4[None]), "box_iou: batch sizes differ"),
        ((B4.int(), B4.int()), "box_iou: boxes1 must be float32 or float64"),
        ((B4, B4.double()), "box_iou: boxes1 is Float but boxes2 is Double"),
        ((nan_boxes(), B4), "box_iou: boxes1 contains NaN or infinite values"),
        ((B4, B4 * float("inf")), "box_iou: boxes2 contains NaN or infinite values"),
    ],
)
def test_box_iou(args, match):
    raises(match, ops.box_iou, *args)


def test_match_encode_shapes_and_dtypes():
    boxes, labels, counts = gt()
    raises(r"priors must be \[P,4\]", ops.match_encode, PRIORS[:, :3], boxes, labels, counts)
    raises(r"gt_boxes must be \[B,G,4\]", ops.match_encode, PRIORS, boxes[0], labels, counts)
    raises(r"gt_labels must be \[B,G\] = \[1,2\]", ops.match_encode, PRIORS, boxes, labels[:, :1], counts)
    raises(r"gt_counts must be \[B\] = \[1\]", ops.match_encode, PRIORS, boxes, labels, torch.tensor([1, 1]))
    raises("gt_labels must be int64", ops.match_encode, PRIORS, boxes, labels.int(), counts)
    raises("gt_counts must be int64", ops.match_encode, PRIORS, boxes, labels, counts.int())
    raises("priors is Float but gt_boxes is Double", ops.match_encode, PRIORS, boxes.double(), labels, counts)
    raises(r"iou_threshold must be in \(0, 1\]", ops.match_encode, PRIORS, boxes, labels, counts, 0.0)
    raises("variances must be positive", ops.match_encode, PRIORS, boxes, labels, counts, 0.5, 0.0, 0.2)


def test_match_encode_values():
    boxes, labels, counts = gt()
    raises(r"gt_counts\[0\] = -1 is outside \[0, G = 2\]", ops.match_encode, PRIORS, boxes, labels, torch.tensor([-1]))
    raises(r"gt_counts\[0\] = 3 is outside \[0, G = 2\]", ops.match_encode, PRIORS, boxes, labels, torch.tensor([3]))
    bad = boxes.clone()
    bad[0, 0, 0] = float("nan")
    raises("gt_boxes of image 0 contain NaN", ops.match_encode, PRIORS, bad, labels, counts)
    bad[0, 0, 0] = 0.1
    bad[0, 1, 0] = float("nan")  # a padding row: never read, no error
    ops.match_encode(PRIORS, bad, labels, counts)
    raises("gt_labels of image 0 contain a label < 1", ops.match_encode, PRIORS, boxes, torch.tensor([[0, 2]]), counts)
    flat = PRIORS.clone()
    flat[1, 3] = 0
    raises("priors must have positive width and height", ops.match_encode, flat, boxes, labels, counts)


def test_l2norm_sum():
    a = torch.randn(1, 3, 2, 2)
    s = torch.ones(3)
    raises(r"l2norm_sum: a must be \[B,C,H,W\]", ops.l2norm_sum, a[0], a[0], s, s)
    raises("l2norm_sum: b must have a's shape", ops.l2norm_sum, a, a[:, :2], s, s)
    raises(r"l2norm_sum: scale_a must be \[C\] = \[3\]", ops.l2norm_sum, a, a, s[:2], s)
    raises(r"l2norm_sum: scale_b must be \[C\] = \[3\]", ops.l2norm_sum, a, a, s, s[None])
    raises("l2norm_sum: a must be float16, bfloat16, float32 or float64", ops.l2norm_sum, a.int(), a.int(), s, s)
    raises("l2norm_sum: a is Float but b is Double", ops.l2norm_sum, a, a.double(), s, s)
    raises("l2norm_sum: scales must be float32 or a's dtype", ops.l2norm_sum, a.double(), a.double(), s.half(), s.half())
    raises("l2norm_sum: eps must be positive", ops.l2norm_sum, a, a, s, s, 0.0)
    raises("l2norm_sum_backward: grad_out must have a's shape", torch.ops.mdssd.l2norm_sum_backward, a[:, :1], a, a, s, s, 1e-10)


def test_nms():
    scores = torch.tensor([0.5, 0.4])
    raises(r"nms: boxes must be \[N,4\]", ops.nms, B4[:, :3], scores, 0.5)
    raises(r"nms: scores must be \[N\] = \[2\]", ops.nms, B4, scores[:1], 0.5)
    raises("nms: boxes is Float but scores is Double", ops.nms, B4, scores.double(), 0.5)
    raises(r"nms: iou_threshold must be in \[0, 1\]", ops.nms, B4, scores, 1.5)
    raises("nms: boxes contains NaN", ops.nms, nan_boxes(), scores, 0.5)
    raises("nms: scores contains NaN", ops.nms, B4, torch.tensor([0.5, float("nan")]), 0.5)
    raises(r"batched_nms: idxs must be \[N\] = \[2\]", ops.batched_nms, B4, scores, torch.tensor([0]), 0.5)
    raises("batched_nms: idxs must be int64", ops.batched_nms, B4, scores, torch.tensor([0, 1], dtype=torch.int32), 0.5)
    raises("batched_nms: boxes contains NaN", ops.batched_nms, nan_boxes(), scores, torch.tensor([0, 1]), 0.5)


def test_ssd_postprocess():
    loc, conf, priors = torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), PRIORS
    args = (0.1, 0.2, 0.01, 0.45, 10, 10)
    f = ops.ssd_postprocess
    raises(r"loc must be \[B,P,4\]", f, loc[0], conf, priors, *args)
    raises(r"conf must be \[B,P,K\] with B,P = 1,2", f, loc, conf[:, :1], priors, *args)
    raises(r"priors must be \[P,4\] = \[2,4\]", f, loc, conf, priors[:1], *args)
    raises("loc is Float but conf is Double", f, loc, conf.double(), priors, *args)
    raises("loc must be float32 or float64", f, loc.half(), conf.half(), priors.half(), *args)
    raises("variances must be positive", f, loc, conf, priors, -0.1, 0.2, 0.01, 0.45, 10, 10)
    raises(r"score_threshold must be in \[0, 1\)", f, loc, conf, priors, 0.1, 0.2, 1.0, 0.45, 10, 10)
    raises("top_k_per_class must be >= 1", f, loc, conf, priors, 0.1, 0.2, 0.01, 0.45, 0, 10)
    raises("keep_top_k must be >= 1", f, loc, conf, priors, 0.1, 0.2, 0.01, 0.45, 10, 0)
    raises("ssd_postprocess: loc contains NaN", f, loc * float("nan"), conf, priors, *args)
    raises("ssd_postprocess: conf contains NaN", f, loc, conf * float("nan"), priors, *args)
