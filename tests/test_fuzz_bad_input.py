"""Fuzzing the error contract (tests/test_bad_input.py): a valid random input with one thing made
wrong must raise a RuntimeError (or ValueError) whose message names the op, never crash or return.
Argument problems (shape, dtype, scalar range) are checked on every device; value problems (NaN,
inf, counts out of range, labels < 1, non-positive prior sizes) read the data and so are checked
on CPU only (mdssd/ops.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_strategies import fuzz_devices, fuzz_settings, to_device
from mdssd import ops

NAN, INF = float("nan"), float("inf")


def poke(t: torch.Tensor, value: float, index: int) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[index % t.numel()] = value
    return t


def box_iou_cases(d, dtype):
    n, m = d.draw(st.integers(1, 5)), d.draw(st.integers(1, 5))
    b1, b2 = torch.rand(n, 4, dtype=dtype), torch.rand(m, 4, dtype=dtype)
    i = d.draw(st.integers(0, 100))
    return "box_iou", ops.box_iou, [
        ("argument", (b1[:, :3], b2)), ("argument", (b1, b2[None])), ("argument", (b1.int(), b2.int())),
        ("argument", (b1, b2.half() if dtype == torch.float32 else b2.float())),
        ("argument", (b1[None].expand(2, n, 4), b2[None])), ("argument", (b1.half(), b2.half())),
        ("value", (poke(b1, NAN, i), b2)), ("value", (b1, poke(b2, -INF, i))),
    ]


def match_encode_cases(d, dtype):
    p, g = d.draw(st.integers(1, 5)), d.draw(st.integers(1, 4))
    priors = torch.cat([torch.rand(p, 2), 0.1 + torch.rand(p, 2)], 1).to(dtype)
    gt = torch.rand(2, g, 4, dtype=dtype)
    labels = torch.randint(1, 4, (2, g))
    counts = torch.tensor([g, 0])
    i = d.draw(st.integers(0, 100))
    base = (priors, gt, labels, counts)
    tiny = 1e-50 if dtype == torch.float32 else -1e-50
    cases = [
        ("argument", (priors[:, :3], gt, labels, counts)), ("argument", (priors, gt[0], labels, counts)),
        ("argument", (priors, gt, labels.int(), counts)), ("argument", (priors, gt, labels, counts[:1])),
        ("argument", (priors, gt.double() if dtype == torch.float32 else gt.float(), labels, counts)),
    ]
    cases += [("argument", (*base, thr)) for thr in (0.0, -0.5, 1.5, NAN, tiny)]
    cases += [("argument", (*base, 0.5, vxy, vwh))
              for vxy, vwh in ((0.0, 0.2), (0.1, -1.0), (tiny, 0.2), (0.1, INF), (NAN, 0.2), (1e39, 0.2))
              if not (dtype == torch.float64 and vxy == 1e39)]
    cases += [
        ("value", (priors, gt, labels, torch.tensor([g + 1, 0]))), ("value", (priors, gt, labels, torch.tensor([-1, 0]))),
        ("value", (priors, gt, poke(labels, 0, i % g), counts)), ("value", (priors, poke(gt, NAN, i % (4 * g)), labels, counts)),
        ("value", (poke(priors, d.draw(st.sampled_from([0.0, -0.1])), 4 * (i % p) + 2 + i % 2), gt, labels, counts)),
        ("value", (poke(priors, INF, i), gt, labels, counts)),
    ]
    return "match_encode", ops.match_encode, cases


def l2norm_cases(d, dtype):
    shape = (d.draw(st.integers(1, 2)), d.draw(st.integers(1, 4)), 2, 3)
    a, b = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    s = torch.ones(shape[1])
    eps_bad = [0.0, -1e-10, NAN] + ([1e-50] if dtype != torch.float64 else [])
    cases = [("argument", (a, b, s, s, e)) for e in eps_bad]
    cases += [
        ("argument", (a[0], b[0], s, s, 1e-10)), ("argument", (a, b[:, :, :1], s, s, 1e-10)),
        ("argument", (a, b, s[:0], s, 1e-10)), ("argument", (a, b, s, s[None], 1e-10)),
        ("argument", (a.int(), b.int(), s, s, 1e-10)), ("argument", (a, b.double() if dtype != torch.float64 else b.float(), s, s, 1e-10)),
        ("argument", (a, b, s.double() if dtype != torch.float64 else s.half(), s.double() if dtype != torch.float64 else s.half(), 1e-10)),
    ]
    return "l2norm_sum", ops.l2norm_sum, cases


def nms_cases(d, dtype):
    n = d.draw(st.integers(1, 6))
    boxes, scores = torch.rand(n, 4, dtype=dtype), torch.rand(n, dtype=dtype)
    i = d.draw(st.integers(0, 100))
    if d.draw(st.booleans()):
        cases = [("argument", (boxes, scores, t)) for t in (-0.1, 1.5, NAN)]
        cases += [("argument", (boxes[:, :3], scores, 0.5)), ("argument", (boxes, scores[:-1], 0.5)),
                  ("argument", (boxes.int(), scores.int(), 0.5)),
                  ("value", (poke(boxes, NAN, i), scores, 0.5)), ("value", (boxes, poke(scores, NAN, i), 0.5)),
                  ("value", (poke(boxes, INF, i), scores, 0.5))]
        return "nms", ops.nms, cases
    idxs = torch.randint(0, 3, (n,))
    cases = [("argument", (boxes, scores, idxs, t)) for t in (-0.1, 1.5, NAN)]
    cases += [("argument", (boxes, scores, idxs.int(), 0.5)), ("argument", (boxes, scores, idxs[:-1], 0.5)),
              ("value", (poke(boxes, NAN, i), scores, idxs, 0.5)), ("value", (boxes, poke(scores, -INF, i), idxs, 0.5))]
    return "batched_nms", ops.batched_nms, cases


def postprocess_cases(d, dtype):
    p, k = d.draw(st.integers(1, 5)), d.draw(st.integers(1, 4))
    loc, conf = torch.randn(1, p, 4, dtype=dtype), torch.randn(1, p, k, dtype=dtype)
    priors = torch.cat([torch.rand(p, 2), 0.1 + torch.rand(p, 2)], 1).to(dtype)
    i = d.draw(st.integers(0, 100))
    ok = dict(variance_xy=0.1, variance_wh=0.2, score_threshold=0.01, iou_threshold=0.45,
              top_k_per_class=10, keep_top_k=10)

    def kw(**over):
        return (loc, conf, priors, *dict(ok, **over).values())

    tiny = 1e-50 if dtype == torch.float32 else -1e-50
    cases = [("argument", kw(variance_xy=v)) for v in (0.0, -1.0, tiny, INF, NAN)]
    cases += [("argument", kw(variance_wh=v)) for v in (0.0, tiny)]
    cases += [("argument", kw(score_threshold=v)) for v in (1.0, -0.1, NAN) + ((1 - 1e-12,) if dtype == torch.float32 else ())]
    cases += [("argument", kw(iou_threshold=v)) for v in (-0.1, 1.5, NAN)]
    cases += [("argument", kw(top_k_per_class=0)), ("argument", kw(keep_top_k=0)), ("argument", kw(keep_top_k=-3))]
    cases += [
        ("argument", (loc, conf[..., :0], priors, *ok.values())), ("argument", (loc[0], conf, priors, *ok.values())),
        ("argument", (loc, conf, priors[:-1], *ok.values())), ("argument", (loc.half(), conf.half(), priors.half(), *ok.values())),
        ("argument", (loc, conf.double() if dtype == torch.float32 else conf.float(), priors, *ok.values())),
        ("value", (poke(loc, NAN, i), conf, priors, *ok.values())), ("value", (loc, poke(conf, INF, i), priors, *ok.values())),
        ("value", (loc, conf, poke(priors, NAN, i), *ok.values())),
    ]
    return "ssd_postprocess", ops.ssd_postprocess, cases


CASES = [box_iou_cases, match_encode_cases, l2norm_cases, nms_cases, postprocess_cases]


@pytest.mark.parametrize("device", fuzz_devices())
@fuzz_settings(ci_examples=400)
@given(d=st.data(), make=st.sampled_from(CASES), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_bad_input_raises_named_error(device, d, make, dtype):
    with torch.random.fork_rng():  # the random tensors repeat with the example
        torch.manual_seed(d.draw(st.integers(0, 2**31 - 1)))
        name, fn, cases = make(d, dtype)
    kind, args = d.draw(st.sampled_from(cases))
    if kind == "value" and device != "cpu":
        return  # value checks run on CPU only
    with pytest.raises((RuntimeError, ValueError), match=name):
        fn(*to_device(list(args), device))
