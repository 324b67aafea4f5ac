"""CUDA kernels of ``l2norm_sum`` (forward and backward) against the CPU kernels and the
reference (forward values; gradients against autograd of the reference), NCHW and
channels_last, float32/float64/float16/bfloat16, channel counts on both sides of the register
limit (256; 128 for float64), determinism of the scale gradients, opcheck. Skipped without a
CUDA device and a CUDA build of mdssd.
"""

from __future__ import annotations

import pytest
import torch

import mdssd
from mdssd import ops, reference
from devices import is_emulated

pytestmark = pytest.mark.usefixtures("cuda_device")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Forward/gradient tolerances (rtol, atol) per dtype: float32 accumulation for 16-bit types,
# so 16-bit results may differ from the CPU's by an ulp of the output type.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
# Channel counts: tiny, partial register slots, the register limit of float64 (128) and of the
# other types (256) and one past each (two-pass path), and large.
CHANNELS = [1, 3, 16, 100, 128, 129, 256, 257, 600]


def make_inputs(cuda_device, gen, shape, dtype, channels_last=False, scale_dtype=torch.float32):
    a = torch.randn(*shape, generator=gen, dtype=torch.float64)
    b = torch.randn(*shape, generator=gen, dtype=torch.float64)
    c = shape[1]
    sa = 10 + torch.randn(c, generator=gen, dtype=torch.float64)
    sb = 20 + torch.randn(c, generator=gen, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = a.to(dtype).to(cuda_device).contiguous(memory_format=fmt)
    b = b.to(dtype).to(cuda_device).contiguous(memory_format=fmt)
    return a, b, sa.to(scale_dtype).to(cuda_device), sb.to(scale_dtype).to(cuda_device)


def expected_format(a):
    cl = a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def check_forward(a, b, sa, sb, eps=1e-10):
    out = ops.l2norm_sum(a, b, sa, sb, eps)
    rtol, atol = TOL[a.dtype]
    assert out.dtype == a.dtype and out.device == a.device and out.shape == a.shape
    assert out.is_contiguous(memory_format=expected_format(a))
    cpu = ops.l2norm_sum(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), eps)
    torch.testing.assert_close(out.cpu(), cpu, rtol=rtol, atol=atol)
    ref = reference.l2norm_sum(a, b, sa, sb, eps)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", CHANNELS)
def test_forward_matches_cpu_and_reference(cuda_device, gen, dtype, channels_last, channels):
    check_forward(*make_inputs(cuda_device, gen, (2, channels, 7, 9), dtype, channels_last))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [75, 38])
def test_fusion_block_sizes(cuda_device, gen, dtype, channels_last, size):
    a, b, sa, sb = make_inputs(cuda_device, gen, (4, 256, size, size), dtype, channels_last)
    check_forward(a, b, sa, sb)
    check_backward(cuda_device, a, b, sa, sb)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_scales_in_input_dtype(cuda_device, gen, dtype):
    a, b, sa, sb = make_inputs(cuda_device, gen, (2, 40, 5, 6), dtype, scale_dtype=dtype)
    check_forward(a, b, sa, sb)
    check_backward(cuda_device, a, b, sa, sb)


def test_zero_pixels_use_the_clamp(cuda_device, gen):
    # All-zero pixels (norm 0 < eps) in a and in b, forward and backward.
    a, b, sa, sb = make_inputs(cuda_device, gen, (2, 32, 6, 6), torch.float32)
    a[:, :, 0, 0] = 0
    b[:, :, 1, 2] = 0
    a[1, :, 3, :] = 0
    out = check_forward(a, b, sa, sb)
    assert out.isfinite().all()
    check_backward(cuda_device, a, b, sa, sb)


def test_other_strides_are_made_contiguous(cuda_device, gen):
    a, b, sa, sb = make_inputs(cuda_device, gen, (2, 20, 8, 6), torch.float32)
    at, bt = a.transpose(2, 3), b.transpose(2, 3)  # neither NCHW- nor NHWC-contiguous
    out = check_forward(at, bt, sa, sb)
    assert out.is_contiguous()
    check_backward(cuda_device, at, bt, sa, sb)
    # Strided scales.
    sa2 = torch.stack([sa, sa], 1)[:, 0]
    assert not sa2.is_contiguous()
    check_forward(a, b, sa2, sb)


