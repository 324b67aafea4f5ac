"""Kernel microbenchmarks: every mdssd op against the pure-PyTorch reference, ``torch.compile`` of
the reference and torchvision's op (where it has one), on one device in one run.

    python -m benchmarks.kernels [--device cpu|cuda] [--quick] [--out DIR] [--ops box_iou,nms]

Prints a table and writes ``<out>/<device stem>.md`` and ``.json`` (see README.md here).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

import mdssd  # noqa: F401  (loads the compiled ops)
from mdssd import ops, reference

from . import harness, inputs
from .harness import Cell, Row

try:  # torchvision: in the second venv (benchmarks/README.md) and on the GPU machine
    import torchvision.ops as tv_ops
except ImportError:  # pragma: no cover - depends on the install
    tv_ops = None

def _tv_box_iou_batches() -> bool:
    """Whether this torchvision's box_iou takes [..., N, 4] batches (newer releases do)."""
    if tv_ops is None:
        return False
    try:
        return tuple(tv_ops.box_iou(torch.zeros(2, 1, 4), torch.zeros(2, 3, 4)).shape) == (2, 1, 3)
    except Exception:  # 2-D only
        return False


TV_BATCHED_BOX_IOU = _tv_box_iou_batches()

OPS = ("box_iou", "match_encode", "l2norm_sum", "nms", "batched_nms", "ssd_postprocess")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

NO_COMPILE_LOOP = (
    "not compiled: the reference's NMS loops in Python once per kept box over data-dependent "
    "sizes; dynamo cuts such a loop at a graph break in every iteration, so there is no compiled "
    "graph to time (a trial at 1k boxes ran as slowly as eager after a 9 s compile)"
)


# --quick compiles box_iou only: compiling the others costs 5-30 s each on a 2-core CPU.
QUICK_NO_COMPILE = "not compiled in --quick (compile time; box_iou is compiled)"


@dataclasses.dataclass
class Contestant:
    """``call(state)`` is timed; ``prepare(input_set)`` builds that state untimed (default: the
    input set itself)."""

    call: Callable[[Any], Any]
    prepare: Callable[[Any], Any] | None = None


@dataclasses.dataclass
class Workload:
    """One row of the table. ``wrap(fn)`` turns an implementation of the op (ours, the reference,
    the compiled reference) into a contestant, so all of them run the same harness code."""

    op: str
    name: str
    params: dict
    make_set: Callable[[torch.Generator], tuple]  # one input set, on the CPU
    wrap: Callable[[Callable], Contestant]
    ours: Callable
    ref: Callable
    floor_bytes: Callable[[tuple, Any], int]  # (input set, ours' output) -> bytes that must move
    check: Callable[[Any, Any, int | None], str]  # (ours, other, images compared or None: all)
    torchvision: Contestant | str = "torchvision has no such op"
    # Check against torchvision, made from input set 0, when it differs from `check` (tie rules).
    tv_check: Callable[[tuple], Callable[[Any, Any, int | None], str]] | None = None
    ref_skip: str | None = None  # why the reference is not run at this size
    compile_skip: str | None = None  # why the reference is not compiled
    batch: int = 1
    # Reference and compiled reference run on the first cap_images images (cap_slice cuts them).
    cap_images: int | None = None
    cap_slice: Callable[[tuple, int], tuple] | None = None


@dataclasses.dataclass
class Settings:
    device: str
    quick: bool
    budget_s: float
    min_repeats: int
    max_repeats: int
    warmup: int
    # Sizes above which the reference (a Python loop) would take minutes per workload: the
    # reference runs on the first `*_images` images (batch-loop ops; its time is scaled by the
    # batch ratio, which is exact for a loop over independent images up to per-call overhead)
    # or is skipped above `*_boxes` boxes (NMS: cost grows with N x kept, no honest scaling).
    ref_match_images: int
    ref_postprocess_images: int
    ref_nms_boxes: int
    ref_batched_nms_boxes: int
    memory_cap_bytes: int


def settings_for(device: str, quick: bool) -> Settings:
    if device == "cuda":
        return Settings(device, quick, budget_s=0.5, min_repeats=10, max_repeats=200, warmup=3,
                        ref_match_images=32, ref_postprocess_images=2, ref_nms_boxes=10_000,
                        ref_batched_nms_boxes=10_000, memory_cap_bytes=8 << 30)
    return Settings(device, quick, budget_s=0.05 if quick else 1.0, min_repeats=2 if quick else 3, max_repeats=30,
                    warmup=1, ref_match_images=4, ref_postprocess_images=1, ref_nms_boxes=1_000,
                    ref_batched_nms_boxes=1_000, memory_cap_bytes=2 << 30)


