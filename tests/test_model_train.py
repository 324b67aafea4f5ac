"""Model numerics: loss, backward, autocast/channels_last, ext vs reference, compile and export."""

import pytest
import torch
import torch.nn.functional as F

from mdssd.model import build_model, export_onnx, export_program
from mdssd.model.config import LossConfig
from mdssd.model.loss import multibox_loss


def batch_targets(gen, counts, num_classes, g=None):
    """Padded ground truth: image b has counts[b] boxes; padding rows are zeros / label 0."""
    g = max(max(counts), 1) if g is None else g
    xy = torch.rand(len(counts), g, 2, generator=gen) * 0.6
    wh = 0.1 + 0.3 * torch.rand(len(counts), g, 2, generator=gen)
    boxes = torch.cat([xy, xy + wh], -1)
    labels = torch.randint(1, num_classes, (len(counts), g), generator=gen)
    real = torch.arange(g)[None] < torch.tensor(counts)[:, None]
    return boxes * real[..., None], labels * real, torch.tensor(counts)


# ---------------------------------------------------------------------------------------------
# MultiBox loss on hand-made targets


def test_hard_negative_mining_picks_three_hardest_negatives_per_positive(gen):
    batch, priors, classes = 2, 12, 4
    loc = torch.randn(batch, priors, 4, generator=gen)
    conf = torch.randn(batch, priors, classes, generator=gen)
    loc_t = torch.randn(batch, priors, 4, generator=gen)
    labels = torch.zeros(batch, priors, dtype=torch.long)
    labels[0, 3], labels[0, 8] = 2, 1  # image 0: 2 positives -> 6 negatives; image 1: none
    losses = multibox_loss(loc, conf, loc_t, labels, LossConfig())

    ce = F.cross_entropy(conf[0], labels[0], reduction="none")
    background = [i for i in range(priors) if labels[0, i] == 0]
    hardest = sorted(background, key=lambda i: -float(ce[i]))[:6]
    positives = [3, 8]
    expected_conf = sum(float(ce[i]) for i in positives + hardest) / 2
    expected_loc = float(F.smooth_l1_loss(loc[0, positives], loc_t[0, positives], reduction="sum")) / 2
    assert losses["conf"].item() == pytest.approx(expected_conf, rel=1e-6)
    assert losses["loc"].item() == pytest.approx(expected_loc, rel=1e-6)
    assert losses["total"].item() == pytest.approx(expected_conf + expected_loc, rel=1e-6)


def test_mining_is_capped_by_available_negatives(gen):
    conf = torch.randn(1, 5, 3, generator=gen)
    labels = torch.tensor([[1, 2, 0, 0, 1]])  # 3 positives want 9 negatives, only 2 exist
    losses = multibox_loss(torch.zeros(1, 5, 4), conf, torch.zeros(1, 5, 4), labels, LossConfig())
    assert losses["conf"].item() == pytest.approx(F.cross_entropy(conf[0], labels[0], reduction="sum").item() / 3)


# ---------------------------------------------------------------------------------------------
# Forward + loss + backward


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("mdssd_tiny", num_classes=6)


def test_images_without_ground_truth_contribute_nothing(tiny, gen):
    images = torch.randn(2, 3, 128, 128, generator=gen)
    boxes, labels, counts = batch_targets(gen, [3, 0], 6)
    loc, conf = tiny(images)
    loc.retain_grad()
    conf.retain_grad()
    both = tiny.loss(loc, conf, boxes, labels, counts)
    alone = tiny.loss(loc[:1], conf[:1], boxes[:1], labels[:1], counts[:1])
    for key in ("loc", "conf", "total"):
        torch.testing.assert_close(both[key], alone[key])
    both["total"].backward()
    assert torch.all(loc.grad[1] == 0) and torch.all(conf.grad[1] == 0)
    assert loc.grad[0].abs().sum() > 0

    empty = tiny.loss(loc.detach(), conf.detach(), *batch_targets(gen, [0, 0], 6))
    assert empty["loc"].item() == 0 and empty["conf"].item() == 0 and empty["total"].item() == 0