@pytest.mark.parametrize("shape", [(0, 8, 3, 3), (2, 8, 0, 4), (2, 0, 3, 3)])
def test_empty(cuda_device, gen, shape):
    a, b, sa, sb = make_inputs(cuda_device, gen, shape, torch.float32)
    out = ops.l2norm_sum(a, b, sa, sb)
    assert out.shape == a.shape
    ga, gb, gsa, gsb = torch.ops.mdssd.l2norm_sum_backward(torch.ones_like(a), a, b, sa, sb, 1e-10)
    assert ga.shape == a.shape and gsa.shape == sa.shape
    assert (gsa == 0).all() and (gsb == 0).all()


def gradient_scales(grad, x, s, eps):
    """Magnitudes of the terms that the gradients are made of, in float64: the error of a
    correctly computed gradient is relative to these, not to the result (for C = 1 the input
    gradient is 0 by exact cancellation of two terms of size |s g| / n)."""
    g, x, s = grad.double(), x.double(), s.double().view(1, -1, 1, 1)
    n = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)
    sg = s * g
    input_term = sg.abs() / n + torch.linalg.vector_norm(sg, dim=1, keepdim=True) / n
    scale_term = (g * x).abs().div(n).sum(dim=(0, 2, 3))
    return input_term, scale_term


def assert_close_to(got, want, rtol, atol, term):
    got, want = got.double().cpu(), want.double().cpu()
    bound = atol + rtol * (want.abs() + term.cpu())
    excess = (got - want).abs() - bound
    assert (excess <= 0).all(), (
        f"{int((excess > 0).sum())} of {got.numel()} elements off; worst by "
        f"{excess.max().item():.3g} beyond the bound"
    )


def check_backward(cuda_device, a, b, sa, sb, eps=1e-10):
    """Gradients of the CUDA op against autograd of the reference (computed in float64 for
    16-bit inputs) and against the CPU backward kernel."""
    gen = torch.Generator().manual_seed(1234)
    grad = torch.randn(a.shape, generator=gen, dtype=torch.float64).to(a.dtype).to(cuda_device)
    grad = grad.contiguous(memory_format=expected_format(a))
    got = torch.ops.mdssd.l2norm_sum_backward(grad, a, b, sa, sb, eps)
    assert got[0].is_contiguous(memory_format=expected_format(a))
    assert got[1].is_contiguous(memory_format=expected_format(a))
    assert got[2].dtype == sa.dtype and got[3].dtype == sb.dtype

    # The op's autograd goes through the same backward kernel.
    inputs = [t.detach().clone().requires_grad_(True) for t in (a, b, sa, sb)]
    ops.l2norm_sum(*inputs, eps).backward(grad)
    for g_op, t in zip(got, inputs):
        assert torch.equal(g_op, t.grad)

    # Tolerances: the inputs' dtype for the input gradients, the coarser of the inputs' and
    # the scales' dtypes for the scale gradients (they are rounded to the scales' dtype).
    rtol, atol = TOL[a.dtype]
    srtol, satol = max(TOL[a.dtype], TOL[sa.dtype])
    term_a, sterm_a = gradient_scales(grad, a, sa, eps)
    term_b, sterm_b = gradient_scales(grad, b, sb, eps)
    terms = [(rtol, atol, term_a), (rtol, atol, term_b), (srtol, satol, sterm_a),
             (srtol, satol, sterm_b)]

    # Autograd of the reference: same dtype for float32/float64, float64 for 16-bit inputs.
    ref_dtype = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float64
    ref_in = [t.detach().to(ref_dtype).requires_grad_(True) for t in (a, b, sa, sb)]
    reference.l2norm_sum(*ref_in, eps).backward(grad.to(ref_dtype))
    for g_op, t, (r, at, term) in zip(got, ref_in, terms):
        assert_close_to(g_op, t.grad, r, at, term)

    cpu = torch.ops.mdssd.l2norm_sum_backward(grad.cpu(), a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), eps)
    for g_op, g_cpu, (r, at, term) in zip(got, cpu, terms):
        assert_close_to(g_op, g_cpu, r, at, term)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", CHANNELS)
def test_backward_matches_autograd_of_reference(cuda_device, gen, dtype, channels_last, channels):
    check_backward(cuda_device, *make_inputs(cuda_device, gen, (3, channels, 5, 11), dtype, channels_last))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(cuda_device, gen, channels_last):
    # Finite differences in float64 (float32 on the CPU-comparable path is covered above).
    a, b, sa, sb = make_inputs(cuda_device, gen, (1, 5, 3, 2), torch.float64, channels_last,
                               scale_dtype=torch.float64)
    inputs = [t.detach().requires_grad_(True) for t in (a, b, sa, sb)]
    assert torch.autograd.gradcheck(lambda *x: ops.l2norm_sum(*x, 1e-10), inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [32, 300])