# ---------------------------------------------------------------------------------------------
# Checks: does ours compute what the other contestant computes? (once per workload, on set 0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _first(t: torch.Tensor, images: int | None) -> torch.Tensor:
    return t if images is None else t[:images]


def check_close(tol: float) -> Callable[[Any, Any, int | None], str]:
    def check(ours, other, images: int | None) -> str:
        ours_t = ours if isinstance(ours, (tuple, list)) else (ours,)
        other_t = other if isinstance(other, (tuple, list)) else (other,)
        worst = max(_rel(_first(o, images), _first(r, images)) for o, r in zip(ours_t, other_t))
        return "ok" if worst <= tol else f"DIFF rel {worst:.1e}"
    return check


def check_equal(ours, other, images: int | None) -> str:
    return "ok" if torch.equal(ours.cpu(), other.cpu()) else f"DIFF ({ours.numel()} vs {other.numel()} kept)"


def check_kept(scores: torch.Tensor):
    """NMS check that knows the tie rule: ours ranks equal scores by the lower index, torchvision
    sorts the scores unstably, so among equal scores it may list (and, where such boxes overlap,
    keep) other indices. Passes when the kept lists are equal; or when the score sequences are
    equal and every kept index that differs has a score shared with another input box (the
    note says how many differ); anything else is a DIFF."""
    def check(ours, other, images: int | None) -> str:
        ours, other = ours.cpu(), other.cpu()
        if torch.equal(ours, other):
            return "ok"
        if ours.numel() != other.numel():
            return f"DIFF ({ours.numel()} vs {other.numel()} kept)"
        s = scores.cpu()
        if not torch.equal(s[ours], s[other]):
            return "DIFF (score sequences differ)"
        differ = ours != other
        values, counts = torch.unique(s, return_counts=True)
        tied = values[counts > 1]
        if not bool(torch.isin(s[ours[differ]], tied).all()):
            return "DIFF (indices differ at untied scores)"
        same_set = torch.equal(ours.sort().values, other.sort().values)
        return (f"ok (ties: {int(differ.sum())} of {ours.numel()} kept listed in another order)" if same_set
                else f"ok (ties: {int(differ.sum())} of {ours.numel()} kept differ among equal scores)")
    return check


def check_match(ours, other, images: int | None) -> str:
    (loc_o, lab_o), (loc_r, lab_r) = ours, other
    if not torch.equal(_first(lab_o, images).cpu(), _first(lab_r, images).cpu()):
        return "DIFF labels"
    rel = _rel(_first(loc_o, images), _first(loc_r, images))
    return "ok" if rel <= 1e-5 else f"DIFF loc rel {rel:.1e}"


