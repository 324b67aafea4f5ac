"""Per-item single-thread costs of the CPU kernels' parallel loops: the measurements behind the
grain sizes in csrc/cpu/*.cpp (each loop goes parallel only with two chunks of about
``kChunkNs`` = 500 us of work; see csrc/cpu/parallel.h and README.md here, "Threads").

    python -m benchmarks.grains          # one thread, the benchmark's inputs; about 30 s

Prints, for each loop, the op and size timed, the number of loop items and the cost per item.
Every figure is the fastest of several calls (the least disturbed by other processes), so it is
the cost on a quiet core; on a busy machine rerun it when the load is low.
"""

from __future__ import annotations

import sys
import time

import torch

import mdssd  # noqa: F401  (loads the compiled ops)
from mdssd import ops, reference

from . import harness, inputs


def fastest(fn, repeats: int = 15) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print(f"load average before: {harness.load_average()}; torch threads 1")
    rows = []

    def report(loop: str, workload: str, seconds: float, items: int, unit: str) -> None:
        rows.append((loop, workload, seconds, items, unit))
        print(f"{loop:34s} {workload:36s} {seconds * 1e3:9.3f} ms  {items:>11,} {unit:16s} "
              f"{seconds * 1e9 / items:9.2f} ns/item", flush=True)

    p300, _ = inputs.priors("mdssd300")
    boxes_p = reference.point_form(p300)
    gts = inputs.small_boxes((50,), gen)
    report("box_iou rows", "31,232 x 50", fastest(lambda: ops.box_iou(boxes_p, gts)),
           boxes_p.shape[0] * 50, "pairs")

    gt_boxes, gt_labels, gt_counts = inputs.ground_truth(8, 50, gen)
    pairs = int(gt_counts.sum()) * p300.shape[0]
    report("match_encode images", "B=8 x 31,232, <= 50 gts",
           fastest(lambda: ops.match_encode(p300, gt_boxes, gt_labels, gt_counts), 5), pairs,
           "prior x gt pairs")

    for dtype in (torch.float32, torch.bfloat16):
        a, b, sa, sb = inputs.fusion_maps(1, 256, 38, gen, dtype)
        name = str(dtype).replace("torch.", "")
        report(f"l2norm_sum fwd blocks ({name})", "[1,256,38,38]",
               fastest(lambda: ops.l2norm_sum(a, b, sa, sb)), a.numel(), "elements")
        a2, b2, sa2, sb2 = (t.detach().requires_grad_(True) for t in (a, b, sa, sb))
        out = ops.l2norm_sum(a2, b2, sa2, sb2)
        grad = torch.randn(out.shape, generator=gen).to(dtype)
        report(f"l2norm_sum bwd chunks ({name})", "[1,256,38,38]",
               fastest(lambda: torch.autograd.grad(out, (a2, b2, sa2, sb2), grad, retain_graph=True)),
               a.numel(), "elements")

    # batched_nms: one group's cost. Sweep groups (< 2,048 boxes) cost ~ n^2 / 2 visits at most,
    # grid groups ~ n; measured on single-class inputs of the benchmark's kind.
    for n in (250, 500, 1000):
        bx, sc, _ = inputs.nms_candidates(n, gen)
        report("batched_nms group (sweep)", f"{n:,} boxes, 1 class", fastest(lambda: ops.nms(bx, sc, 0.5)),
               n * n, "n^2")
    for n in (5000, 20000):
        bx, sc, _ = inputs.nms_candidates(n, gen)
        report("batched_nms group (grid)", f"{n:,} boxes, 1 class", fastest(lambda: ops.nms(bx, sc, 0.5), 5),
               n, "boxes")

    loc, conf = inputs.head_outputs(1, p300.shape[0], 21, gen)
    # score_threshold 0.999: (almost) no candidate passes, so the time is stage 1 (softmax + decode) and the
    # stage 2 scan; with the default threshold, the difference is stage 2's sort and NMS.
    t_scan = fastest(lambda: ops.ssd_postprocess(loc, conf, p300, score_threshold=0.999), 5)
    t_full = fastest(lambda: ops.ssd_postprocess(loc, conf, p300), 5)
    report("ssd_postprocess stage 1 + scan", "B=1 x 31,232 x 21 cls", t_scan, p300.shape[0] * 21,
           "prior x class")
    report("ssd_postprocess stage 2 (per class)", "B=1 x 31,232 x 21 cls", t_full - t_scan, 20,
           "(image, class)")
    print(f"load average after: {harness.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