def test_clamp_with_small_nonzero_norms(cuda_device, gen, dtype, channels_last, channels):
    # Pixels with 0 < ||x|| < eps must drop the norm term of the gradient; all-zero pixels cannot
    # show it (x * k = 0 for any k). Unscaled norms ~ sqrt(C) > eps, scaled ones ~ 0.1 sqrt(C).
    a, b, sa, sb = make_inputs(cuda_device, gen, (2, channels, 6, 7), dtype, channels_last)
    a[:, :, ::2] *= 0.1
    b[:, :, 1::2] *= 0.1
    eps = 0.4 * channels ** 0.5
    check_forward(a, b, sa, sb, eps)
    check_backward(cuda_device, a, b, sa, sb, eps)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [16, 300])
def test_nan_spreads_over_its_pixel_only(cuda_device, gen, channels_last, channels):
    # As on CPU: max(NaN, eps) is NaN, so a NaN channel makes the whole pixel NaN (fmax would
    # return eps and give finite values ~ x / eps).
    a, b, sa, sb = make_inputs(cuda_device, gen, (2, channels, 3, 4), torch.float32, channels_last)
    a[1, channels // 2, 1, 2] = float("nan")
    out = ops.l2norm_sum(a, b, sa, sb)
    nan_pixel = torch.zeros(2, 1, 3, 4, dtype=torch.bool, device=cuda_device)
    nan_pixel[1, 0, 1, 2] = True
    assert out.isnan().equal(nan_pixel.expand_as(out))
    grad = torch.ones_like(out)
    cuda = torch.ops.mdssd.l2norm_sum_backward(grad, a, b, sa, sb, 1e-10)
    cpu = torch.ops.mdssd.l2norm_sum_backward(grad.cpu(), a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), 1e-10)
    assert cuda[0].isnan().equal(nan_pixel.expand_as(a))
    for x, y in zip(cuda, cpu):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [64, 300])
def test_backward_is_deterministic(cuda_device, gen, channels_last, channels):
    # More than 1024 tiles (NCHW 15 * 79 = 1185 tiles of 32 pixels, NHWC 15 * 157 = 2355 of 16),
    # so each backward block accumulates several tiles, across image boundaries, into its row of
    # partials (in NCHW the last block has fewer tiles): checked for values and repeatability.
    a, b, sa, sb = make_inputs(cuda_device, gen, (15, channels, 50, 50), torch.float32, channels_last)
    check_backward(cuda_device, a, b, sa, sb)
    grad = torch.randn_like(a)
    first = torch.ops.mdssd.l2norm_sum_backward(grad, a, b, sa, sb, 1e-10)
    second = torch.ops.mdssd.l2norm_sum_backward(grad, a, b, sa, sb, 1e-10)
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert torch.equal(ops.l2norm_sum(a, b, sa, sb), ops.l2norm_sum(a, b, sa, sb))


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(cuda_device, gen, channels_last):
    a, b, sa, sb = make_inputs(cuda_device, gen, (2, 12, 5, 4), torch.float32, channels_last)
    inputs = [t.requires_grad_(True) for t in (a, b, sa, sb)]
    # torch's autograd-registration check runs only on CPU/CUDA/XPU tensors ("NYI" for others):
    # on the emulated device the other three checks run (the autograd formula itself is
    # checked against the reference in test_backward_matches_autograd_of_reference).
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if is_emulated(cuda_device):
        checks = tuple(c for c in checks if c != "test_autograd_registration")
    torch.library.opcheck(torch.ops.mdssd.l2norm_sum.default, (*inputs, 1e-10), test_utils=checks)
    grad = torch.randn_like(a)
    torch.library.opcheck(torch.ops.mdssd.l2norm_sum_backward.default,
                          (grad, a.detach(), b.detach(), sa.detach(), sb.detach(), 1e-10))


def test_argument_errors_match_cpu(cuda_device, gen):
    a, b, sa, sb = make_inputs(cuda_device, gen, (1, 4, 2, 2), torch.float32)
    with pytest.raises(RuntimeError, match="l2norm_sum: scale_a must be"):
        ops.l2norm_sum(a, b, sa[:3], sb)
    with pytest.raises(RuntimeError, match="l2norm_sum: b must have"):
        ops.l2norm_sum(a, b[:, :2], sa, sb)
    with pytest.raises(RuntimeError, match="l2norm_sum_backward: grad_out must have"):
        torch.ops.mdssd.l2norm_sum_backward(a[:, :2], a, b, sa, sb, 1e-10)