def _canonical(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Detections of one image as rows (score, label, x1, y1, x2, y2) in float64, sorted by
    descending score, then label, then box: one order whatever order ties were listed in."""
    rows = torch.cat([scores.double()[:, None], labels.double()[:, None], boxes.double()], dim=1)
    for col in range(rows.shape[1] - 1, -1, -1):  # stable sorts, last key first
        key = -rows[:, col] if col == 0 else rows[:, col]
        rows = rows[torch.sort(key, stable=True).indices]
    return rows


def check_postprocess(ours, other, images: int | None, ties: bool = False) -> str:
    """Same counts, labels and values. With ``ties`` (torchvision's contestant, which sorts
    unstably, see ``torchvision_postprocess``) detections with equal scores may be listed in
    another order: then each image's detections are compared in one canonical order."""
    bo, so, lo, co = (_first(t, images).cpu() for t in ours)
    br, sr, lr, cr = (_first(t, images).cpu() for t in other)
    if not torch.equal(co, cr):
        return "DIFF counts"
    if torch.equal(lo, lr):
        worst = max(_rel(bo, br), _rel(so, sr))
        return "ok" if worst <= 1e-5 else f"DIFF rel {worst:.1e}"
    if not ties:
        return "DIFF labels"
    if not torch.equal(so, sr):
        return "DIFF labels (and score sequences)"
    reordered = 0
    for b, n in enumerate(co.tolist()):
        mine, theirs = _canonical(bo[b, :n], so[b, :n], lo[b, :n]), _canonical(br[b, :n], sr[b, :n], lr[b, :n])
        if not torch.equal(mine[:, :2], theirs[:, :2]):
            return "DIFF labels"
        rel = _rel(mine[:, 2:], theirs[:, 2:])
        if rel > 1e-5:
            return f"DIFF rel {rel:.1e}"
        reordered += int((lo[b, :n] != lr[b, :n]).sum())
    return f"ok (ties: {reordered} detections listed in another order among equal scores)"


# ---------------------------------------------------------------------------------------------
# torchvision-based contestants (GPU machine only)


def torchvision_postprocess(loc, conf, priors, batched_nms, variance_xy=0.1, variance_wh=0.2,
                            score_threshold=0.01, iou_threshold=0.45, top_k_per_class=400,
                            keep_top_k=200):
    """What a user of torchvision writes for ssd_postprocess's semantics: per image, softmax,
    decode, per-class top-k of the scores above the threshold, one ``batched_nms`` over all
    classes, the best ``keep_top_k``; padded to the same fixed shapes. Ties may be ordered
    differently from ours (``topk`` does not promise the lower index first); otherwise it is the
    same function."""
    batch, num_priors, num_classes = conf.shape
    k = min(top_k_per_class, num_priors)
    scores_all = torch.softmax(conf, dim=-1)
    boxes_all = reference.decode(loc, priors, variance_xy, variance_wh)
    out_boxes = loc.new_zeros(batch, keep_top_k, 4)
    out_scores = conf.new_zeros(batch, keep_top_k)
    out_labels = torch.full((batch, keep_top_k), -1, dtype=torch.long, device=loc.device)
    out_counts = torch.zeros(batch, dtype=torch.long, device=loc.device)
    for b in range(batch):
        top_scores, top_idx = scores_all[b, :, 1:].t().topk(k, dim=1)  # [K-1, k], descending
        classes = torch.arange(1, num_classes, device=loc.device)[:, None].expand_as(top_idx)
        keep = top_scores > score_threshold
        cand_scores, cand_prior, cand_class = top_scores[keep], top_idx[keep], classes[keep]
        cand_boxes = boxes_all[b, cand_prior]
        kept = batched_nms(cand_boxes, cand_scores, cand_class, iou_threshold)[:keep_top_k]
        n = kept.numel()
        out_boxes[b, :n] = cand_boxes[kept]
        out_scores[b, :n] = cand_scores[kept]
        out_labels[b, :n] = cand_class[kept]
        out_counts[b] = n
    return out_boxes, out_scores, out_labels, out_counts


# ---------------------------------------------------------------------------------------------
# Workloads


def tv_version() -> str:
    import torchvision

    return torchvision.__version__


def _to(device: str, tensors: tuple) -> tuple:
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors)


def _priors(name: str, quick: bool) -> torch.Tensor:
    p, _ = inputs.priors(name)
    # --quick keeps every 16th prior: the same mix of sizes, a sixteenth of the work.
    return p[::16].contiguous() if quick else p


def _splat(fn: Callable) -> Contestant:
    return Contestant(lambda x: fn(*x))


def box_iou_workloads(s: Settings) -> list[Workload]:
    out = []
    gts = 50
    configs = ((("mdssd300", None), ("mdssd300", 2)) if s.quick else
               (("mdssd300", None), ("mdssd512", None), ("mdssd300", 32)))
    for preset, batch in configs:
        prior_boxes = reference.point_form(_priors(preset, s.quick))
        num, b = prior_boxes.shape[0], batch or 1

        def make(gen, prior_boxes=prior_boxes, batch=batch):
            if batch is None:
                return (prior_boxes.clone(), inputs.small_boxes((gts,), gen))
            return (prior_boxes.expand(batch, -1, -1).contiguous(), inputs.small_boxes((batch, gts), gen))

        if tv_ops is None:
            tv: Contestant | str = "torchvision not importable here"
        elif batch is None or TV_BATCHED_BOX_IOU:
            tv = _splat(tv_ops.box_iou)
        else:
            # torchvision's box_iou before 0.22 is 2-D only: its user loops over the batch.
            tv = Contestant(lambda x: torch.stack([tv_ops.box_iou(p, g) for p, g in zip(*x)]))
        name = f"{num:,} priors x {gts} gts" if batch is None else f"batched {b} x {num:,} x {gts}"
        out.append(Workload(
            op="box_iou", name=name, batch=b,
            params=dict(batch=batch, n=num, m=gts, dtype="float32", priors=preset,
                        torchvision=("batched op" if TV_BATCHED_BOX_IOU else "loop over the batch") if batch else "2-D op"),
            make_set=make, wrap=_splat, ours=ops.box_iou, ref=reference.box_iou, torchvision=tv,
            floor_bytes=lambda x, o, b=b, n=num: b * (16 * (n + gts) + 4 * n * gts),
            check=check_close(1e-6),
        ))
    return out


