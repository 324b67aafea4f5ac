"""Ours against ``torch.compile`` of the reference with the calls interleaved (ours, compiled,
compiled, ours, ...) in one process, for a machine that others load: a neighbour's burst then
slows both contestants alike, and the ratio of the medians stays meaningful where the absolute
times of ``benchmarks.kernels`` (one contestant after the other) do not.

    python -m benchmarks.interleaved [--ops l2norm_sum,match_encode] [--repeats 24]
    OMP_NUM_THREADS=1 python -m benchmarks.interleaved      # the code alone, no thread effects
    python -m benchmarks.interleaved --ops train_step --repeats 6   # mdssd300 step: ext vs reference

Prints one line per workload: median ours, median compiled, compiled/ours (above 1: ours is
faster; ``train_step``: one mdssd300 training step at batch 1, float32, on the ``ext`` backend as
"ours" and the ``reference`` backend in the other column), with the load average before and after. Inputs as in benchmarks.kernels
(inputs.fusion_maps, inputs.ground_truth), rotated over 4 sets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import mdssd  # noqa: F401
from mdssd import ops, reference

from . import harness, inputs

L2NORM_SHAPES = ((1, 256, 75, 75), (1, 256, 38, 38), (1, 256, 19, 19), (8, 256, 75, 75),
                 (8, 256, 38, 38), (8, 256, 19, 19), (32, 256, 38, 38))


def _interleave(fns: dict, sets: list, repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up (and compile)
        for s in sets[:2]:
            fn(s)
    times = {name: [] for name in fns}
    order = list(fns)
    for i in range(repeats):
        s = sets[i % len(sets)]
        for name in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[name](s)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def l2norm_rows(repeats: int):
    compiled = torch.compile(reference.l2norm_sum)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for shape in L2NORM_SHAPES:
            batch, channels, size, _ = shape
            sets = []
            for _ in range(4):
                a, b, sa, sb = inputs.fusion_maps(batch, channels, size, gen, dtype)
                leaves = tuple(t.detach().requires_grad_(True) for t in (a, b, sa, sb))
                sets.append((leaves, torch.randn(a.shape, generator=gen).to(dtype)))
            name = f"[{','.join(map(str, shape))}] {str(dtype)[6:]}"
            fwd = _interleave({"ours": lambda s: ops.l2norm_sum(*s[0]),
                               "compiled": lambda s: compiled(*s[0])}, sets, repeats)
            yield "l2norm_sum fwd", name, fwd
            outs = {k: [f(*s[0]) for s in sets] for k, f in (("ours", ops.l2norm_sum), ("compiled", compiled))}
            index = {id(s[0][0]): i for i, s in enumerate(sets)}

            def backward(key):
                return lambda s: torch.autograd.grad(outs[key][index[id(s[0][0])]], s[0], s[1], retain_graph=True)
            yield "l2norm_sum bwd", name, _interleave({"ours": backward("ours"), "compiled": backward("compiled")},
                                                       sets, repeats)


def match_rows(repeats: int):
    compiled = torch.compile(reference.match_encode)
    gen = torch.Generator().manual_seed(0)
    for preset in ("mdssd300", "mdssd512"):
        priors, _ = inputs.priors(preset)
        sets = [(priors, *inputs.ground_truth(1, 50, gen)) for _ in range(4)]
        yield "match_encode", f"B=1 x {priors.shape[0]:,} priors", _interleave(
            {"ours": lambda s: ops.match_encode(*s), "compiled": lambda s: compiled(*s)}, sets, repeats)


def train_step_rows(repeats: int):
    from mdssd.model import build_model

    from .end_to_end import NUM_CLASSES, _mdssd_step, sample_batch

    data, _ = sample_batch(1, 300, "cpu")
    steps = {}
    for name, backend in (("ours", "ext"), ("compiled", "reference")):
        torch.manual_seed(0)
        model = build_model("mdssd300", num_classes=NUM_CLASSES, backend=backend).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        steps[name] = _mdssd_step(model, optimizer, data, "cpu", "fp32")
    yield "train_step", "mdssd300 B=1 fp32: ext | reference backend", _interleave(steps, [None], repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interleaved", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="l2norm_sum,match_encode")
    parser.add_argument("--repeats", type=int, default=24)
    args = parser.parse_args(argv)
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False  # the compiled backward is replayed (retain_graph)
    harness.pin_allocator()
    print(f"{harness.cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load before {harness.load_average()}")
    rows = []
    if "l2norm_sum" in args.ops:
        rows.append(l2norm_rows(args.repeats))
    if "match_encode" in args.ops:
        rows.append(match_rows(args.repeats))
    if "train_step" in args.ops:
        rows.append(train_step_rows(args.repeats))
    for gen_rows in rows:
        for op, name, med in gen_rows:
            print(f"| {op} | {name} | {med['ours'] * 1e3:.3f} ms | {med['compiled'] * 1e3:.3f} ms | "
                  f"{med['compiled'] / med['ours']:.2f}x |", flush=True)
    print(f"load after {harness.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
