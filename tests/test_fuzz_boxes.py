"""Property-based differential fuzzing of the box ops (box_iou, match_encode, nms, batched_nms,
ssd_postprocess) against mdssd.reference; modes and devices in tests/fuzz_strategies.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_strategies import (
    FLOAT_DTYPES,
    LAYOUTS,
    assert_same,
    boxes,
    coordinates,
    fuzz_devices,
    fuzz_settings,
    scores,
    on_device,
    to_finite,
)
from mdssd import ops, reference

DEVICES = fuzz_devices()


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(ci_examples=200)
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES), batched=st.booleans(),
       layout=st.sampled_from(LAYOUTS))
def test_box_iou(device, data, dtype, batched, layout):
    batch = data.draw(st.integers(0, 3)) if batched else None
    b1 = data.draw(boxes(dtype, batch=batch))
    b2 = data.draw(boxes(dtype, batch=batch))
    ours = ops.box_iou(*on_device([b1, b2], device, layout))
    assert_same(ours, reference.box_iou(b1, b2), "box_iou")


@st.composite
def priors(draw, dtype, min_n=0, max_n=10):
    """cxcywh priors with positive sizes (match_encode requires them), some tiny or huge."""
    n = draw(st.integers(min_n, max_n))
    size = st.one_of(st.sampled_from([0.1, 0.2, 0.5, 1.0, 1e-30, 1e30, 0.05]),
                     st.floats(2.0**-10, 2.0, width=32))
    rows = [[draw(coordinates(dtype)), draw(coordinates(dtype)), draw(size), draw(size)]
            for _ in range(n)]
    return to_finite(torch.tensor(rows, dtype=torch.float64).reshape(n, 4), dtype)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(ci_examples=200)
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES), layout=st.sampled_from(LAYOUTS))
def test_match_encode(device, data, dtype, layout):
    pr = data.draw(priors(dtype))
    batch = data.draw(st.integers(0, 3))
    gt = data.draw(boxes(dtype, batch=batch, max_n=6))
    num_gt = gt.shape[1]
    labels = torch.tensor(data.draw(st.lists(st.integers(1, 5), min_size=batch * num_gt,
                                             max_size=batch * num_gt))).view(batch, num_gt).long()
    counts = torch.tensor(data.draw(st.lists(st.integers(0, num_gt), min_size=batch, max_size=batch)),
                          dtype=torch.long)
    # Thresholds and variances that are valid in `dtype` (1e-45 is a float32 subnormal).
    threshold = data.draw(st.sampled_from([0.5, 1.0, 0.3, 1e-7, 1e-45, 0.999999]))
    vxy, vwh = data.draw(st.sampled_from([(0.1, 0.2), (1.0, 1.0), (1e-30, 1e-30), (1e30, 1e30)]))
    args = [pr, gt, labels, counts]
    ours = ops.match_encode(*on_device(args, device, layout), threshold, vxy, vwh)
    ref = reference.match_encode(*args, threshold, vxy, vwh)
    assert_same(ours[1], ref[1], "match_encode labels")
    assert_same(ours[0], ref[0], "match_encode loc")


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(ci_examples=200)
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES), layout=st.sampled_from(LAYOUTS),
       threshold=st.sampled_from([0.5, 0.0, 1.0, 0.3, 1e-50, 0.7]))
def test_nms(device, data, dtype, layout, threshold):
    b = data.draw(boxes(dtype, max_n=16))
    s = data.draw(scores(dtype, b.shape[0]))
    ours = ops.nms(*on_device([b, s], device, layout), threshold)
    assert_same(ours, reference.nms(b, s, threshold), "nms")


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(ci_examples=200)
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES), layout=st.sampled_from(LAYOUTS),
       threshold=st.sampled_from([0.5, 0.0, 1.0, 0.3]))
def test_batched_nms(device, data, dtype, layout, threshold):
    b = data.draw(boxes(dtype, max_n=16))
    n = b.shape[0]
    s = data.draw(scores(dtype, n))
    idxs = torch.tensor(data.draw(st.lists(st.sampled_from([0, 1, 2, -1, 2**40]), min_size=n, max_size=n)),
                        dtype=torch.long)
    ours = ops.batched_nms(*on_device([b, s, idxs], device, layout), threshold)
    assert_same(ours, reference.batched_nms(b, s, idxs, threshold), "batched_nms")


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(ci_examples=200)
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES), layout=st.sampled_from(LAYOUTS))
def test_ssd_postprocess(device, data, dtype, layout):
    batch = data.draw(st.integers(0, 2))
    num_priors = data.draw(st.integers(0, 10))
    num_classes = data.draw(st.integers(1, 4))
    # Priors may have zero or negative sizes here (ssd_postprocess accepts them).
    size = st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, -0.1, 1e-30, 1e30])
    pr = torch.tensor([[data.draw(coordinates(dtype)), data.draw(coordinates(dtype)),
                        data.draw(size), data.draw(size)] for _ in range(num_priors)],
                      dtype=torch.float64).reshape(num_priors, 4)
    offset = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e4, -1e4, 88.0, 1e30, -1e30]),
                       st.floats(-3, 3, width=32))
    logit = st.one_of(st.sampled_from([0.0, -0.0, 5.0, 4.0, -50.0, 100.0, 1e30, -1e30]),
                      st.floats(-8, 8, width=32))
    loc = torch.tensor(data.draw(st.lists(offset, min_size=batch * num_priors * 4,
                                          max_size=batch * num_priors * 4)), dtype=torch.float64)
    conf = torch.tensor(data.draw(st.lists(logit, min_size=batch * num_priors * num_classes,
                                           max_size=batch * num_priors * num_classes)),
                        dtype=torch.float64)
    loc = to_finite(loc.reshape(batch, num_priors, 4), dtype)
    conf = to_finite(conf.reshape(batch, num_priors, num_classes), dtype)
    pr = to_finite(pr, dtype)
    params = dict(
        variance_xy=data.draw(st.sampled_from([0.1, 1.0, 10.0])),
        variance_wh=data.draw(st.sampled_from([0.2, 1.0])),
        score_threshold=data.draw(st.sampled_from([0.01, 0.0, 0.5, 0.9])),
        iou_threshold=data.draw(st.sampled_from([0.45, 0.0, 1.0, 0.3])),
        top_k_per_class=data.draw(st.integers(1, num_priors + 2)),
        keep_top_k=data.draw(st.integers(1, 8)),
    )
    ours = ops.ssd_postprocess(*on_device([loc, conf, pr], device, layout), **params)
    ref = reference.ssd_postprocess(loc, conf, pr, **params)
    # float32 scores and boxes are correctly rounded (float64 softmax and exp) and agree bit for
    # bit; float64 ones may differ in the last bit between exp implementations (box_math.h).
    rtol = 0.0 if dtype == torch.float32 else 1e-15
    for name, x, y in zip(("boxes", "scores", "labels", "counts"), ours, ref):
        assert_same(x, y, f"ssd_postprocess {name}", rtol=rtol if name in ("boxes", "scores") else 0.0)