def match_encode_workloads(s: Settings) -> list[Workload]:
    out = []
    gts = 50
    for preset in ("mdssd300", "mdssd512"):
        pri = _priors(preset, s.quick)
        num = pri.shape[0]
        for batch in (2,) if s.quick else (1, 32):
            def make(gen, pri=pri, batch=batch):
                return (pri.clone(), *inputs.ground_truth(batch, gts, gen))

            def sliced(x, k):
                return (x[0], x[1][:k], x[2][:k], x[3][:k])

            cap = min(batch, s.ref_match_images)
            out.append(Workload(
                op="match_encode", name=f"B={batch} x {num:,} priors, <= {gts} gts", batch=batch,
                params=dict(batch=batch, priors=num, max_gt=gts, preset=preset),
                make_set=make, wrap=_splat, ours=ops.match_encode, ref=reference.match_encode,
                torchvision="torchvision has no matching op",
                compile_skip=QUICK_NO_COMPILE if s.quick else None,
                # priors and ground truths read once; loc and labels written.
                floor_bytes=lambda x, o, b=batch, p=num: 16 * p + b * gts * 24 + 8 * b + b * p * 24,
                check=check_match,
                cap_images=cap if cap < batch else None, cap_slice=sliced,
            ))
    return out


def _fusion_shapes(quick: bool) -> tuple[list[tuple[int, int, int]], str]:
    """(channels, height, width) of each l2norm_sum call in an MDSSD300 forward: recorded from
    the model itself (built on the meta device, so nothing is computed) when mdssd.model exists."""
    if quick:
        return [(32, 10, 10), (32, 5, 5)], "--quick sizes"
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.mdssd.l2norm_sum.default:
                self.shapes.append(tuple(args[0].shape[1:]))
            return func(*args, **(kwargs or {}))

    try:
        from mdssd.model import build_model

        with torch.device("meta"):
            model = build_model("mdssd300", backend="ext")
            images = torch.empty(1, 3, model.config.image_size, model.config.image_size)
        with Record() as rec, torch.no_grad():
            model(images)
        if rec.shapes:
            return rec.shapes, "recorded from mdssd.model's mdssd300 forward"
    except Exception as error:  # the model is optional for this suite; say why it was not used
        print(f"(l2norm_sum shapes: mdssd.model probe failed: {error!r}; using SPEC shapes)")
    return [(256, 75, 75), (256, 38, 38), (256, 19, 19)], "SPEC.md Fusion Blocks (256-ch branches)"


def _leaves(x: tuple) -> tuple:
    return tuple(t.detach().requires_grad_(True) for t in x[:4])


def _l2norm_fwd(fn: Callable) -> Contestant:
    # The inputs require grad: the kernel exists for training, where the forward also saves what
    # its backward needs.
    return Contestant(lambda st: fn(*st), prepare=_leaves)


def _l2norm_bwd(fn: Callable) -> Contestant:
    def prepare(x):
        leaves = _leaves(x)
        return fn(*leaves), leaves, x[4]
    return Contestant(lambda st: torch.autograd.grad(st[0], st[1], st[2], retain_graph=True), prepare=prepare)


