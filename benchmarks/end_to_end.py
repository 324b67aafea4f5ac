"""End-to-end throughput: training steps, inference with post-processing, and the data loader.

    python -m benchmarks.end_to_end [--device cpu|cuda] [--quick] [--out DIR] [--sections train,infer,data]
                                    [--compile-modes default,max-autotune-no-cudagraphs] [--models mdssd300,ssd300]

Training step = forward + MultiBox loss + backward + SGD (momentum 0.9, weight decay 5e-4) for
mdssd300 and ssd300 on the ``ext`` and ``reference`` backends, float32 and bfloat16 autocast, and
torchvision's ``ssd300_vgg16`` where importable. Inference = forward + ``model.postprocess`` at
batch 1 and 32 (CPU: smaller), eager, ``torch.compile`` (mdssd.cuda_graphs.compiled_runner) and on
CUDA a CUDA graph (mdssd.cuda_graphs.CudaGraphRunner). The ``ext`` training step is also timed with
the detector compiled (mdssd.train.compile_model, as ``python -m mdssd.train --compile``) in each
of ``--compile-modes``; the compile time (first steps less an eager step) is in the note, with the
number of steps after which compiling pays.
Data = images/s out of a ``DataLoader`` over the synthetic training set with SSD augmentation.
On CUDA the training rows also give the model FLOPs utilisation: FLOPs of one step (counted by
``torch.utils.flop_counter``) per second over the measured matrix-multiply rate.
Writes ``<out>/<device stem>-end-to-end.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

import torch

import mdssd  # noqa: F401

from . import harness, inputs

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 21

try:  # torchvision: in the second venv (benchmarks/README.md) and on the GPU machine
    import torchvision
except ImportError:  # pragma: no cover - depends on the install
    torchvision = None


@dataclasses.dataclass
class Result:
    section: str
    model: str
    backend: str
    precision: str
    batch: int
    mode: str
    status: str = "ok"
    median_ms: float | None = None
    repeats: int | None = None
    images_per_s: float | None = None
    flops_per_image: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None
    reason: str | None = None
    compile_s: float | None = None


def _autocast(device: str, precision: str, cache: bool = True):
    # cache=False for code captured in a CUDA graph: autocast's cast-weight cache is freed when
    # the context exits, and a graph replay would read the freed copies.
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def sample_batch(batch: int, image_size: int, device: str) -> tuple[dict, str]:
    """One training batch: from the synthetic data set (``mdssd.data``) when importable, else
    ImageNet-normalised noise images with small-object ground truths."""
    try:
        from mdssd.data import build_dataset, collate
    except ImportError:
        gen = torch.Generator().manual_seed(0)
        boxes, labels, counts = inputs.ground_truth(batch, 20, gen, NUM_CLASSES)
        data = {"images": torch.randn(batch, 3, image_size, image_size, generator=gen),
                "gt_boxes": boxes, "gt_labels": labels, "gt_counts": counts}
        source = "random images + small-object boxes (mdssd.data not importable)"
    else:
        dataset = build_dataset("synthetic", split="train", image_size=image_size, augment_seed=0)
        data = collate([dataset[i] for i in range(batch)])
        source = "mdssd.data synthetic training set (SSD augmentation)"
    return {k: v.to(device) for k, v in data.items() if k != "image_ids"}, source


def _error(base: Result, error: Exception) -> Result:
    traceback.print_exc(file=sys.stderr)
    message = str(error).splitlines()[0][:200] if str(error) else ""
    return dataclasses.replace(base, status="error", reason=f"{type(error).__name__}: {message}")


def _finish(base: Result, timing: harness.Timing) -> Result:
    return dataclasses.replace(base, median_ms=timing.median_ms, repeats=timing.repeats,
                               images_per_s=base.batch / (timing.median_ms * 1e-3))


def count_flops(fn) -> float:
    """FLOPs of one call of ``fn`` (matrix products and convolutions, forward and backward) as
    counted by torch's FlopCounterMode; custom ops and element-wise work count 0."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# Training


