"""Issue 13's edge cases pinned on CPU (the checks are in tests/edge_cases.py; the CUDA run is
tests/test_cuda_edge_cases.py)."""

import pytest
import torch

import edge_cases as cases


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,x0,eps", cases.L2NORM_BACKWARD_CASES)
def test_l2norm_backward_extreme_norm(dtype, x0, eps, channels_last):
    cases.check_l2norm_backward_extreme_norm("cpu", dtype, x0, eps, channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,eps,x0", cases.TINY_EPS_CASES)
def test_l2norm_tiny_eps(dtype, eps, x0, channels_last):
    cases.check_l2norm_tiny_eps("cpu", dtype, eps, x0, channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_postprocess_nan_box(dtype):
    cases.check_postprocess_nan_box("cpu", dtype)


def test_scalars_checked_in_kernel_type():
    cases.check_scalars_checked_in_kernel_type("cpu")


def test_reference_accepts_op_inputs():
    cases.check_reference_accepts_op_inputs("cpu")