def l2norm_workloads(s: Settings) -> list[Workload]:
    shapes, source = _fusion_shapes(s.quick)
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        es = torch.empty(0, dtype=dtype).element_size()
        dname = str(dtype).replace("torch.", "")
        for batch in (2,) if s.quick else (1, 8, 32):
            for (c, h, w) in shapes:
                def make(gen, batch=batch, c=c, h=h, dtype=dtype):
                    a, b, sa, sb = inputs.fusion_maps(batch, c, h, gen, dtype)
                    return (a, b, sa, sb, torch.randn(a.shape, generator=gen).to(dtype))

                numel = batch * c * h * w
                params = dict(batch=batch, channels=c, height=h, width=w, dtype=dname, shape_source=source)
                # fwd reads a, b and writes out (3 maps); bwd reads grad, a, b and writes both
                # input grads (5 maps); plus the [C] float32 scales and their grads.
                for direction, wrap, maps, tol in (("fwd", _l2norm_fwd, 3, 1e-5 if es == 4 else 1e-2),
                                                   ("bwd", _l2norm_bwd, 5, 1e-5 if es == 4 else 2e-2)):
                    out.append(Workload(
                        op=f"l2norm_sum {direction}", name=f"[{batch},{c},{h},{w}] {dname}", batch=batch,
                        params=params, make_set=make, wrap=wrap, ours=ops.l2norm_sum,
                        ref=reference.l2norm_sum, compile_skip=QUICK_NO_COMPILE if s.quick else None,
                        floor_bytes=lambda x, o, n=numel, es=es, k=maps, c=c: k * n * es + 16 * c,
                        check=check_close(tol),
                    ))
    return out


def nms_workloads(s: Settings, batched: bool) -> list[Workload]:
    out = []
    cap = s.ref_batched_nms_boxes if batched else s.ref_nms_boxes
    for n in (200, 2_000) if s.quick else (1_000, 10_000, 100_000):
        def make(gen, n=n):
            return inputs.nms_candidates(n, gen)

        if batched:
            wrap = lambda fn: Contestant(lambda x: fn(x[0], x[1], x[2], 0.5))  # noqa: E731
        else:
            wrap = lambda fn: Contestant(lambda x: fn(x[0], x[1], 0.5))  # noqa: E731
        tv_fn = tv_ops and (tv_ops.batched_nms if batched else tv_ops.nms)
        out.append(Workload(
            op="batched_nms" if batched else "nms",
            name=f"{n:,} boxes" + (", 20 classes" if batched else "") + ", IoU 0.5",
            params=dict(boxes=n, classes=20 if batched else 1, iou_threshold=0.5),
            make_set=make, wrap=wrap,
            ours=ops.batched_nms if batched else ops.nms,
            ref=reference.batched_nms if batched else reference.nms,
            torchvision=wrap(tv_fn) if tv_fn else "torchvision not importable here",
            ref_skip=(f"capped: the reference (a Python loop, one pass per kept box) is timed up to "
                      f"{cap:,} boxes on {s.device}") if n > cap else None,
            compile_skip=NO_COMPILE_LOOP,
            # boxes and scores (and idxs) read once, kept indices written.
            floor_bytes=lambda x, o, n=n: n * (20 + 8 * batched) + 8 * o.numel(),
            check=check_equal, tv_check=lambda x: check_kept(x[1]),
        ))
    return out


def postprocess_workloads(s: Settings) -> list[Workload]:
    out = []
    classes = 6 if s.quick else 21
    for preset in ("mdssd300",) if s.quick else ("mdssd300", "mdssd512"):
        pri = _priors(preset, s.quick)
        num = pri.shape[0]
        for batch in (2,) if s.quick else (1, 8, 32):
            def make(gen, batch=batch, pri=pri):
                return (*inputs.head_outputs(batch, pri.shape[0], classes, gen), pri.clone())

            def sliced(x, k):
                return (x[0][:k], x[1][:k], x[2])

            cap = min(batch, s.ref_postprocess_images)
            out.append(Workload(
                op="ssd_postprocess", name=f"B={batch} x {num:,} priors x {classes} cls", batch=batch,
                params=dict(batch=batch, priors=num, classes=classes, preset=preset, score_threshold=0.01,
                            iou_threshold=0.45, top_k_per_class=400, keep_top_k=200),
                make_set=make, wrap=_splat, ours=ops.ssd_postprocess, ref=reference.ssd_postprocess,
                torchvision=Contestant(lambda x: torchvision_postprocess(*x, batched_nms=tv_ops.batched_nms))
                if tv_ops else "torchvision not importable here",
                compile_skip=NO_COMPILE_LOOP,
                # loc, conf and priors read once; the fixed-shape outputs written.
                floor_bytes=lambda x, o, b=batch, p=num: b * p * (16 + 4 * classes) + 16 * p + b * (200 * 28 + 8),
                check=check_postprocess,
                tv_check=lambda x: lambda o, t, images: check_postprocess(o, t, images, ties=True),
                cap_images=cap if cap < batch else None, cap_slice=sliced,
            ))
    return out


