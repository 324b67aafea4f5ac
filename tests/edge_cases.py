"""The five edge cases of issue 13 (found by differential fuzzing), as checks that take a device.

tests/test_edge_cases.py runs them on CPU and tests/test_cuda_edge_cases.py on CUDA. Inputs are
made on the CPU; the op runs on `device` and is compared with mdssd.reference evaluated on the
same inputs on the CPU (and with the exact value where one is known).
"""

from __future__ import annotations

import pytest
import torch

from mdssd import ops, reference


def _pixel_map(values, dtype, channels_last, device):
    """[1, C, 2, 2] with every pixel equal to `values` (C channels), in the given layout."""
    x = torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1).expand(1, len(values), 2, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype).contiguous(memory_format=fmt).to(device)


def _l2norm_grads(fn, a, b, sa, sb, eps, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in (a, b, sa, sb)]
    out = fn(*leaves, eps)
    return out.detach(), torch.autograd.grad(out, leaves, grad)


def _close(actual, expected, rtol, scale):
    """|actual - expected| <= rtol * scale elementwise (scale: the gradient's own magnitude)."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert torch.isfinite(actual).all(), actual
    err = (actual - expected).abs()
    assert (err <= rtol * scale).all(), (actual, expected)


# Case 1: backward with huge and tiny norms. x = [big, 0] (and [tiny, 0] with a smaller eps), b = 1,
# scales 1, grad 1: the exact gradient is [0, 1/|x|] (the projection removes the x direction).
L2NORM_BACKWARD_CASES = [
    # dtype, x0, eps
    (torch.float32, 1e13, 1e-10),  # n^3 = 1e39 overflows float32
    (torch.float32, 1e-16, 1e-30),  # n^3 = 1e-48 underflows float32
    (torch.bfloat16, 1e13, 1e-10),
    (torch.bfloat16, 1e-16, 1e-30),
    (torch.float64, 1e150, 1e-10),  # n^3 = 1e450 overflows float64
    (torch.float64, 1e-150, 1e-300),
]


def check_l2norm_backward_extreme_norm(device, dtype, x0, eps, channels_last):
    a = _pixel_map([x0, 0.0], dtype, channels_last, device)
    b = _pixel_map([1.0, 1.0], dtype, channels_last, device)
    scale_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    sa = torch.ones(2, dtype=scale_dtype, device=device)
    sb = torch.ones(2, dtype=scale_dtype, device=device)
    grad = torch.ones_like(a)
    _, ours = _l2norm_grads(ops.l2norm_sum, a, b, sa, sb, eps, grad)
    cpu = [t.cpu() for t in (a, b, sa, sb)]
    _, ref = _l2norm_grads(reference.l2norm_sum, *cpu, eps, grad.cpu())
    x0_stored = float(a[0, 0, 0, 0])
    exact = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    exact[:, 1] = 1 / x0_stored
    rtol = 1e-12 if dtype == torch.float64 else (2e-2 if dtype == torch.bfloat16 else 1e-6)
    scale = 1 / x0_stored  # |s g| / n: the size of both terms of the gradient
    _close(ours[0], exact, rtol, scale)
    _close(ref[0], exact, rtol, scale)  # the reference states the same value
    _close(ours[0], ref[0], rtol, scale)
    # Scale gradient of a: sum over the 4 pixels of g * x / n = [4, 0].
    _close(ours[2], torch.tensor([4.0, 0.0]), rtol, 4.0)


# Case 2: eps below 1/FLT_MAX (1/DBL_MAX in float64): 1/eps overflows, but x / eps does not.
TINY_EPS_CASES = [
    # dtype, eps, x0 (squares to 0, so the norm is clamped to eps)
    (torch.float32, 1e-40, 1e-30),
    (torch.bfloat16, 1e-40, 1e-30),
    (torch.float64, 1e-310, 1e-170),
]


def check_l2norm_tiny_eps(device, dtype, eps, x0, channels_last):
    scale_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    zeros = _pixel_map([0.0, 0.0, 0.0], dtype, channels_last, device)
    small = _pixel_map([x0, 0.0, 0.0], dtype, channels_last, device)
    s = torch.ones(3, dtype=scale_dtype, device=device)
    # An all-zero pixel: 0, the very case the clamp exists for (was NaN).
    out = ops.l2norm_sum(zeros, zeros, s, s, eps)
    assert (out == 0).all(), out
    # A non-zero pixel whose norm underflows to 0: x / eps, finite (was inf).
    out = ops.l2norm_sum(small, zeros, s, s, eps)
    ref = reference.l2norm_sum(small.cpu(), zeros.cpu(), s.cpu(), s.cpu(), eps)
    x0_stored = float(small[0, 0, 0, 0])
    eps_used = float(torch.tensor(eps, dtype=scale_dtype))
    expect = x0_stored / eps_used
    rtol = 1e-12 if dtype == torch.float64 else (2e-2 if dtype == torch.bfloat16 else 1e-6)
    _close(out[:, 0], torch.full((1, 2, 2), expect, dtype=torch.float64), rtol, expect)
    _close(ref[:, 0], torch.full((1, 2, 2), expect, dtype=torch.float64), rtol, expect)
    assert (out[:, 1:] == 0).all()
    # Backward: the clamp holds, so grad = s g / eps; g chosen so that it is finite.
    g_value = 1e-10 if dtype != torch.float64 else 1e-300
    grad = torch.full_like(zeros, g_value)
    _, ours = _l2norm_grads(ops.l2norm_sum, small, zeros, s, s, eps, grad)
    _, ref = _l2norm_grads(reference.l2norm_sum, small.cpu(), zeros.cpu(), s.cpu(), s.cpu(), eps,
                           grad.cpu())
    g_stored = float(grad[0, 0, 0, 0])
    expect = g_stored / eps_used
    for x, y in zip(ours[:2], ref[:2]):
        _close(x, torch.full(x.shape, expect, dtype=torch.float64), rtol, expect)
        _close(y, torch.full(y.shape, expect, dtype=torch.float64), rtol, expect)
    # Scale gradients: sum of g * x / eps over the 4 pixels (channel 0 of a only).
    ds = 4 * g_stored * (x0_stored / eps_used)
    _close(ours[2], torch.tensor([ds, 0.0, 0.0], dtype=torch.float64), rtol, ds)
    _close(ours[3], torch.zeros(3), rtol, ds)


# Case 3: a zero-size prior with a huge size offset decodes to a NaN box (0 * exp(2000)).
def check_postprocess_nan_box(device, dtype):
    loc = torch.tensor([[[0, 0, 1e4, 0], [0, 0, 0, 0]]], dtype=dtype)
    conf = torch.tensor([[[0, 5], [0, 4]]], dtype=dtype)
    priors = torch.tensor([[0.5, 0.5, 0.0, 0.4], [0.5, 0.5, 0.5, 0.5]], dtype=dtype)
    args = (0.1, 0.2, 0.01, 0.45, 10, 10)
    ours = ops.ssd_postprocess(loc.to(device), conf.to(device), priors.to(device), *args)
    ref = reference.ssd_postprocess(loc, conf, priors, *args)
    assert int(ours[3][0]) == int(ref[3][0]) == 2  # the NaN box suppressed the real one before
    for x, y in zip(ours[:3], ref[:3]):
        torch.testing.assert_close(x.cpu(), y, equal_nan=True)
    assert torch.isnan(ours[0][0, 0, 0]) and not torch.isnan(ours[0][0, 1]).any()


def check_nan_box_iou_is_zero(device, dtype):
    """A box with a NaN coordinate has IoU 0 with everything (union NaN), as in the reference.
    Only CUDA accepts NaN boxes in box_iou/nms (the CPU kernels reject them)."""
    boxes = torch.tensor([[float("nan"), 0.3, float("nan"), 0.7], [0.4, 0.2, 0.6, 0.8],
                          [0.4, 0.2, 0.6, 0.8]], dtype=dtype)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=dtype)
    iou = ops.box_iou(boxes.to(device), boxes.to(device)).cpu()
    ref = reference.box_iou(boxes, boxes)
    assert (iou[0] == 0).all() and (iou[:, 0] == 0).all(), iou
    torch.testing.assert_close(iou, ref)
    keep = ops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert keep.tolist() == reference.nms(boxes, scores, 0.5).tolist() == [0, 1]


# Case 4: scalars are checked as the kernel uses them (float32 for float32 data).
def check_scalars_checked_in_kernel_type(device):
    a = torch.randn(1, 3, 2, 2, device=device)
    s = torch.ones(3, device=device)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with pytest.raises(RuntimeError, match=r"l2norm_sum: eps must be positive, got 1e-50 \(0 in float32\)"):
            ops.l2norm_sum(a.to(dtype), a.to(dtype), s, s, 1e-50)
    with pytest.raises(RuntimeError, match=r"l2norm_sum_backward: eps must be positive"):
        torch.ops.mdssd.l2norm_sum_backward(a, a, a, s, s, 1e-50)
    # float64 computes in float64: 1e-50 is a valid eps there.
    a64, s64 = a.double(), s.double()
    torch.testing.assert_close(ops.l2norm_sum(a64, a64, s64, s64, 1e-50).cpu(),
                               reference.l2norm_sum(a64.cpu(), a64.cpu(), s64.cpu(), s64.cpu(), 1e-50))

    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]], device=device)
    gt_boxes = torch.tensor([[[0.2, 0.2, 0.4, 0.4]]], device=device)
    gt_labels = torch.tensor([[1]], device=device)
    gt_counts = torch.tensor([1], device=device)
    me = (priors, gt_boxes, gt_labels, gt_counts)
    with pytest.raises(RuntimeError, match=r"match_encode: iou_threshold must be in \(0, 1\], got 1e-50 \(0 in float32\)"):
        ops.match_encode(*me, 1e-50)
    with pytest.raises(RuntimeError, match="match_encode: variances must be positive and finite"):
        ops.match_encode(*me, 0.5, 1e-50, 0.2)
    with pytest.raises(RuntimeError, match="match_encode: variances must be positive and finite"):
        ops.match_encode(*me, 0.5, 0.1, 1e39)  # inf in float32
    # float64: the same scalars are representable and accepted.
    me64 = (priors.double(), gt_boxes.double(), gt_labels, gt_counts)
    loc, labels = ops.match_encode(*me64, 1e-50)
    ref = reference.match_encode(*(t.cpu() for t in me64), 1e-50)
    torch.testing.assert_close(loc.cpu(), ref[0])
    assert labels.cpu().tolist() == ref[1].tolist()

    loc = torch.zeros(1, 2, 4, device=device)
    conf = torch.zeros(1, 2, 3, device=device)
    pp = (loc, conf, priors)
    with pytest.raises(RuntimeError, match="ssd_postprocess: variances must be positive and finite"):
        ops.ssd_postprocess(*pp, 1e-50, 0.2, 0.01, 0.45, 10, 10)
    with pytest.raises(RuntimeError, match=r"ssd_postprocess: score_threshold must be in \[0, 1\), got .* \(1 in float32\)"):
        ops.ssd_postprocess(*pp, 0.1, 0.2, 1 - 1e-12, 0.45, 10, 10)
    ops.ssd_postprocess(loc.double(), conf.double(), priors.double(), 0.1, 0.2, 1 - 1e-12, 0.45, 10, 10)


# Case 5: the reference handles every input the ops accept.
def check_reference_accepts_op_inputs(device):
    # ssd_postprocess with one class (background only): no detections.
    loc, conf = torch.zeros(2, 3, 4), torch.randn(2, 3, 1)
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 3)
    args = (0.1, 0.2, 0.01, 0.45, 5, 4)
    ours = ops.ssd_postprocess(loc.to(device), conf.to(device), priors.to(device), *args)
    ref = reference.ssd_postprocess(loc, conf, priors, *args)
    for x, y in zip(ours, ref):
        assert x.shape == y.shape and x.dtype == y.dtype
        torch.testing.assert_close(x.cpu(), y)
    assert ref[3].tolist() == [0, 0]
    # match_encode with no priors and real ground truths.
    gt = (torch.tensor([[[0.1, 0.1, 0.4, 0.4]]]), torch.tensor([[3]]), torch.tensor([1]))
    no_priors = torch.zeros(0, 4)
    ours = ops.match_encode(no_priors.to(device), *(t.to(device) for t in gt))
    ref = reference.match_encode(no_priors, *gt)
    for x, y in zip(ours, ref):
        assert x.shape == y.shape == (1, 0, 4)[: y.dim()] and x.dtype == y.dtype
