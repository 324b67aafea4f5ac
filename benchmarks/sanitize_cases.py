"""Small calls of every CUDA kernel path, for compute-sanitizer (memcheck, racecheck, synccheck)
in benchmarks/gpu_check.sh: each op once or twice per launch shape (tiled/flat, aligned and
misaligned loads, NCHW and channels_last, register and two-pass channel counts, shared and global
scratch), small enough that the sanitizers' 10-100x slowdown stays within seconds. Every result
is compared with the CPU kernel, so a run also fails on wrong values.

    python -m benchmarks.sanitize_cases [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from mdssd import ops


def boxes(n, gen, batch=None, dtype=torch.float32, max_size=0.3):
    shape = (n,) if batch is None else (batch, n)
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    wh = 0.01 + max_size * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    return torch.cat([xy, xy + wh], -1).clamp(0, 1).to(dtype)


def priors(n, gen, dtype=torch.float32):
    c = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    return torch.cat([c, 0.02 + 0.4 * torch.rand(n, 2, generator=gen, dtype=torch.float64)], -1).to(dtype)


def misaligned(t, device):
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=device)
    storage[1:].copy_(t.reshape(-1))
    return storage[1:].view(t.shape)


def same(name, got, want, **tol):
    got = [g.cpu() for g in (got if isinstance(got, (tuple, list)) else [got])]
    want = want if isinstance(want, (tuple, list)) else [want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)
    print(f"ok {name}")


def run(device):
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for m in (50, 256):  # flat and tiled shapes of box_iou
            a, b = boxes(37, gen, batch=2, dtype=dtype), boxes(m, gen, batch=2, dtype=dtype)
            same(f"box_iou {dtype} m={m}", ops.box_iou(a.to(device), b.to(device)), ops.box_iou(a, b), rtol=0, atol=0)
        a, b = boxes(33, gen, dtype=dtype), boxes(256, gen, dtype=dtype)
        same(f"box_iou misaligned {dtype}", ops.box_iou(misaligned(a, device), misaligned(b, device)), ops.box_iou(a, b), rtol=0, atol=0)

        p = priors(3000, gen, dtype)
        gt = boxes(200, gen, batch=3, dtype=dtype)  # > one 128-gt shared chunk
        labels = torch.randint(1, 21, (3, 200), generator=gen)
        counts = torch.tensor([200, 129, 5])
        for t in (gt, labels):
            t[2, 5:] = 0 if t.dtype == torch.long else 7.0
        want = ops.match_encode(p, gt, labels, counts)
        same(f"match_encode {dtype}", ops.match_encode(p.to(device), gt.to(device), labels.to(device), counts.to(device)), want, rtol=1e-6, atol=1e-6)
        same(f"match_encode misaligned {dtype}", ops.match_encode(misaligned(p, device), gt.to(device), labels.to(device), counts.to(device)), want, rtol=1e-6, atol=1e-6)

        n = 700
        bx, sc = boxes(n, gen, dtype=dtype, max_size=0.2), torch.rand(n, generator=gen, dtype=dtype)
        idxs = torch.randint(0, 5, (n,), generator=gen)
        same(f"nms {dtype}", ops.nms(bx.to(device), sc.to(device), 0.5), ops.nms(bx, sc, 0.5), rtol=0, atol=0)
        same(f"batched_nms {dtype}", ops.batched_nms(bx.to(device), sc.to(device), idxs.to(device), 0.5),
             ops.batched_nms(bx, sc, idxs, 0.5), rtol=0, atol=0)

        loc = 0.5 * torch.randn(2, 1500, 4, generator=gen, dtype=torch.float64).to(dtype)
        conf = 3 * torch.randn(2, 1500, 6, generator=gen, dtype=torch.float64).to(dtype)
        pr = priors(1500, gen, dtype)
        for kwargs in (dict(top_k_per_class=200, keep_top_k=100), dict(top_k_per_class=1000, keep_top_k=1200)):
            # shared-memory scratch, then the global-memory scratch path
            want = ops.ssd_postprocess(loc, conf, pr, **kwargs)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
            same(f"ssd_postprocess {dtype} {kwargs}", ops.ssd_postprocess(loc.to(device), conf.to(device), pr.to(device), **kwargs), want, **tol)

    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for channels in (40, 300):  # in registers, two passes
            for fmt in (torch.contiguous_format, torch.channels_last):
                a = torch.randn(2, channels, 5, 7, generator=gen).to(dtype).contiguous(memory_format=fmt)
                b = torch.randn(2, channels, 5, 7, generator=gen).to(dtype).contiguous(memory_format=fmt)
                sa, sb = 10 + torch.randn(channels, generator=gen), 20 + torch.randn(channels, generator=gen)
                g = torch.randn(2, channels, 5, 7, generator=gen).to(dtype).contiguous(memory_format=fmt)
                d = [t.to(device) for t in (a, b, sa, sb, g)]
                tol = dict(rtol=2e-2, atol=2e-2) if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-4, atol=1e-4)
                name = f"l2norm_sum {dtype} C={channels} {'NHWC' if fmt == torch.channels_last else 'NCHW'}"
                same(name, ops.l2norm_sum(*d[:4]), ops.l2norm_sum(a, b, sa, sb), **tol)
                got = torch.ops.mdssd.l2norm_sum_backward(d[4], *d[:4], 1e-10)
                want = torch.ops.mdssd.l2norm_sum_backward(g, a, b, sa, sb, 1e-10)
                # scale gradients sum many terms: compare relative to their size
                for x, y in zip(got, want):
                    torch.testing.assert_close(x.cpu().double(), y.double(), rtol=5e-2, atol=5e-2 * float(y.abs().max()) + 1e-3)
                print(f"ok {name} backward")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    run(torch.device(args.device))
    print("all cases ok")


if __name__ == "__main__":
    main()
