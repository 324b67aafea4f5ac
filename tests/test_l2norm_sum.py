import pytest
import torch

from mdssd import ops, reference


def inputs(shape, gen, dtype=torch.float32, channels_last=False, requires_grad=False):
    channels = shape[1]
    a = torch.randn(shape, generator=gen, dtype=torch.float64)
    b = torch.randn(shape, generator=gen, dtype=torch.float64)
    sa = 10 + torch.randn(channels, generator=gen, dtype=torch.float64)
    sb = 20 + torch.randn(channels, generator=gen, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a, b = (t.to(dtype).contiguous(memory_format=fmt) for t in (a, b))
    scale_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    sa, sb = sa.to(scale_dtype), sb.to(scale_dtype)
    return [t.requires_grad_(requires_grad) for t in (a, b, sa, sb)]


TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (2, 256, 19, 19)])
def test_forward_matches_reference(gen, dtype, channels_last, shape):
    a, b, sa, sb = inputs(shape, gen, dtype, channels_last)
    out = ops.l2norm_sum(a, b, sa, sb, 1e-10)
    assert out.dtype == dtype
    if channels_last and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference.l2norm_sum(a, b, sa, sb, 1e-10), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
# One block (part of one), several blocks of an image with a partial last one (NCHW: [1,16,40,40]
# is cut into 4 blocks); channel counts that do and do not fill the 16 partial sums.
# (Not C = 1: there dx = s g (1 - x^2 / n^2) / n cancels exactly, and float32 rounding leaves
# ~1e-7 s g / n, beyond a fixed tolerance when |x| is small.)
@pytest.mark.parametrize("shape", [(2, 64, 9, 11), (3, 13, 10, 13), (1, 5, 1, 1), (1, 16, 40, 40)])
def test_backward_matches_autograd_of_reference(gen, dtype, channels_last, shape):
    a, b, sa, sb = inputs(shape, gen, dtype, channels_last, requires_grad=True)
    grad = torch.randn(a.shape, generator=gen).to(dtype)
    ours = torch.autograd.grad(ops.l2norm_sum(a, b, sa, sb, 1e-10), (a, b, sa, sb), grad)
    ref = torch.autograd.grad(reference.l2norm_sum(a, b, sa, sb, 1e-10), (a, b, sa, sb), grad)
    for x, y in zip(ours, ref):
        assert x.dtype == y.dtype
        # Scale gradients sum over every pixel: relative tolerance scaled for bf16's 8-bit mantissa.
        torch.testing.assert_close(x, y, **TOL[dtype])


def test_gradcheck_float64(gen):
    a, b, sa, sb = inputs((2, 5, 3, 4), gen, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: ops.l2norm_sum(*t, 1e-10), (a, b, sa, sb))


def test_gradcheck_clamped_norm(gen):
    # Pixels whose norm is below eps take the constant-denominator branch of the gradient.
    a, b, sa, sb = inputs((1, 4, 2, 3), gen, torch.float64)
    a = (a * 1e-4).detach()
    a[0, :, 0, 0] = 0  # an all-zero pixel: norm 0, gradient s * g / eps, no NaN
    for t in (a, b, sa, sb):
        t.requires_grad_(True)
    fn = lambda *t: ops.l2norm_sum(*t, 1e-2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b, sa, sb))
    grads = torch.autograd.grad(fn(a, b, sa, sb).sum(), (a, b, sa, sb))
    ref = torch.autograd.grad(reference.l2norm_sum(a, b, sa, sb, 1e-2).sum(), (a, b, sa, sb))
    for x, y in zip(grads, ref):
        torch.testing.assert_close(x, y)


def test_zero_input_no_nan():
    a = torch.zeros(1, 8, 2, 2, requires_grad=True)
    b = torch.zeros(1, 8, 2, 2, requires_grad=True)
    sa, sb = torch.full((8,), 10.0, requires_grad=True), torch.full((8,), 20.0, requires_grad=True)
    out = ops.l2norm_sum(a, b, sa, sb, 1e-10)
    assert (out == 0).all()
    out.sum().backward()
    for t in (a, b, sa, sb):
        assert torch.isfinite(t.grad).all()


def test_scale_gradient_is_deterministic(gen):
    a, b, sa, sb = inputs((3, 32, 40, 40), gen, requires_grad=True)
    grad = torch.randn(a.shape, generator=gen)
    first = torch.autograd.grad(ops.l2norm_sum(a, b, sa, sb), (a, b, sa, sb), grad)
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            again = torch.autograd.grad(ops.l2norm_sum(a, b, sa, sb), (a, b, sa, sb), grad)
        finally:
            torch.set_num_threads(previous)
        for x, y in zip(first, again):
            assert torch.equal(x, y)


@pytest.mark.parametrize("channels_last", [False, True])
def test_nan_spreads_over_its_pixel_only(gen, channels_last):
    # max(NaN, eps) is NaN (as torch's clamp_min): a NaN channel makes its pixel's outputs and
    # a-gradients NaN, never a finite value divided by eps; other pixels stay finite.
    a, b, sa, sb = inputs((2, 12, 3, 4), gen, channels_last=channels_last)
    a[1, 5, 1, 2] = float("nan")
    for t in (a, b, sa, sb):
        t.requires_grad_(True)
    out = ops.l2norm_sum(a, b, sa, sb)
    nan_pixel = torch.zeros(2, 1, 3, 4, dtype=torch.bool)
    nan_pixel[1, 0, 1, 2] = True
    assert out.isnan().equal(nan_pixel.expand_as(out))
    grads = torch.autograd.grad(out, (a, b, sa, sb), torch.ones_like(out))
    assert grads[0].isnan().equal(nan_pixel.expand_as(a)) and grads[1].isfinite().all()
    ref = torch.autograd.grad(reference.l2norm_sum(a, b, sa, sb), (a, b, sa, sb), torch.ones_like(out))
    for x, y in zip(grads, ref):
        torch.testing.assert_close(x, y, equal_nan=True)


def test_empty():
    a = torch.zeros(0, 4, 3, 3, requires_grad=True)
    out = ops.l2norm_sum(a, a, torch.ones(4), torch.ones(4))
    assert out.shape == a.shape
    out.sum().backward()


def test_non_contiguous_input(gen):
    a, b, sa, sb = inputs((2, 6, 8, 8), gen)
    a2 = a[:, :, ::2, ::2]
    b2 = b[:, :, ::2, ::2]
    torch.testing.assert_close(ops.l2norm_sum(a2, b2, sa, sb), reference.l2norm_sum(a2, b2, sa, sb))


def test_opcheck(gen):
    for channels_last in (False, True):
        a, b, sa, sb = inputs((2, 4, 3, 5), gen, channels_last=channels_last, requires_grad=True)
        torch.library.opcheck(torch.ops.mdssd.l2norm_sum.default, (a, b, sa, sb, 1e-10))
        g = torch.randn(a.shape, generator=gen).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.library.opcheck(torch.ops.mdssd.l2norm_sum_backward.default,
                              (g, a.detach(), b.detach(), sa.detach(), sb.detach(), 1e-10))
