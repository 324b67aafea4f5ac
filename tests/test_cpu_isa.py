"""The vectorised CPU loops are compiled for SSE2, AVX2 and AVX-512 (csrc/cpu/isa.h) and the
widest the CPU has runs: every variant must give bitwise the same results (the same arithmetic in
the same order). MDSSD_CPU_ISA caps the variant per process, so each runs in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import sys, torch
import mdssd
from mdssd import ops
g = torch.Generator().manual_seed(0)
out = {}
for dtype in (torch.float32, torch.bfloat16, torch.float64):
    for shape in ((2, 40, 9, 11), (1, 256, 19, 19), (1, 64, 40, 40)):  # the last: 4 NCHW blocks
        for cl in (False, True):
            a = torch.randn(shape, generator=g).to(dtype)
            b = torch.randn(shape, generator=g).clamp_min(0).to(dtype)
            b[0, :, 0, :3] = 0  # clamped norms
            if cl:
                a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
            sa = torch.randn(shape[1], generator=g) * 10
            sb = torch.randn(shape[1], generator=g) * 10
            grad = torch.randn(shape, generator=g).to(dtype)
            key = f"{dtype}-{shape}-{cl}"
            out[key + "-fwd"] = ops.l2norm_sum(a, b, sa, sb)
            for eps_name, eps in (("", 1e-10), ("-tiny", 1e-40)):
                out[key + "-bwd" + eps_name] = torch.ops.mdssd.l2norm_sum_backward(grad, a, b, sa, sb, eps)
priors = torch.rand(3001, 4, generator=g) * 0.5 + 0.05
boxes = torch.rand(3, 20, 4, generator=g) * 0.5
boxes[..., 2:] += boxes[..., :2] + 0.01
boxes[1, 3] = boxes[1, 2]  # equal boxes: ties
out["match"] = ops.match_encode(priors, boxes, torch.randint(1, 5, (3, 20), generator=g),
                                torch.tensor([20, 7, 0]))
for dtype in (torch.float32, torch.float64):
    # box_iou rows: m of 1, 50 (three vectors and a tail) and 97; zero-area, inverted and equal
    # boxes, a union of 0; batched too.
    for n, m in ((7, 1), (31, 50), (5, 97)):
        b1 = (torch.rand(2, n, 4, generator=g) * 0.6).to(dtype)
        b1[..., 2:] += b1[..., :2]
        b2 = (torch.rand(2, m, 4, generator=g) * 0.6).to(dtype)
        b2[..., 2:] += b2[..., :2]
        b2[0, 0] = b1[0, 0]
        b2[:, -1, 2:] = b2[:, -1, :2]          # zero area
        b1[1, 0, 2] = b1[1, 0, 0] - 0.1        # inverted
        b1[1, 1, 2:] = b1[1, 1, :2]            # zero area
        b2[1, -1] = b1[1, 1]                   # its pair: union 0, IoU 0
        out[f"iou-{dtype}-{n}-{m}"] = ops.box_iou(b1, b2)
        out[f"iou-2d-{dtype}-{n}-{m}"] = ops.box_iou(b1[0], b2[0])
torch.save(out, sys.argv[1])
'''


def test_every_instruction_set_gives_the_same_bits(tmp_path):
    results = {}
    for isa in ("sse2", "avx2", "avx512"):
        path = tmp_path / f"{isa}.pt"
        env = {**os.environ, "MDSSD_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", SCRIPT, str(path)], cwd=ROOT, env=env, check=True)
        results[isa] = torch.load(path)
    base = results["sse2"]
    for isa in ("avx2", "avx512"):
        for key, value in base.items():
            other = results[isa][key]
            value, other = (value, other) if isinstance(value, tuple) else ((value,), (other,))
            for v, o in zip(value, other):
                assert torch.equal(v, o) or (v.isnan() == o.isnan()).all() and torch.equal(
                    v.nan_to_num(), o.nan_to_num()), f"{isa} differs from sse2 in {key}"
