"""Issue 13's edge cases pinned on CUDA (checks in tests/edge_cases.py, compared with the
reference on the CPU), on the CUDA test device (tests/devices.py: a GPU, else the emulated
device, else skipped)."""

import pytest
import torch

import edge_cases as cases
import mdssd


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,x0,eps", cases.L2NORM_BACKWARD_CASES)
def test_l2norm_backward_extreme_norm(dtype, x0, eps, channels_last, cuda_device):
    cases.check_l2norm_backward_extreme_norm(cuda_device, dtype, x0, eps, channels_last)


@pytest.mark.parametrize("channels", [3, 300])  # register path and two-pass path
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,eps,x0", cases.TINY_EPS_CASES)
def test_l2norm_tiny_eps(dtype, eps, x0, channels_last, channels, cuda_device):
    if channels == 3:
        cases.check_l2norm_tiny_eps(cuda_device, dtype, eps, x0, channels_last)
        return
    # Many channels: the two-pass kernels; compare with the CPU kernel and the reference.
    gen = torch.Generator().manual_seed(13)
    a = torch.zeros(2, channels, 3, 3, dtype=torch.float64)
    a[0, :5] = x0 * torch.rand(5, 3, 3, generator=gen, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = a.to(dtype).contiguous(memory_format=fmt)
    scale_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    s = torch.rand(channels, generator=gen, dtype=torch.float64).to(scale_dtype) + 0.5
    grad = (torch.rand(a.shape, generator=gen, dtype=torch.float64) * 1e-10).to(dtype)
    outs = []
    for device in ("cpu", cuda_device):
        leaves = [t.detach().to(device).requires_grad_(True)
                  for t in (a, a.flip(0).contiguous(memory_format=fmt), s, s)]
        out = mdssd.ops.l2norm_sum(*leaves, eps)
        outs.append([out.detach().cpu(), *(t.cpu() for t in torch.autograd.grad(out, leaves, grad.to(device)))])
    for x, y in zip(*outs):
        assert torch.isfinite(y).all()
        scale = y.abs().amax().double().clamp_min(1e-300)
        assert ((x.double() - y.double()).abs() <= 2e-2 * scale).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_postprocess_nan_box(dtype, cuda_device):
    cases.check_postprocess_nan_box(cuda_device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_box_iou_is_zero(dtype, cuda_device):
    cases.check_nan_box_iou_is_zero(cuda_device, dtype)


def test_scalars_checked_in_kernel_type(cuda_device):
    cases.check_scalars_checked_in_kernel_type(cuda_device)


def test_reference_accepts_op_inputs(cuda_device):
    cases.check_reference_accepts_op_inputs(cuda_device)
