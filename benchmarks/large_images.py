"""Small objects in large images: resize vs native-resolution crop training + sliced inference.

``python -m benchmarks.large_images --work DIR [--steps N] [--runs resize,crop] [--report]``

1. The synthetic set at large-image settings (1024-2048 px sides, every object and distractor
   6-32 px, 4-12 signs per image; ``--synthetic-min-size 1024 --synthetic-max-size 2048
   --synthetic-object-sizes "[6, 32]" --synthetic-objects "[4, 12]"``) is written once to
   ``DIR/data`` as a COCO folder (JPEG quality 95): generating a 2048 px image takes ~0.4 s, and
   decoding it from disk ~10x less, so the runs measure training rather than the generator.
2. Two runs of ``python -m mdssd.train`` on it with the same schedule (``mdssd_tiny``, 128 px):
   ``resize`` (SSD augmentation of whole images, today's default) and ``crop`` (``--crop``).
3. Each final checkpoint evaluated on the val split both ways, whole images resized and
   ``--tile 128 --tile-overlap 0.25``: VOC07 mAP, COCO AP / AP_small (pycocotools) and the
   inference time per megapixel (forward + postprocess + merge, images already decoded).

``--runs`` picks the runs to train (they can run in parallel, in two invocations);
``--report`` evaluates whatever checkpoints exist and writes
``benchmarks/results/large-images-<device>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .harness import cpu_model

SYNTHETIC = dict(min_size=1024, max_size=2048, object_sizes=(6, 32), objects=(4, 12))
SPLITS = {"train": 64, "val": 24}
TILE, OVERLAP = 128, 0.25


def export(data: Path, seed: int = 0) -> None:
    """The large-image synthetic splits as a COCO folder (skipped when already written)."""
    from PIL import Image

    from mdssd.data import Annotation, SyntheticSigns, coco_ground_truth

    for split, count in SPLITS.items():
        coco = {"train": "train2017", "val": "val2017"}[split]
        path = data / "annotations" / f"instances_{coco}.json"
        if path.exists():
            continue
        (data / coco).mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        source = SyntheticSigns(split, count, seed=seed, **SYNTHETIC)
        annotations = []
        for index in range(count):
            ann = source.annotation(index)
            name = Path(ann.file_name).with_suffix(".jpg").name
            Image.fromarray(source.image(index)).save(data / coco / name, quality=95)
            annotations.append(Annotation(ann.image_id, name, ann.width, ann.height, ann.boxes, ann.labels))
        path.write_text(json.dumps(coco_ground_truth(annotations, tuple(source.class_names))))


def train_args(data: Path, out: Path, run: str, steps: int) -> list[str]:
    """``mdssd.train`` flags of one run (``resize`` or ``crop``) on the COCO folder ``data``."""
    args = ["--dataset", "coco", "--data-root", str(data), "--steps", str(steps),
            "--out-dir", str(out), "--eval-interval", "0", "--checkpoint-interval", "100",
            "--workers", "1", "--threads", "1", "--no-progress", "--no-tensorboard", "--resume", "auto"]
    if run == "crop":
        args += ["--crop", "--tile", str(TILE), "--tile-overlap", str(OVERLAP)]
    return args


def evaluate(weights: Path, data: Path, tile) -> dict:
    """Metrics and timing of one checkpoint on the val split, resized or tiled."""
    from mdssd.data import build_source
    from mdssd.eval import score
    from mdssd.inference import load_model, predict_images
    from mdssd.tiling import predict_tiled

    model, _ = load_model(weights, device="cpu")
    source = build_source("coco", data, "val")
    images = [source.image(i) for i in range(len(source))]
    megapixels = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    start = time.perf_counter()
    detections = []
    for image in images:  # one image at a time: time per image as a user sees it
        detections += predict_tiled(model, [image], tile) if tile else predict_images(model, [image])
    seconds = time.perf_counter() - start
    report = score(source, detections, coco=True)
    stats = report.coco.stats if report.coco else {}
    return {"voc07_map_11": report.voc.map_11, "voc07_map_area": report.voc.map_area,
            "coco_ap": stats.get("AP"), "coco_ap50": stats.get("AP50"), "coco_ap_small": stats.get("AP_small"),
            "seconds": seconds, "megapixels": megapixels, "s_per_megapixel": seconds / megapixels,
            "detections": int(sum(len(d.scores) for d in detections))}


MODES = ("resize", "tile", "tile-ios")


def measure(work: Path, data: Path, only: set[str] | None = None) -> list[dict]:
    """Every existing run's final checkpoint under every inference mode; each row is kept in
    ``work/rows/<run>-<mode>.json`` and reused, so rows can be computed by parallel processes
    (``only``: the ``run-mode`` names this process computes; the others are read if present)."""
    from mdssd.tiling import TileSpec

    torch.set_num_threads(1)
    specs = {"resize": None, "tile": TileSpec(TILE, OVERLAP), "tile-ios": TileSpec(TILE, OVERLAP, merge="ios")}
    rows = []
    (work / "rows").mkdir(parents=True, exist_ok=True)
    for run in ("resize", "crop"):
        weights = work / run / "last.pt"
        for mode in MODES:
            cached = work / "rows" / f"{run}-{mode}.json"
            if not cached.exists() and weights.exists() and (only is None or f"{run}-{mode}" in only):
                state = torch.load(weights, map_location="cpu", weights_only=False)
                load = os.getloadavg()[0]
                metrics = evaluate(weights, data, specs[mode])
                name = "resize" if mode == "resize" else f"tile {TILE}/{OVERLAP}" + (" ios" if mode == "tile-ios" else "")
                row = {"training": run, "steps": state["step"], "inference": name, "load_1min": round(load, 2),
                       **metrics}
                cached.write_text(json.dumps(row))
                print(json.dumps(row), flush=True)
            if cached.exists():
                rows.append(json.loads(cached.read_text()))
    return rows


def write(out: Path, stem: str, title: str, notes: list[str], meta: dict, rows: list[dict]) -> Path:
    """``out/<stem>.json`` (meta + rows) and ``out/<stem>.md`` (a table)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{cpu_model()}, {os.cpu_count()} cores (shared), 1 intra-op thread",
            "torch": torch.__version__, "python": platform.python_version(), **meta, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))

    def pct(v):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}"

    lines = [f"# {title}", "", f"Machine: {meta['machine']}, torch {meta['torch']}.", "", *notes, "",
             "| training | steps | inference | VOC07 mAP@0.5 | COCO AP | AP50 | AP_small | s / megapixel | load |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['training']} | {r['steps']} | {r['inference']} | {pct(r['voc07_map_11'])} | "
                     f"{pct(r['coco_ap'])} | {pct(r['coco_ap50'])} | {pct(r['coco_ap_small'])} | "
                     f"{r['s_per_megapixel']:.3f} | {r['load_1min']} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out / f"{stem}.md"


def report(work: Path, out: Path, steps: int, only: set[str] | None = None) -> Path:
    rows = measure(work, work / "data", only)
    meta = {"data": {"synthetic": {k: list(v) if isinstance(v, tuple) else v for k, v in SYNTHETIC.items()},
                     "splits": SPLITS, "format": "COCO folder, JPEG quality 95"},
            "train": f"mdssd_tiny 128 px, {steps} steps of batch 8, defaults otherwise"}
    notes = [f"Data: synthetic signs, {SPLITS['train']} train / {SPLITS['val']} val images of 1024-2048 px, "
             "every object 6-32 px, 4-12 per image (written by `python -m benchmarks.large_images`).",
             f"Training: {meta['train']}; `crop` adds `--crop`. Timing: inference per image (decoded) on 1 "
             "thread; load: the 1-minute load average when each evaluation started (the machine was shared)."]
    return write(out, "large-images-cpu-amd-epyc-1thread", "Small objects in large images: resize vs crop + tile",
                 notes, meta, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the data set and the runs")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", default="resize,crop", help="comma-separated: resize, crop (empty: none)")
    parser.add_argument("--report", action="store_true", help="evaluate the runs and write the results")
    parser.add_argument("--rows", default=None,
                        help="with --report: compute only these comma-separated run-mode rows "
                             "(resize-resize, crop-tile, crop-tile-ios, ...); others are reused")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    work = Path(args.work)
    export(work / "data")
    from mdssd import config as config_mod
    from mdssd.train import train

    for run in filter(None, args.runs.split(",")):
        if run not in ("resize", "crop"):
            parser.error(f"unknown run {run!r}")
        train(config_mod.from_args(train_args(work / "data", work / run, run, args.steps)))
    if args.report:
        print(report(work, Path(args.out), args.steps, set(args.rows.split(",")) if args.rows else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