def test_train_step_autocast_bfloat16_channels_last(gen):
    torch.manual_seed(1)
    # The paper's block: the default gated block's gate starts at 0, so its fused-kernel scales
    # get no gradient on the first step (tests/test_fusion_options.py), and this test is about
    # those gradients under bf16 autocast and channels_last.
    model = build_model("mdssd_tiny_paper", num_classes=6, batch_norm=True).to(memory_format=torch.channels_last)
    model.train()
    images = torch.randn(2, 3, 128, 128, generator=gen).contiguous(memory_format=torch.channels_last)
    boxes, labels, counts = batch_targets(gen, [3, 0], 6)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loc, conf = model(images)
        assert loc.dtype == torch.bfloat16
        losses = model.loss(loc, conf, boxes, labels, counts)
    assert losses["total"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loc"] > 0
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.fusion[0].scale_low.grad.abs().sum() > 0
    before = model.fusion[0].scale_high.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.fusion[0].scale_high)

    # An all-empty batch: zero loss, finite (zero) gradients, no NaN anywhere.
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loc, conf = model(images)
        losses = model.loss(loc, conf, *batch_targets(gen, [0, 0], 6))
    assert losses["loc"].item() == 0 and losses["total"].item() == 0
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_postprocess_shapes_under_autocast(tiny, gen):
    tiny.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        boxes, scores, labels, counts = tiny.postprocess(*tiny(torch.randn(1, 3, 128, 128, generator=gen)))
    k = tiny.config.postprocess.keep_top_k
    assert boxes.shape == (1, k, 4) and scores.shape == (1, k) and labels.shape == (1, k)
    assert counts.shape == (1,) and boxes.dtype == torch.float32 and counts.item() > 0
    tiny.train()


# ---------------------------------------------------------------------------------------------
# ext vs reference, MDSSD300 at full size


def _close(a, b, rtol=1e-4):
    """Float32 agreement scaled to the tensor's magnitude (summation orders differ)."""
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max().clamp_min(1e-6)))


