"""CUDA kernel of ``ssd_postprocess`` against the CPU kernel and the reference. Skipped without a
CUDA device and a CUDA build of mdssd.

Softmax and the decode's exp are evaluated in float64 and rounded on both devices, so scores
and boxes are the correctly rounded values and agree bit for bit but in astronomically rare
cases; the tests still allow tolerances on values. In float64 the detections are compared row by
row. In float32 at full model sizes (millions of scores, tens of millions of IoU tests) the
detection sets are compared and a tiny fraction may differ, so that a one-in-10^8 rounding case
cannot fail the suite. Exact ties are tested on inputs whose tied values are bit-identical on
both devices (identical logits, zero size offsets).
"""

from __future__ import annotations

import pytest
import torch

import mdssd
from mdssd import ops, reference

pytestmark = pytest.mark.usefixtures("cuda_device")

DEFAULTS = dict(variance_xy=0.1, variance_wh=0.2, score_threshold=0.01, iou_threshold=0.45,
                top_k_per_class=400, keep_top_k=200)


def make_inputs(batch, num_priors, num_classes, dtype, seed, logit_scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand(num_priors, 2, generator=gen, dtype=torch.float64)
    size = 0.02 + 0.3 * torch.rand(num_priors, 2, generator=gen, dtype=torch.float64)
    priors = torch.cat([center, size], dim=1).to(dtype)
    loc = (0.5 * torch.randn(batch, num_priors, 4, generator=gen, dtype=torch.float64)).to(dtype)
    conf = (logit_scale * torch.randn(batch, num_priors, num_classes, generator=gen,
                                      dtype=torch.float64)).to(dtype)
    return loc, conf, priors


def run(loc, conf, priors, device, **kwargs):
    args = {**DEFAULTS, **kwargs}
    out = ops.ssd_postprocess(loc.to(device), conf.to(device), priors.to(device), **args)
    return tuple(t.cpu() for t in out)


def tolerances(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)


def assert_same_rows(got, want, dtype):
    """Row-by-row equality: labels and counts exact, boxes and scores within ulp-level tolerance."""
    gb, gs, gl, gc = got
    wb, ws, wl, wc = want
    assert gl.dtype == torch.long and gc.dtype == torch.long
    assert gb.dtype == dtype and gs.dtype == dtype
    torch.testing.assert_close(gc, wc, rtol=0, atol=0)
    torch.testing.assert_close(gl, wl, rtol=0, atol=0)
    torch.testing.assert_close(gs, ws, **tolerances(dtype))
    torch.testing.assert_close(gb, wb, **tolerances(dtype))


def assert_padding(out):
    boxes, scores, labels, counts = out
    keep = labels.shape[1]
    rows = torch.arange(keep)[None, :] >= counts[:, None]
    assert torch.all(labels[rows] == -1)
    assert torch.all(scores[rows] == 0)
    assert torch.all(boxes[rows] == 0)
    assert torch.all(labels[~rows] >= 1)


def assert_same_sets(got, want, dtype, max_unmatched_fraction=0.005):
    """Per image: nearly every detection of `want` has a detection in `got` with the same label,
    box and score up to float32 ulp noise, and the counts agree up to those few."""
    gb, gs, gl, gc = got
    wb, ws, wl, wc = want
    unmatched_total, detections_total = 0, 0
    for b in range(gb.shape[0]):
        n_got, n_want = int(gc[b]), int(wc[b])
        assert abs(n_got - n_want) <= max(2, int(max_unmatched_fraction * n_want))
        same_label = wl[b, :n_want, None] == gl[b, None, :n_got]
        close_box = (wb[b, :n_want, None, :] - gb[b, None, :n_got, :]).abs().amax(-1) <= 1e-5
        close_score = (ws[b, :n_want, None] - gs[b, None, :n_got]).abs() <= 1e-5
        matched = (same_label & close_box & close_score).any(dim=1)
        unmatched_total += int((~matched).sum())
        detections_total += n_want
    assert unmatched_total <= max(2, max_unmatched_fraction * detections_total), (
        f"{unmatched_total} of {detections_total} detections differ"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "batch,num_priors,num_classes",
    [(1, 1, 2), (2, 7, 3), (2, 64, 5), (3, 500, 5), (2, 2000, 21), (1, 129, 2)],
)
def test_matches_cpu_and_reference(cuda_device, dtype, batch, num_priors, num_classes):
    loc, conf, priors = make_inputs(batch, num_priors, num_classes, dtype, seed=num_priors)
    cuda = run(loc, conf, priors, cuda_device)
    cpu = run(loc, conf, priors, "cpu")
    assert_same_rows(cuda, cpu, dtype)
    ref = reference.ssd_postprocess(loc, conf, priors, **DEFAULTS)
    assert_same_rows(cuda, ref, dtype)
    assert_padding(cuda)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(top_k_per_class=5, keep_top_k=7),  # both limits bind
        dict(top_k_per_class=1, keep_top_k=1),
        dict(top_k_per_class=10_000, keep_top_k=10_000),  # larger than everything
        dict(iou_threshold=0.0),  # any overlap suppresses
        dict(iou_threshold=1.0),  # nothing suppresses
        dict(score_threshold=0.0),
        dict(score_threshold=0.3),
    ],
)
def test_parameters(cuda_device, dtype, kwargs):
    loc, conf, priors = make_inputs(2, 700, 6, dtype, seed=5)
    assert_same_rows(run(loc, conf, priors, cuda_device, **kwargs), run(loc, conf, priors, "cpu", **kwargs), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_top_k_uses_global_scratch(cuda_device, dtype):
    # top_k 1000: the per-(image, class) candidates and mask (> 46 KB) live in global memory;
    # top_k 3000: the mask has 47 words per row (more than warp 0's 32 lanes);
    # keep_top_k 5000: the per-image merge scratch lives in global memory too;
    # iou_threshold 1 (nothing suppressed): 3 x 2000 kept for 3000 slots, so the merge in global
    # memory runs its full selection instead of taking every kept detection.
    loc, conf, priors = make_inputs(2, 4000, 4, dtype, seed=9, logit_scale=1.0)
    for kwargs in (dict(top_k_per_class=1000), dict(top_k_per_class=3000, keep_top_k=5000),
                   dict(top_k_per_class=2000, keep_top_k=3000, iou_threshold=1.0)):
        cuda = run(loc, conf, priors, cuda_device, **kwargs)
        cpu = run(loc, conf, priors, "cpu", **kwargs)
        assert_same_rows(cuda, cpu, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_score_ties(cuda_device, dtype):
    # Every prior has the same logits and zero size offsets: all scores of a class are
    # bit-identical on each device, so top-k takes the lowest prior indices, NMS keeps the
    # lower-index box of an overlapping pair, and the merge orders tied scores by class, then
    # prior. Classes 1 and 2 also tie with each other.
    num_priors, num_classes = 1500, 4
    gen = torch.Generator().manual_seed(4)
    center = torch.rand(num_priors, 2, generator=gen, dtype=torch.float64)
    priors = torch.cat([center, torch.full((num_priors, 2), 0.1, dtype=torch.float64)], 1).to(dtype)
    loc = torch.zeros(2, num_priors, 4, dtype=dtype)
    loc[..., :2] = (0.3 * torch.randn(2, num_priors, 2, generator=gen, dtype=torch.float64)).to(dtype)
    conf = torch.tensor([0.0, 1.0, 1.0, 0.5], dtype=dtype).expand(2, num_priors, num_classes).contiguous()
    for kwargs in (dict(top_k_per_class=50, keep_top_k=120), dict(top_k_per_class=2000, keep_top_k=3000)):
        cuda = run(loc, conf, priors, cuda_device, **kwargs)
        cpu = run(loc, conf, priors, "cpu", **kwargs)
        assert_same_rows(cuda, cpu, dtype)
        ref = reference.ssd_postprocess(loc, conf, priors, **{**DEFAULTS, **kwargs})
        assert_same_rows(cuda, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_cases(cuda_device, dtype):
    loc, conf, priors = make_inputs(3, 300, 5, dtype, seed=2)
    # All scores under the threshold: nothing detected, every row is padding. (0.999 was not
    # enough: these inputs have scores up to 0.9999, on the CPU too.)
    out = run(loc, conf, priors, cuda_device, score_threshold=0.99999)
    assert out[3].tolist() == [0, 0, 0]
    assert_padding(out)
    assert_same_rows(out, run(loc, conf, priors, "cpu", score_threshold=0.99999), dtype)
    # Background only.
    out = run(loc, conf[..., :1].contiguous(), priors, cuda_device)
    assert out[3].tolist() == [0, 0, 0] and out[0].shape == (3, 200, 4)
    assert_padding(out)
    # Zero priors, and an empty batch.
    out = run(loc[:, :0], conf[:, :0], priors[:0], cuda_device)
    assert out[3].tolist() == [0, 0, 0]
    assert_padding(out)
    out = run(loc[:0], conf[:0], priors, cuda_device)
    assert [tuple(t.shape) for t in out] == [(0, 200, 4), (0, 200), (0, 200), (0,)]
    # Zero-area and inverted decoded boxes (clipping collapses them): IoU 0, never suppressed.
    far = loc.clone()
    far[..., :2] = 1000.0
    assert_same_rows(run(far, conf, priors, cuda_device), run(far, conf, priors, "cpu"), dtype)
    # Non-contiguous inputs (sliced on the device: a copy to the device would be contiguous).
    wide_conf = torch.cat([conf, conf], dim=2).to(cuda_device)[..., 5:]
    assert not wide_conf.is_contiguous()
    assert_same_rows(run(loc, wide_conf, priors, cuda_device), run(loc, conf, priors, "cpu"), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,num_priors", [(32, 31_232), (4, 90_100)])
def test_model_sizes(cuda_device, dtype, batch, num_priors):
    # MDSSD300 (31,232 priors, batch 32) and MDSSD512 (90,100 priors), 21 classes.
    loc, conf, priors = make_inputs(batch, num_priors, 21, dtype, seed=num_priors)
    cuda = run(loc, conf, priors, cuda_device)
    cpu = run(loc, conf, priors, "cpu")
    assert_padding(cuda)
    if dtype == torch.float64:
        assert_same_rows(cuda, cpu, dtype)
    else:
        assert_same_sets(cuda, cpu, dtype)
        # Against the reference on a slice of the batch (it loops in Python).
        ref = reference.ssd_postprocess(loc[:2], conf[:2], priors, **DEFAULTS)
        assert_same_sets(tuple(t[:2] for t in cuda), ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_determinism(cuda_device, dtype):
    loc, conf, priors = make_inputs(4, 3000, 21, dtype, seed=13)
    loc, conf, priors = loc.to(cuda_device), conf.to(cuda_device), priors.to(cuda_device)
    first = ops.ssd_postprocess(loc, conf, priors)
    second = ops.ssd_postprocess(loc, conf, priors)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cuda_graph_capture_and_replay(real_cuda_device):
    cuda_device = real_cuda_device
    loc, conf, priors = (t.to(cuda_device) for t in make_inputs(4, 3000, 21, torch.float32, seed=17))
    static = [loc.clone(), conf.clone(), priors.clone()]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as CUDA graphs require
        ops.ssd_postprocess(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = ops.ssd_postprocess(*static)
    for seed in (18, 19):
        new = [t.to(cuda_device) for t in make_inputs(4, 3000, 21, torch.float32, seed=seed)]
        for dst, src in zip(static, new):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        expected = ops.ssd_postprocess(*new)
        for a, b in zip(outputs, expected):
            assert torch.equal(a, b)


def test_opcheck(cuda_device):
    loc, conf, priors = (t.to(cuda_device) for t in make_inputs(2, 200, 5, torch.float32, seed=23))
    torch.library.opcheck(
        torch.ops.mdssd.ssd_postprocess.default, (loc, conf, priors, 0.1, 0.2, 0.01, 0.45, 50, 30)
    )


def test_argument_errors_match_cpu(cuda_device):
    loc, conf, priors = make_inputs(2, 10, 3, torch.float32, seed=1)
    for device in ("cpu", cuda_device):
        l, c, p = loc.to(device), conf.to(device), priors.to(device)
        with pytest.raises(RuntimeError, match="ssd_postprocess: loc must be"):
            ops.ssd_postprocess(l[..., :3], c, p)
        with pytest.raises(RuntimeError, match="top_k_per_class must be >= 1"):
            ops.ssd_postprocess(l, c, p, top_k_per_class=0)
        with pytest.raises(RuntimeError, match="score_threshold must be in"):
            ops.ssd_postprocess(l, c, p, score_threshold=1.0)
        with pytest.raises(RuntimeError, match="must be float32 or float64"):
            ops.ssd_postprocess(l.half(), c.half(), p.half())
    with pytest.raises(RuntimeError, match="is on"):
        ops.ssd_postprocess(loc.to(cuda_device), conf, priors.to(cuda_device))
