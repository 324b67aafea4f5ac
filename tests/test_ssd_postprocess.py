import pytest
import torch

from mdssd import ops, reference
from conftest import random_priors

DEFAULTS = dict(variance_xy=0.1, variance_wh=0.2, score_threshold=0.01, iou_threshold=0.45,
                top_k_per_class=400, keep_top_k=200)


def make_inputs(batch, num_priors, num_classes, gen, dtype=torch.float32, peaky=4.0):
    priors = random_priors(num_priors, gen, dtype)
    loc = (0.5 * torch.randn(batch, num_priors, 4, generator=gen, dtype=torch.float64)).to(dtype)
    conf = (peaky * torch.randn(batch, num_priors, num_classes, generator=gen, dtype=torch.float64)).to(dtype)
    return loc, conf, priors


def assert_same(out, ref, exact_boxes=False):
    boxes, scores, labels, counts = out
    rboxes, rscores, rlabels, rcounts = ref
    assert torch.equal(counts, rcounts)
    assert torch.equal(labels, rlabels)
    torch.testing.assert_close(scores, rscores, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(boxes, rboxes, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,num_priors,num_classes", [(1, 1, 2), (2, 300, 5), (3, 2000, 21)])
def test_matches_reference(gen, dtype, batch, num_priors, num_classes):
    loc, conf, priors = make_inputs(batch, num_priors, num_classes, gen, dtype)
    params = dict(DEFAULTS, top_k_per_class=50, keep_top_k=60)
    out = ops.ssd_postprocess(loc, conf, priors, **params)
    assert_same(out, reference.ssd_postprocess(loc, conf, priors, **params))


def test_mdssd300_size(gen):
    # Full MDSSD300 workload (31,232 priors, 21 classes) with the SSD defaults.
    loc, conf, priors = make_inputs(2, 31_232, 21, gen, peaky=3.0)
    out = ops.ssd_postprocess(loc, conf, priors, **DEFAULTS)
    assert out[3].tolist() == [200, 200]
    assert_same(out, reference.ssd_postprocess(loc, conf, priors, **DEFAULTS))


def test_mdssd512_size(gen):
    # The largest prior count we claim (MDSSD512: 90,100 priors).
    loc, conf, priors = make_inputs(1, 90_100, 21, gen, peaky=3.0)
    out = ops.ssd_postprocess(loc, conf, priors, **DEFAULTS)
    assert_same(out, reference.ssd_postprocess(loc, conf, priors, **DEFAULTS))


def test_output_layout_and_padding(gen):
    loc, conf, priors = make_inputs(2, 40, 3, gen)
    conf[1] = -20.0
    conf[1, :, 0] = 20.0  # image 1: background everywhere, so no detection
    boxes, scores, labels, counts = ops.ssd_postprocess(loc, conf, priors, **dict(DEFAULTS, keep_top_k=30))
    assert boxes.shape == (2, 30, 4) and scores.shape == (2, 30) and labels.shape == (2, 30)
    assert counts[1] == 0 and (labels[1] == -1).all() and (boxes[1] == 0).all() and (scores[1] == 0).all()
    n = counts[0]
    assert (labels[0, :n] >= 1).all() and (labels[0, n:] == -1).all() and (scores[0, n:] == 0).all()
    assert (scores[0, :n][:-1] >= scores[0, :n][1:]).all()
    assert (boxes >= 0).all() and (boxes <= 1).all()


def test_all_scores_under_threshold(gen):
    loc, conf, priors = make_inputs(2, 100, 4, gen)
    out = ops.ssd_postprocess(loc, torch.zeros_like(conf), priors, **dict(DEFAULTS, score_threshold=0.25))
    assert (out[3] == 0).all() and (out[2] == -1).all()


def test_background_only_classes(gen):
    loc, conf, priors = make_inputs(1, 10, 1, gen)
    out = ops.ssd_postprocess(loc, conf, priors, **DEFAULTS)
    assert out[3].tolist() == [0]


def test_exact_score_ties(gen):
    # Every prior has the same logits: all scores tie. Ranking falls back to (class, prior index),
    # and identical boxes are suppressed in favour of the lowest prior index.
    num_priors = 12
    priors = torch.tensor([[0.2 + 0.05 * (i % 4), 0.5, 0.1, 0.1] for i in range(num_priors)])
    loc = torch.zeros(1, num_priors, 4)
    conf = torch.zeros(1, num_priors, 3)
    params = dict(DEFAULTS, keep_top_k=100)
    out = ops.ssd_postprocess(loc, conf, priors, **params)
    assert_same(out, reference.ssd_postprocess(loc, conf, priors, **params))
    labels, counts = out[2][0], out[3][0]
    assert counts == 8  # 4 distinct boxes per class (0.05 apart, IoU 1/3 < 0.45), 2 classes
    assert labels[:8].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]


def test_top_k_limits(gen):
    loc, conf, priors = make_inputs(1, 500, 3, gen, peaky=0.1)
    params = dict(DEFAULTS, top_k_per_class=7, keep_top_k=10, iou_threshold=1.0)
    out = ops.ssd_postprocess(loc, conf, priors, **params)
    assert out[3].item() == 10
    assert_same(out, reference.ssd_postprocess(loc, conf, priors, **params))
    params = dict(params, keep_top_k=100)
    out = ops.ssd_postprocess(loc, conf, priors, **params)
    assert out[3].item() == 14  # 7 per class, 2 foreground classes, nothing suppressed


def test_empty_batch_and_priors(gen):
    out = ops.ssd_postprocess(torch.zeros(0, 5, 4), torch.zeros(0, 5, 3), torch.rand(5, 4), **DEFAULTS)
    assert out[0].shape == (0, 200, 4) and out[3].shape == (0,)
    out = ops.ssd_postprocess(torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), torch.zeros(0, 4), **DEFAULTS)
    assert out[3].tolist() == [0, 0]


def test_opcheck(gen):
    loc, conf, priors = make_inputs(2, 30, 4, gen)
    args = (loc, conf, priors, 0.1, 0.2, 0.01, 0.45, 10, 15)
    torch.library.opcheck(torch.ops.mdssd.ssd_postprocess.default, args)
