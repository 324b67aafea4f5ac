"""Shared parts of the property-based differential fuzz suite (tests/test_fuzz_*.py): the devices
it runs the ops on, hypothesis settings, input strategies over the adversarial space (ties, +-0,
huge and tiny values, empty and single inputs, dtypes, strided and channels_last layouts,
extreme scalars) and comparisons against mdssd.reference.

Every example is built on the CPU; the op runs on each device of `fuzz_devices()` and is compared
with the reference evaluated on the same CPU inputs.

Modes (environment variables):
- default (CI): a fixed number of examples per test, derandomized (the same examples every run,
  no example database), about a minute for the whole suite on 2 cores;
- ``MDSSD_FUZZ_LONG=1``: random examples (a fresh search every run), 20,000 examples per test
  unless ``MDSSD_FUZZ_EXAMPLES`` says otherwise; hours in all. A failure prints the
  ``@reproduce_failure`` blob that replays it;
- ``MDSSD_FUZZ_EXAMPLES=N``: N examples per test in either mode.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz_devices() -> list[str]:
    """The devices the fuzz suite runs the ops on (the reference always runs on the CPU): the CPU,
    and the CUDA test device when there is one (a real GPU, else the emulated device of an
    MDSSD_CUDA_EMU=1 build: tests/devices.py decides)."""
    from devices import cuda_test_device

    cuda = cuda_test_device()
    return ["cpu"] + ([str(cuda)] if cuda is not None else [])


# ---- settings --------------------------------------------------------------------------------

LONG = os.environ.get("MDSSD_FUZZ_LONG", "") not in ("", "0")


def fuzz_settings(ci_examples: int):
    """Hypothesis settings for one test: `ci_examples` examples in CI (derandomized, no database),
    many random ones in the long mode."""
    examples = int(os.environ.get("MDSSD_FUZZ_EXAMPLES", 20_000 if LONG else ci_examples))
    return settings(
        max_examples=examples,
        derandomize=not LONG,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# ---- values ----------------------------------------------------------------------------------

FLOAT_DTYPES = [torch.float32, torch.float64]


def tiny(dtype: torch.dtype) -> float:
    """The smallest positive subnormal of `dtype`."""
    return float(torch.finfo(dtype).smallest_normal) * float(torch.finfo(dtype).eps)


def special_values(dtype: torch.dtype) -> list[float]:
    """Finite values that break naive code: signed zeros, subnormals, the extremes."""
    fi = torch.finfo(dtype)
    return [0.0, -0.0, 1.0, -1.0, 0.5, tiny(dtype), -tiny(dtype), float(fi.smallest_normal),
            float(fi.max), -float(fi.max), float(fi.max) / 4, 1e-30, 1e30, -1e30]


def coordinates(dtype: torch.dtype):
    """Box coordinates: mostly in [-0.5, 1.5] (where boxes live), some huge/tiny/special, drawn
    from few values so that ties and identical boxes are common."""
    common = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0])
    unit = st.floats(-0.5, 1.5, allow_nan=False, width=32 if dtype == torch.float32 else 64)
    return st.one_of(common, unit, st.sampled_from(special_values(dtype)))


@st.composite
def boxes(draw, dtype: torch.dtype, min_n: int = 0, max_n: int = 12, batch: int | None = None):
    """xyxy boxes [n,4] (or [batch,n,4]) with finite coordinates: regular, inverted, zero-size,
    duplicated."""
    n = draw(st.integers(min_n, max_n))
    count = n * (1 if batch is None else batch)
    pool = draw(st.lists(st.lists(coordinates(dtype), min_size=4, max_size=4), min_size=1, max_size=6))
    rows = []
    for _ in range(count):
        if draw(st.booleans()):
            rows.append(draw(st.sampled_from(pool)))  # a repeat: exact ties
        else:
            x1, y1 = draw(coordinates(dtype)), draw(coordinates(dtype))
            w, h = draw(st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0, -0.1])), draw(
                st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0, -0.1]))
            rows.append([x1, y1, x1 + w, y1 + h] if draw(st.booleans()) else draw(
                st.lists(coordinates(dtype), min_size=4, max_size=4)))
    t = torch.tensor(rows, dtype=torch.float64).reshape(*(() if batch is None else (batch,)), n, 4)
    return to_finite(t, dtype)


def to_finite(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, clamped to its finite range (sums of huge values can overflow)."""
    fi = torch.finfo(dtype)
    return t.clamp(-float(fi.max), float(fi.max)).to(dtype)


def scores(dtype: torch.dtype, n: int):
    """[n] scores with ties and signed zeros."""
    value = st.one_of(st.sampled_from([0.0, -0.0, 0.5, 1.0, 0.25, -1.0, 1e-30, 1e30]),
                      st.floats(-2, 2, allow_nan=False, width=32))
    return st.lists(value, min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=torch.float64).to(dtype))


# ---- layouts ---------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "strided", "transposed"]


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `t` in another memory layout: "strided" is a view of every other
    element along the first dim of a larger buffer, "transposed" reverses the dims' strides."""
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "strided":
        buf = torch.full((2 * max(t.shape[0], 1), *t.shape[1:]), 12345.0 if t.is_floating_point() else 7,
                         dtype=t.dtype, device=t.device)
        view = buf[::2][: t.shape[0]]
        view.copy_(t)
        return view
    if layout == "transposed":
        dims = list(range(t.dim()))[::-1]
        return t.permute(*dims).contiguous().permute(*dims)
    raise ValueError(layout)


# ---- comparisons -----------------------------------------------------------------------------


def to_device(args, device: str):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def on_device(tensors, device: str, layout: str) -> list[torch.Tensor]:
    """`tensors` moved to `device`, then given `layout` there (a move would make them dense)."""
    return [with_layout(t.to(device), layout) for t in tensors]


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 0.0) -> None:
    """Equal shape, dtype and values (NaN equal to NaN; -0 equal to +0), or within `rtol`."""
    actual = actual.cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=0, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor,
                          rtol: float, what: str) -> None:
    """|actual - expected| <= rtol * scale elementwise, with `scale` the magnitude of the terms
    that make up each element (so a tolerance relative to the value's own size, not a fixed
    atol that would pass a 100% error on values of 1e-13). Non-finite expected values must be
    matched exactly."""
    actual, expected, scale = actual.cpu().double(), expected.cpu().double(), scale.cpu().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite = torch.isfinite(expected)
    bad = ~finite & ~((actual == expected) | (torch.isnan(actual) & torch.isnan(expected)))
    err = (actual - expected).abs()
    bad |= finite & ~(err <= rtol * scale)
    if bad.any():
        i = tuple(int(k) for k in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; first at {i}: "
            f"got {actual[i].item()!r}, reference {expected[i].item()!r}, scale {scale[i].item()!r}, "
            f"rtol {rtol}")