def test_backends_agree_mdssd300(gen):
    torch.manual_seed(2)
    # The paper's block, whose fused-kernel scales get a gradient on the first step (the default
    # gated block's gate starts at 0, which holds them at zero).
    model = build_model("mdssd300_paper", num_classes=21)
    images = torch.randn(1, 3, 300, 300, generator=gen)
    targets = batch_targets(gen, [4], 21)
    results = {}
    for backend in ("ext", "reference"):
        model.set_backend(backend)
        model.zero_grad()
        loc, conf = model(images)
        losses = model.loss(loc, conf, *targets)
        losses["total"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[backend] = (loc.detach(), conf.detach(), {k: v.detach() for k, v in losses.items()}, grads)
    (loc_e, conf_e, loss_e, grad_e), (loc_r, conf_r, loss_r, grad_r) = results["ext"], results["reference"]
    _close(loc_e, loc_r)
    _close(conf_e, conf_r)
    for key in ("loc", "conf", "total"):
        _close(loss_e[key], loss_r[key])
    for name in grad_e:
        _close(grad_e[name], grad_r[name], rtol=1e-3)
    assert grad_e["fusion.0.scale_low"].abs().sum() > 0

    # Detections: both post-processes on the same outputs give identical results, and each
    # backend's own end-to-end detections agree.
    dets = {}
    for backend, (loc, conf) in (("ext", (loc_e, conf_e)), ("reference", (loc_r, conf_r))):
        model.set_backend(backend)
        dets[backend] = model.postprocess(loc, conf)
        dets[backend + "_on_ext"] = model.postprocess(loc_e, conf_e)
    for a, b in zip(dets["ext"], dets["reference_on_ext"]):
        assert torch.equal(a, b)
    # Each backend's own end to end: the networks' outputs differ in the last bits (checked with
    # _close above), so a near-tie of two scores or a score at the threshold may rank or keep
    # differently (a CI run saw one label differ). Same detections up to such flips: at least 95%
    # of each side's detections have a twin (same label, close box and score) on the other side.
    boxes_e, scores_e, labels_e, counts_e = dets["ext"]
    boxes_r, scores_r, labels_r, counts_r = dets["reference"]
    n_e, n_r = int(counts_e.item()), int(counts_r.item())
    assert n_e > 0 and abs(n_e - n_r) <= max(1, n_e // 20)

    def twins(b1, s1, l1, n1, b2, s2, l2, n2):
        same = ((b1[0, :n1, None] - b2[0, None, :n2]).abs().amax(-1) < 1e-4) \
            & ((s1[0, :n1, None] - s2[0, None, :n2]).abs() < 1e-4) & (l1[0, :n1, None] == l2[0, None, :n2])
        return int(same.any(1).sum())

    assert twins(boxes_e, scores_e, labels_e, n_e, boxes_r, scores_r, labels_r, n_r) >= 0.95 * n_e
    assert twins(boxes_r, scores_r, labels_r, n_r, boxes_e, scores_e, labels_e, n_e) >= 0.95 * n_r


# ---------------------------------------------------------------------------------------------
# torch.compile and export (small preset)


def test_torch_compile_train_step(gen):
    # aot_eager traces forward and backward through dynamo/AOTAutograd exactly as inductor does
    # (fake kernels, registered autograd), without inductor's C++ compile time (see the slow test).
    torch.manual_seed(3)
    model = build_model("mdssd_tiny", num_classes=6)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    images = torch.randn(2, 3, 128, 128, generator=gen)
    targets = batch_targets(gen, [2, 0], 6)
    loc, conf = compiled(images)
    with torch.no_grad():
        eager_loc, eager_conf = model(images)
    _close(loc.detach(), eager_loc)
    _close(conf.detach(), eager_conf)
    losses = model.loss(loc, conf, *targets)
    losses["total"].backward()
    assert model.fusion[1].scale_high.grad is not None
    assert torch.isfinite(model.fusion[1].scale_high.grad).all()


@pytest.mark.slow  # inductor compiles C++ kernels: about 2 minutes on a busy 2-core CPU
def test_torch_compile_inductor_inference(gen):
    torch.manual_seed(3)
    model = build_model("mdssd_tiny", num_classes=6).eval()
    compiled = torch.compile(model)
    images = torch.randn(1, 3, 128, 128, generator=gen)
    with torch.no_grad():
        loc, conf = compiled(images)
        eager_loc, eager_conf = model(images)
        detections = model.postprocess(loc, conf)
    _close(loc, eager_loc, rtol=1e-3)
    _close(conf, eager_conf, rtol=1e-3)
    assert detections[3].item() > 0


def test_torch_export_keeps_the_fusion_op(gen):
    torch.manual_seed(4)
    model = build_model("mdssd_tiny", num_classes=6).eval()
    program = export_program(model, batch=2)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("mdssd.l2norm_sum" in t for t in targets) == 3
    images = torch.randn(2, 3, 128, 128, generator=gen)
    with torch.no_grad():
        for a, b in zip(program.module()(images), model(images)):
            _close(a, b)


def test_onnx_export(tmp_path, gen):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(5)
    model = build_model("mdssd_tiny", num_classes=6).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path)
    assert model.backend.name == "ext"  # restored after the export
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["loc", "conf"]
    images = torch.randn(1, 3, 128, 128, generator=gen)
    loc, conf = ReferenceEvaluator(proto).run(None, {"images": images.numpy()})
    with torch.no_grad():
        eager_loc, eager_conf = model(images)
    _close(torch.from_numpy(loc), eager_loc, rtol=1e-3)
    _close(torch.from_numpy(conf), eager_conf, rtol=1e-3)