SUITES: dict[str, Callable[[Settings], list[Workload]]] = {
    "box_iou": box_iou_workloads,
    "match_encode": match_encode_workloads,
    "l2norm_sum": l2norm_workloads,
    "nms": lambda s: nms_workloads(s, batched=False),
    "batched_nms": lambda s: nms_workloads(s, batched=True),
    "ssd_postprocess": postprocess_workloads,
}


# ---------------------------------------------------------------------------------------------
# Runner


def _set_bytes(x: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in x if isinstance(t, torch.Tensor))


def _contestants(w: Workload) -> dict[str, Contestant | str | Callable[[], Contestant]]:
    """Name -> contestant, skip reason, or (compiled) a factory called after the dynamo reset."""
    return {
        "ours": w.wrap(w.ours),
        "reference": w.ref_skip or w.wrap(w.ref),
        "compiled": w.compile_skip or w.ref_skip or (lambda: w.wrap(torch.compile(w.ref))),
        "torchvision": w.torchvision,
    }


def run_workload(w: Workload, s: Settings, cache_bytes: int, seed: int) -> Row:
    gen = torch.Generator().manual_seed(seed)
    first = w.make_set(gen)
    n_sets = harness.rotation_count(_set_bytes(first), cache_bytes, s.memory_cap_bytes)
    sets = [_to(s.device, first)] + [_to(s.device, w.make_set(gen)) for _ in range(n_sets - 1)]
    del first
    row = Row(op=w.op, workload=w.name, params={**w.params, "input_sets": n_sets}, floor_bytes=None, cells={})
    outputs: dict[str, Any] = {}
    for name, c in _contestants(w).items():
        if isinstance(c, str):
            row.cells[name] = Cell(status="skipped", reason=c)
            continue
        capped = name in ("reference", "compiled") and w.cap_images is not None
        run_sets = [w.cap_slice(x, w.cap_images) for x in sets] if capped else sets
        try:
            compile_s = None
            if name == "compiled":
                # A fresh dynamo cache per workload: each is compiled for its own shapes, and
                # earlier workloads do not use up the recompile limit (past it dynamo runs eager).
                torch._dynamo.reset()
                c = c()
            t0 = time.perf_counter()  # for the compiled contestant, compilation starts here
            states = [c.prepare(x) for x in run_sets] if c.prepare else run_sets
            t1 = time.perf_counter()
            # The first call: its output is the one checked, and it is the first warm-up call
            # (for the compiled contestant it is the compilation, so warm-up starts after it).
            outputs[name] = c.call(states[0])
            harness.synchronize(s.device)
            first_s = time.perf_counter() - t1
            if name == "compiled":
                compile_s = time.perf_counter() - t0
            warmup = s.warmup if name == "compiled" else s.warmup - 1
            timing = harness.measure(c.call, states, s.device, budget_s=s.budget_s, min_repeats=s.min_repeats,
                                     max_repeats=s.max_repeats, warmup=warmup, estimate_s=first_s,
                                     extended_warmup=not s.quick)
            del states
            if capped:
                row.cells[name] = Cell.from_timing(
                    timing, status="scaled", scale=w.batch / w.cap_images, compile_s=compile_s,
                    measured_on=f"the first {w.cap_images} of {w.batch} images")
            else:
                row.cells[name] = Cell.from_timing(timing, compile_s=compile_s)
        except Exception as error:  # a contestant that fails is reported, never dropped
            traceback.print_exc(file=sys.stderr)
            row.cells[name] = Cell(status="error",
                                   reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
        if s.device == "cuda":
            torch.cuda.empty_cache()

    ours = outputs.get("ours")
    if ours is not None:
        row.floor_bytes = int(w.floor_bytes(sets[0], ours))
        checks = []
        for name, short in (("reference", "ref"), ("compiled", "compiled"), ("torchvision", "tv")):
            if name not in outputs:
                continue
            images = w.cap_images if name in ("reference", "compiled") else None
            check = w.tv_check(sets[0]) if name == "torchvision" and w.tv_check else w.check
            try:
                result = check(ours, outputs[name], images)
            except Exception as error:
                result = f"check failed: {type(error).__name__}: {error}"
            checks.append(f"{short} {result}")
        row.check = ", ".join(checks)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and short timing (a smoke run; numbers are not results)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory of the .md/.json files")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile contestant")
    args = parser.parse_args(argv)

    selected = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in selected if o not in SUITES]
    if unknown:
        parser.error(f"unknown ops {unknown}; choose from {','.join(OPS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")

    started = time.perf_counter()
    allocator = harness.pin_allocator()
    # The backward rows replay one compiled graph's backward (retain_graph=True); torch >= 2.13
    # compiles backwards with donated buffers, which refuse that ("compiled with non-empty
    # donated buffers").
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    info = harness.DeviceInfo.collect(args.device)
    s = settings_for(args.device, args.quick)
    bandwidth = harness.copy_bandwidth(args.device, info.cache_bytes)
    _, prior_source = inputs.priors("mdssd300")
    print("\n".join(info.header_lines()))
    print(f"copy bandwidth (read + write, measured now): {bandwidth / 1e9:.1f} GB/s; priors from {prior_source}")

    rows: list[Row] = []
    for op in selected:
        for w in SUITES[op](s):
            if args.no_compile:
                w.compile_skip = "not compiled: --no-compile"
            t0 = time.perf_counter()
            row = run_workload(w, s, info.cache_bytes, args.seed)
            rows.append(row)
            ours = row.cells.get("ours")
            print(f"  {row.op:16s} {row.workload:40s} ours {harness.fmt_time(ours.median_ms if ours else None):>10s}"
                  f"  ({time.perf_counter() - t0:.1f} s)  {row.check}", flush=True)

    headers, body, footnotes = harness.table_rows(rows, bandwidth)
    print()
    print(harness.render_text(headers, body))
    for i, note in enumerate(footnotes, 1):
        print(f"[{i}] {note}")

    elapsed = time.perf_counter() - started
    preamble = [
        f"copy bandwidth (read + write, measured in this run): {bandwidth / 1e9:.1f} GB/s",
        f"timing: {'CUDA events, calls queued back to back' if args.device == 'cuda' else 'time.perf_counter per call'}; "
        + (f"warm-up per contestant: {harness.WARMUP_CALLS} calls or {harness.WARMUP_S:g} s, whichever comes first "
           f"(at least {s.warmup}); " if args.device == "cpu" and not args.quick else f"{s.warmup} warm-up call(s); ")
        + f"median of {s.min_repeats}-{s.max_repeats} calls (as many as fit "
        f"{s.budget_s:g} s per contestant); inputs rotated over up to 8 distinct sets (3x the "
        f"{info.cache_bytes >> 20} MiB cache)",
        allocator,
        f"torchvision {tv_version()}" if tv_ops is not None else "torchvision not importable: its column is empty",
        f"priors from {prior_source}; seed {args.seed}; whole run {elapsed:.0f} s, load average at the end "
        f"{harness.load_average()}" + (" (--quick: smoke sizes, not results)" if args.quick else ""),
        "ratios are other/ours (above 1: ours is faster); floor = bytes that must move / copy bandwidth; "
        "% floor = floor / ours; check = ours against each contestant's output on input set 0",
    ]
    md = harness.render_markdown(headers, body)
    if footnotes:
        md += "\n\n" + "\n".join(f"[{i}] {note}  " for i, note in enumerate(footnotes, 1))
    stem = info.file_stem + ("-quick" if args.quick else "")
    md_path, json_path = harness.write_results(
        args.out, stem, f"mdssd kernel benchmarks: {info.name}", info, preamble, md,
        {"suite": "kernels", "quick": args.quick, "ops": selected, "copy_bandwidth_bytes_per_s": bandwidth,
         "settings": dataclasses.asdict(s), "priors_source": prior_source, "allocator": allocator,
         "torchvision": tv_version() if tv_ops is not None else None, "tv_batched_box_iou": TV_BATCHED_BOX_IOU,
         "warmup_calls": harness.WARMUP_CALLS, "warmup_s": harness.WARMUP_S, "elapsed_s": elapsed,
         "rows": [{**dataclasses.asdict(r), **harness.derived(r, bandwidth)} for r in rows]})
    print(f"\nwrote {md_path} and {json_path} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