def _mdssd_step(model, optimizer, data, device, precision):
    def step(_):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loc, conf = model(data["images"])
            # check=False: the value checks read the loss on the host (a sync per step).
            losses = model.loss(loc, conf, data["gt_boxes"], data["gt_labels"], data["gt_counts"], check=False)
        losses["total"].backward()
        optimizer.step()
    return step


def _torchvision_step(model, optimizer, data, device, precision, image_size):
    # torchvision takes unnormalised [0, 1] images and absolute xyxy boxes per image.
    images = _torchvision_images(data["images"])
    targets = [{"boxes": data["gt_boxes"][b, :n] * image_size, "labels": data["gt_labels"][b, :n]}
               for b, n in enumerate(data["gt_counts"].tolist())]

    def step(_):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def _compile_note(compile_s: float, eager_ms: float | None, compiled_ms: float) -> str:
    note = f"compile {compile_s:.0f} s"
    if eager_ms and compiled_ms < eager_ms:
        note += f"; pays after {compile_s / ((eager_ms - compiled_ms) * 1e-3):,.0f} calls"
    elif eager_ms:
        note += "; never pays (not faster than eager)"
    return note


def training(device: str, batch: int, precisions, models, backends, settings, rates,
             compile_modes=()) -> list[Result]:
    from mdssd.model import build_model
    from mdssd.train import compile_model

    results = []
    batches: dict[int, dict] = {}

    def data_for(image_size: int) -> dict:
        if image_size not in batches:
            batches[image_size], source = sample_batch(batch, image_size, device)
            print(f"training batch at {image_size}: {source}")
        return batches[image_size]

    flops_cache: dict[tuple, float] = {}
    configs = [(m, b) for m in models for b in backends]
    if torchvision is not None:
        configs.append((TORCHVISION_SSD, "torchvision"))
    for model_name, backend in configs:
        for precision in precisions:
            modes = ["eager"] + ([f"torch.compile {m}" for m in compile_modes] if backend == "ext" else [])
            eager_ms = None
            for mode in modes:
                base = Result("train", model_name, backend, precision, batch, mode)
                try:
                    torch.manual_seed(0)
                    if backend == "torchvision":
                        model = torchvision_ssd(device).train()
                        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
                        step = _torchvision_step(model, optimizer, data_for(300), device, precision, 300)
                    else:
                        model = build_model(model_name, num_classes=NUM_CLASSES, backend=backend).to(device).train()
                        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
                        step = _mdssd_step(model, optimizer, data_for(model.config.image_size), device, precision)
                    compile_s = None
                    if mode != "eager":
                        torch._dynamo.reset()
                        compile_model(model, mode.split()[-1])
                        t0 = time.perf_counter()
                        for _ in range(2):  # forward+backward compile; a second call for guards
                            step(None)
                        harness.synchronize(device)
                        compile_s = time.perf_counter() - t0
                    timing = harness.measure(step, [None], device, **settings)
                    result = _finish(base, timing)
                    if mode == "eager":
                        eager_ms = timing.median_ms
                    else:
                        compile_s = max(0.0, compile_s - 2 * timing.median_ms * 1e-3)
                        result = dataclasses.replace(result, compile_s=compile_s,
                                                     reason=_compile_note(compile_s, eager_ms, timing.median_ms))
                    if device == "cuda" and mode == "eager":
                        key = (model_name, precision)
                        if key not in flops_cache:  # the FLOPs do not depend on the backend
                            flops_cache[key] = count_flops(lambda: step(None))
                        flops = flops_cache[key]
                        achieved = flops / (timing.median_ms * 1e-3)
                        result = dataclasses.replace(
                            result, flops_per_image=flops / batch, achieved_tflops=achieved / 1e12,
                            mfu=achieved / rates["bf16" if precision == "bf16" else "fp32"])
                    results.append(result)
                    del model, optimizer, step
                except Exception as error:  # reported in the table, never dropped
                    results.append(_error(base, error))
                print(_line(results[-1]), flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------
# Inference


TORCHVISION_SSD = "torchvision ssd300_vgg16"


def torchvision_ssd(device: str):
    """torchvision's SSD300 (VGG16), randomly initialised like ours, with post-processing set to
    our models' values (mdssd.model.config: score > 0.01, per-class top 400, IoU 0.45, keep 200);
    these are also torchvision's defaults, and are passed so that the comparison does not depend
    on them."""
    from mdssd.model import get_config

    p = get_config("ssd300").postprocess
    return torchvision.models.detection.ssd300_vgg16(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, score_thresh=p.score_threshold,
        nms_thresh=p.iou_threshold, topk_candidates=p.top_k_per_class,
        detections_per_img=p.keep_top_k).to(device)


def _torchvision_images(images: torch.Tensor) -> list[torch.Tensor]:
    """Our normalised batch as torchvision's input: a list of [0, 1] images (its transform
    normalises with the same ImageNet mean and std, and resizes to 300x300)."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=images.device).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=images.device).view(3, 1, 1)
    return [img * std + mean for img in images]


def inference(device: str, batches, precisions, models, settings, compile_modes=("default",)) -> list[Result]:
    from mdssd.cuda_graphs import CudaGraphRunner, compiled_runner
    from mdssd.model import build_model

    results = []
    if torchvision is not None:
        models = [*models, TORCHVISION_SSD]
    for model_name in models:
        torch.manual_seed(0)
        if model_name == TORCHVISION_SSD:
            model, size, backend = torchvision_ssd(device).eval(), 300, "torchvision"
        else:
            model = build_model(model_name, num_classes=NUM_CLASSES, backend="ext").to(device).eval()
            size, backend = model.config.image_size, "ext"
        for batch in batches:
            images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
            for precision in precisions:
                if backend == "torchvision":
                    tv_images = _torchvision_images(images)

                    def detect(x, precision=precision, tv_images=tv_images):
                        with torch.no_grad(), _autocast(device, precision, cache=False):
                            return model(tv_images)  # transform + forward + post-processing
                else:
                    def detect(x, precision=precision):
                        # Inference uses each weight once per call, so autocast's cache saves nothing.
                        with torch.no_grad(), _autocast(device, precision, cache=False):
                            loc, conf = model(x)
                        return model.postprocess(loc, conf)

                modes = ["eager"]
                if backend == "ext":
                    modes += [f"torch.compile {m}" for m in compile_modes]
                    modes += ["cuda graph"] if device == "cuda" else []
                amp = torch.bfloat16 if precision == "bf16" else None
                eager_ms = None
                for mode in modes:
                    base = Result("infer", model_name, backend, precision, batch, mode)
                    try:
                        compile_s = None
                        if mode == "eager":
                            fn = detect
                        elif mode.startswith("torch.compile"):
                            torch._dynamo.reset()
                            m = mode.split()[-1]
                            fn = compiled_runner(model, mode=None if m == "default" else m, amp_dtype=amp)
                            t0 = time.perf_counter()
                            fn(images)  # compile outside the timing
                            harness.synchronize(device)
                            compile_s = time.perf_counter() - t0
                        else:
                            fn = CudaGraphRunner(model, batch, amp_dtype=amp)
                            fn(images)  # capture outside the timing
                        timing = harness.measure(lambda _: fn(images), [None], device, **settings)
                        note = _detections_note(fn(images))
                        if mode == "eager":
                            eager_ms = timing.median_ms
                        if compile_s is not None:
                            note += "; " + _compile_note(compile_s, eager_ms, timing.median_ms)
                        results.append(dataclasses.replace(_finish(base, timing), reason=note, compile_s=compile_s))
                    except Exception as error:
                        results.append(_error(base, error))
                    print(_line(results[-1]), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def _detections_note(out) -> str:
    """Detections per image of one call: how much post-processing the (random) weights leave."""
    if isinstance(out, list):  # torchvision: a dict per image
        counts = [int(d["scores"].numel()) for d in out]
    else:
        counts = out[3].tolist()
    return f"{sum(counts) / max(1, len(counts)):.0f} detections/image"


# ---------------------------------------------------------------------------------------------
# Data loading


def data_loading(device: str, batch: int, workers_list, batches: int) -> list[Result]:
    results = []
    try:
        from mdssd.data import build_dataset, collate
    except ImportError as error:
        return [Result("data", "synthetic", "-", "-", batch, "-", status="skipped",
                       reason=f"mdssd.data not importable: {error}")]
    dataset = build_dataset("synthetic", split="train", image_size=300, augment_seed=0)
    for workers in workers_list:
        base = Result("data", "synthetic train (SSD augmentation)", "-", "-", batch, f"{workers} workers")
        try:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                drop_last=True, pin_memory=device == "cuda", generator=torch.Generator().manual_seed(0))
            it = iter(loader)
            next(it)  # worker start-up is not throughput
            t0 = time.perf_counter()
            for _ in range(batches):
                item = next(it)
                if device == "cuda":
                    item["images"].to(device, non_blocking=True)
            harness.synchronize(device)
            elapsed = time.perf_counter() - t0
            del it, loader
            results.append(dataclasses.replace(base, median_ms=elapsed / batches * 1e3, repeats=batches,
                                               images_per_s=batches * batch / elapsed))
        except Exception as error:
            results.append(_error(base, error))
        print(_line(results[-1]), flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Output


HEADERS = ["section", "model", "backend", "precision", "batch", "mode", "images/s", "ms/batch",
           "TFLOP/s", "MFU", "note"]


def _line(r: Result) -> str:
    return "  " + "  ".join(_cells(r)[:7]) + (f"  {r.status}: {r.reason}" if r.status != "ok" else f"  {r.reason or ''}")


def _cells(r: Result) -> list[str]:
    return [r.section, r.model, r.backend, r.precision, str(r.batch), r.mode,
            (f"{r.images_per_s:.1f}" if r.images_per_s >= 10 else f"{r.images_per_s:.3g}") if r.images_per_s else "-",
            f"{r.median_ms:.1f}" if r.median_ms else "-",
            f"{r.achieved_tflops:.1f}" if r.achieved_tflops else "-",
            f"{100 * r.mfu:.0f}%" if r.mfu else "-",
            r.reason or ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="one small configuration per section (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--sections", default="train,infer,data")
    parser.add_argument("--compile-modes", default="default",
                        help="torch.compile modes timed for the ext backend (comma-separated; '' for none), "
                        "e.g. default,max-autotune-no-cudagraphs")
    parser.add_argument("--models", default="mdssd300,ssd300", help="comma-separated presets")
    parser.add_argument("--precisions", default=None, help="comma-separated subset of fp32,bf16")
    args = parser.parse_args(argv)
    compile_modes = tuple(m for m in args.compile_modes.split(",") if m)
    sections = set(args.sections.split(","))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")

    started = time.perf_counter()
    device = args.device
    info = harness.DeviceInfo.collect(device)
    print("\n".join(info.header_lines()))
    if device == "cuda":
        settings = dict(budget_s=2.0, min_repeats=10, max_repeats=50, warmup=3)
        train_batch, infer_batches, loader = 32, (1, 32), (32, (0, min(8, os.cpu_count() or 1)), 20)
        precisions = ("fp32", "bf16")
    else:
        # A 300x300 VGG16 training step takes several seconds per image on a few cores: batch 1
        # for training, 1 and 4 for inference, the median of 3 after one warm-up.
        settings = dict(budget_s=0.0, min_repeats=3, max_repeats=3, warmup=1)
        train_batch, infer_batches, loader = 1, (1, 4), (8, (0, min(2, os.cpu_count() or 1)), 4)
        # Without bf16 instructions autocast's bf16 convolutions are emulated and a training
        # step takes minutes: such CPUs run float32 only, and the table says so.
        precisions = ("fp32", "bf16") if _cpu_has_bf16() else ("fp32",)
    models, backends = tuple(args.models.split(",")), ("ext", "reference")
    if args.precisions:
        precisions = tuple(p for p in args.precisions.split(",") if p in precisions or device == "cuda")
    if args.quick:
        settings = dict(budget_s=0.0, min_repeats=1, max_repeats=1, warmup=1)
        train_batch, infer_batches, loader = 1, (1,), (2, (0,), 1)
        models, backends, precisions = ("mdssd_tiny",), ("ext",), ("fp32",)

    rates = {}
    notes = [f"timing: {'CUDA events' if device == 'cuda' else 'time.perf_counter'}, "
             f"{settings['warmup']} warm-up step(s), median of {settings['min_repeats']}-{settings['max_repeats']}",
             harness.pin_allocator()]
    if torchvision is not None:
        notes.append(
            f"torchvision {torchvision.__version__}: ssd300_vgg16 (random init, as ours) on the same images and "
            "boxes (300x300, the same batch, torch threads and precision); its step includes its own "
            "transform (normalise + resize to 300x300) and, in inference, its post-processing with our "
            "settings (score > 0.01, per-class top 400, IoU 0.45, keep 200); ours: forward + "
            "model.postprocess (ssd_postprocess) with the same settings")
    if device == "cuda" and "train" in sections:
        # cuDNN runs float32 convolutions in TF32 by default, so the float32 ceiling is TF32's.
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        rates["fp32"] = harness.matmul_rate(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = previous
        rates["bf16"] = harness.matmul_rate(device, torch.bfloat16)
        notes.append(f"matmul ceilings measured now (8192^3): TF32 {rates['fp32'] / 1e12:.0f} TFLOP/s "
                     f"(the fp32 runs' convolutions use TF32, cuDNN's default), bf16 {rates['bf16'] / 1e12:.0f} TFLOP/s; "
                     "MFU = FlopCounterMode FLOPs of one step / step time / ceiling")

    results: list[Result] = []
    if device == "cpu" and "bf16" not in precisions and not args.quick:
        results.append(Result("train", "all", "-", "bf16", train_batch, "eager", status="skipped",
                              reason="this CPU has no bf16 instructions (avx512_bf16/amx_bf16)"))
    if "train" in sections:
        results += training(device, train_batch, precisions, models, backends, settings, rates, compile_modes)
    if "infer" in sections:
        results += inference(device, infer_batches, precisions if device == "cuda" else ("fp32",), models,
                             settings, compile_modes)
    if "data" in sections:
        batch, workers, n = loader
        results += data_loading(device, batch, workers, n)

    elapsed = time.perf_counter() - started
    body = [_cells(r) for r in results]
    print()
    print(harness.render_text(HEADERS, body))
    notes.append(f"whole run {elapsed:.0f} s, load average at the end {harness.load_average()}"
                 + (" (--quick: smoke sizes, not results)" if args.quick else ""))
    stem = info.file_stem + "-end-to-end" + ("-quick" if args.quick else "")
    md_path, json_path = harness.write_results(
        args.out, stem, f"mdssd end-to-end benchmarks: {info.name}", info, notes,
        harness.render_markdown(HEADERS, body),
        {"suite": "end_to_end", "quick": args.quick, "settings": settings, "matmul_rates": rates,
         "elapsed_s": elapsed, "results": [dataclasses.asdict(r) for r in results]})
    print(f"\nwrote {md_path} and {json_path} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
