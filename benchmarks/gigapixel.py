"""Gigapixel GeoTIFFs: streamed sliced detection (memory, speed) vs the plain batched forward and SAHI.

``python -m benchmarks.gigapixel --work DIR --weights CKPT [--sizes 10000,20000,40000] [--tile 512]
[--sahi-python /work/tvenv/bin/python] [--sahi-sizes 10000] [--out benchmarks/results]``

1. For each side ``S`` a synthetic RGB GeoTIFF ``S x S`` (UTM 33N, 0.3 m pixels, deflate, 512 px
   tiles, BigTIFF) is written tile by tile (bounded memory): every 512 px tile is one of 64
   synthetic-signs images (10 sign classes, 24-64 px, 4-12 per tile) drawn at random; the ground
   truth is kept beside it.
2. ``python -m mdssd.detect IMG --tile T --tile-overlap 0.25`` runs in a child process on one
   intra-op thread (plus the reader thread): peak RSS (``ru_maxrss``), wall time, tiles/s and
   megapixels/s of the pipeline; in the same process the model's plain batched forward +
   postprocess on random inputs of the same shape (640 tiles, batches of 32) gives the tiles/s
   the pipeline is held to.
3. With ``--sahi-python`` (a venv with sahi, and mdssd's extension built for its torch by
   ``benchmarks/tvenv_build.sh``): SAHI's ``get_sliced_prediction`` on the same images with the
   same model wrapped as a SAHI ``DetectionModel`` (batched slices, the same resize), NMS/IoU 0.5
   per class like ours: time, peak RSS, and agreement (detections matched one to
   one at IoU >= 0.5 and the same class; scores >= 0.1), plus each one's VOC07 mAP against the ground truth.

Writes ``benchmarks/results/gigapixel-cpu.{md,json}``. Run it niced, alone: it is long.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILE_PX = 512  # the GeoTIFF's internal tiles, and the synthetic images they are drawn from
POOL = 64
UTM33 = [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001]
ORIGIN, PIXEL = (400000.0, 5000000.0), 0.3
SCORE = 0.1  # detections at least this confident are counted, drawn, compared (a weakly trained model)


def _pool(seed: int = 0):
    from mdssd.data import SyntheticSigns

    source = SyntheticSigns("val", POOL, seed=seed, min_size=TILE_PX, max_size=TILE_PX, object_sizes=(24, 64),
                            objects=(4, 12))
    return [source.image(i) for i in range(POOL)], [source.annotation(i) for i in range(POOL)]


def make_geotiff(path: Path, side: int, seed: int = 0) -> dict:
    """The synthetic GeoTIFF of the module docstring; returns its ground truth (boxes, labels)."""
    import tifffile

    images, annotations = _pool(seed)
    across = -(-side // TILE_PX)
    picks = np.random.default_rng(seed + side).integers(0, POOL, (across, across))
    boxes, labels = [], []
    for r in range(across):
        for c in range(across):
            ann = annotations[picks[r, c]]
            shifted = ann.boxes + [c * TILE_PX, r * TILE_PX] * 2
            inside = (shifted[:, 2] <= side) & (shifted[:, 3] <= side)
            boxes.append(shifted[inside])
            labels.append(ann.labels[inside])

    def tiles():
        for r in range(across):
            for c in range(across):
                yield images[picks[r, c]]

    tags = [(33550, 12, 3, (PIXEL, PIXEL, 0.0)), (33922, 12, 6, (0, 0, 0, *ORIGIN, 0)),
            (34735, 3, len(UTM33), UTM33)]
    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE_PX, TILE_PX),
                     photometric="rgb", compression="zlib", compressionargs={"level": 1}, bigtiff=True,
                     extratags=tags, maxworkers=1)
    return {"boxes": np.concatenate(boxes), "labels": np.concatenate(labels)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_stream(image: Path, weights: Path, tile: int, out: Path, plain_tiles: int | None) -> dict:
    """In a fresh process: the detect CLI's path on ``image``, then the plain forward."""
    import torch

    import mdssd
    from mdssd.inference.step4_batches import ModelRunner

    torch.set_num_threads(1)
    start = time.perf_counter()
    detector = mdssd.load(weights, device="cpu")
    found = detector.predict_file(image, out, tile=tile, overlap=0.25, batch_size=32, max_detections=1_000_000,
                                  threshold=SCORE)  # what `mdssd.detect IMG --tile T` runs
    wall = time.perf_counter() - start
    peak = _peak_rss_mb()
    pipeline = found.stats["seconds"]
    from mdssd.inference.step2_tiles import TileGrid, TileSpec
    from mdssd.inference.step1_read import probe_size

    width, height = probe_size(image)
    tiles = len(TileGrid(width, height, TileSpec(tile, 0.25)))
    side = detector.model.config.image_size
    runner, batch = ModelRunner(detector.model), 32
    count = tiles if plain_tiles is None else min(tiles, plain_tiles)
    inputs = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    runner(inputs)  # warm-up
    t0 = time.perf_counter()
    for _ in range(-(-count // batch)):
        runner(inputs)
    plain = -(-count // batch) * batch / (time.perf_counter() - t0)
    return {"wall_s": wall, "pipeline_s": pipeline, "peak_rss_mb": peak, "tiles": tiles, "width": width,
            "height": height, "detections": int((found.scores >= SCORE).sum()), "plain_tiles_per_s": plain,
            "plain_tiles_timed": -(-count // batch) * batch}


def child_sahi(image: Path, weights: Path, tile: int, out: Path) -> dict:
    """In the SAHI venv: get_sliced_prediction with the mdssd model as a SAHI DetectionModel."""
    import tifffile
    import torch
    from sahi.models.base import DetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.prediction import ObjectPrediction

    import mdssd
    from mdssd.inference.step4_batches import tile_inputs

    torch.set_num_threads(1)
    detector = mdssd.load(weights, device="cpu")

    class MdssdSahiModel(DetectionModel):
        def load_model(self):
            self.set_model(detector.model)

        def set_model(self, model, **kwargs):
            self.model = model
            self.category_mapping = {str(i + 1): n for i, n in enumerate(detector.class_names)}

        def perform_inference(self, image):
            self.perform_batch_inference([image])

        @torch.no_grad()
        def perform_batch_inference(self, images):
            inputs = tile_inputs([torch.from_numpy(np.ascontiguousarray(i)) for i in images], tile,
                                 self.model.config.image_size)
            loc, conf = self.model(inputs)
            boxes, scores, labels, counts = self.model.postprocess(loc.float(), conf.float())
            self._original_predictions = [(boxes[b, :counts[b]].numpy() * np.array([im.shape[1], im.shape[0]] * 2),
                                           scores[b, :counts[b]].numpy(), labels[b, :counts[b]].numpy())
                                          for b, im in enumerate(images)]

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=[[0, 0]],
                                                                     full_shape_list=None):
            out = []
            for k, (boxes, scores, labels) in enumerate(self._original_predictions):
                shift = shift_amount_list[k] if shift_amount_list else [0, 0]
                full = full_shape_list[k] if full_shape_list else None
                out.append([ObjectPrediction(bbox=box.tolist(), category_id=int(label),
                                             category_name=self.category_mapping[str(int(label))], score=float(score),
                                             shift_amount=shift, full_shape=full)
                            for box, score, label in zip(boxes, scores, labels) if score >= self.confidence_threshold])
            self._object_prediction_list_per_image = out

    start = time.perf_counter()
    array = tifffile.imread(image)
    model = MdssdSahiModel(model=detector.model, confidence_threshold=SCORE, device="cpu", load_at_init=True)
    result = get_sliced_prediction(array, model, slice_height=tile, slice_width=tile, overlap_height_ratio=0.25,
                                   overlap_width_ratio=0.25, perform_standard_pred=False, postprocess_type="NMS",
                                   postprocess_match_metric="IOU", postprocess_match_threshold=0.5,
                                   postprocess_class_agnostic=False, verbose=0, batch_size=32)
    wall = time.perf_counter() - start
    found = [{"bbox": p.bbox.to_xyxy(), "score": p.score.value, "label": p.category.id}
             for p in result.object_prediction_list]
    (out / "sahi.json").write_text(json.dumps(found))
    return {"wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "detections": len(found)}


def agreement(ours: list[dict], theirs: list[dict], threshold: float = 0.1) -> tuple[float, float]:
    """Share of our detections (score >= threshold) matched one to one by theirs at IoU >= 0.5,
    same class (greedy by score), and the share of theirs matched."""
    import torch

    from mdssd.ops import box_iou

    a = [d for d in ours if d["score"] >= threshold]
    b = [d for d in theirs if d["score"] >= threshold]
    if not a or not b:
        return 0.0, 0.0
    matched = 0
    for label in {d["label"] for d in a} | {d["label"] for d in b}:
        pa = sorted((d for d in a if d["label"] == label), key=lambda d: -d["score"])
        pb = [d for d in b if d["label"] == label]
        if not pa or not pb:
            continue
        iou = box_iou(torch.tensor([d["bbox"] for d in pa], dtype=torch.float32),
                      torch.tensor([d["bbox"] for d in pb], dtype=torch.float32)).numpy()
        taken = np.zeros(len(pb), bool)
        for i in range(len(pa)):
            cand = np.where(~taken & (iou[i] >= 0.5), iou[i], -1)
            j = int(cand.argmax())
            if cand[j] >= 0.5:
                taken[j] = True
                matched += 1
    return matched / len(a), matched / len(b)


def voc_map(found: list[dict], truth: dict, side: int) -> float:
    from mdssd.data import Annotation, SyntheticSigns
    from mdssd.metrics import Detections, voc_eval

    ann = Annotation(0, "big", side, side, truth["boxes"], truth["labels"])
    found = [d for d in found if d["score"] >= SCORE]  # as SAHI's model keeps them
    det = Detections(np.array([d["bbox"] for d in found]).reshape(-1, 4), np.array([d["score"] for d in found]),
                     np.array([d["label"] for d in found]))
    return float(voc_eval([ann], [det], SyntheticSigns.class_names).map_11)


def _coco_to_list(path: Path) -> list[dict]:
    return [{"bbox": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]],
             "score": r["score"], "label": r["category_id"]} for r in json.loads(path.read_text())]


def _run_child(python: str, mode: str, args: list[str], env: dict) -> dict:
    cmd = ["nice", "-n", "10", python, "-m", "benchmarks.gigapixel", "--child", mode, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gigapixel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/mdssd-gigapixel")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--sizes", default="10000,20000,40000")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tiles", default=None, help="per size, comma-separated (default: --tile for all)")
    parser.add_argument("--sahi-python", default=None)
    parser.add_argument("--sahi-sizes", default="10000")
    parser.add_argument("--keep", action="store_true", help="keep the generated GeoTIFFs")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plain-tiles", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        out = Path(args.child_out)
        out.mkdir(parents=True, exist_ok=True)
        if args.child == "stream":
            result = child_stream(Path(args.image), Path(args.weights), args.tile, out, args.plain_tiles)
        else:
            result = child_sahi(Path(args.image), Path(args.weights), args.tile, out)
        print(json.dumps(result))
        return 0

    from benchmarks.harness import cpu_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    sahi_env = {**env, "PYTHONPATH": f"{repo / 'build' / 'tv'}:{repo}"}
    rows = []
    sides = [int(s) for s in args.sizes.split(",")]
    tiles = [int(t) for t in args.tiles.split(",")] if args.tiles else [args.tile] * len(sides)
    for side, tile in zip(sides, tiles):
        image = work / f"synthetic-{side}.tif"
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        truth = make_geotiff(image, side)
        make_s = time.perf_counter() - t0
        row = {"side": side, "tile": tile, "megapixels": side * side / 1e6, "file_gb": image.stat().st_size / 1e9,
               "write_s": make_s, "load_1min_before": round(load_before, 2), "objects": int(len(truth["labels"]))}
        stream = _run_child(sys.executable, "stream",
                            ["--image", str(image), "--weights", args.weights, "--tile", str(tile),
                             "--child-out", str(work / f"out-{side}"),
                             "--plain-tiles", "640"], env)
        row.update({f"stream_{k}": v for k, v in stream.items()})
        row["stream_tiles_per_s"] = stream["tiles"] / stream["pipeline_s"]
        row["stream_mp_per_s"] = row["megapixels"] / stream["pipeline_s"]
        row["ratio_vs_plain"] = row["stream_tiles_per_s"] / stream["plain_tiles_per_s"]
        ours = _coco_to_list(work / f"out-{side}" / "detections.json")
        row["stream_voc07_map"] = voc_map(ours, truth, side)
        if args.sahi_python and str(side) in args.sahi_sizes.split(","):
            sahi = _run_child(args.sahi_python, "sahi", ["--image", str(image), "--weights", args.weights,
                                                          "--tile", str(tile), "--child-out",
                                                          str(work / f"out-{side}")], sahi_env)
            row.update({f"sahi_{k}": v for k, v in sahi.items()})
            theirs = json.loads((work / f"out-{side}" / "sahi.json").read_text())
            row["agree_ours_matched"], row["agree_sahi_matched"] = agreement(ours, theirs)
            row["sahi_voc07_map"] = voc_map(theirs, truth, side)
        row["load_1min_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if not args.keep:
            image.unlink()
    write(Path(args.out), rows, args, cpu_model())
    return 0


def write(out: Path, rows: list[dict], args, cpu: str) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    previous = out / "gigapixel-cpu.json"
    if previous.exists():  # rows of earlier invocations (other sizes) are kept
        done = {r["side"] for r in rows}
        rows = sorted(rows + [r for r in json.loads(previous.read_text())["rows"] if r["side"] not in done],
                      key=lambda r: r["side"])
    meta = {"machine": f"{cpu}, {os.cpu_count()} cores (shared with other jobs), 1 intra-op thread + reader thread",
            "torch": torch.__version__, "python": platform.python_version(), "overlap": 0.25,
            "weights": str(args.weights), "rows": rows}
    (out / "gigapixel-cpu.json").write_text(json.dumps(meta, indent=1))
    lines = ["# Gigapixel GeoTIFFs: streamed sliced detection on the CPU", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}. `python -m benchmarks.gigapixel` "
             "(overlap 0.25, tiles resized to the model's 128 px input, batches of 32).", "",
             "| side (px) | tile (px) | MP | file GB | peak RSS MB | wall s (pipeline s) | MP/s | tiles | tiles/s | plain forward tiles/s | "
             "ratio | detections >= 0.1 | VOC07 mAP | load before/after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['tile']} | {r['megapixels']:.0f} | {r['file_gb']:.2f} | {r['stream_peak_rss_mb']:.0f} | "
                     f"{r['stream_wall_s']:.0f} ({r['stream_pipeline_s']:.0f}) | {r['stream_mp_per_s']:.2f} | {r['stream_tiles']} | "
                     f"{r['stream_tiles_per_s']:.1f} | {r['stream_plain_tiles_per_s']:.1f} | "
                     f"{r['ratio_vs_plain']:.2f} | {r['stream_detections']} | {100 * r['stream_voc07_map']:.1f} | "
                     f"{r['load_1min_before']} / {r['load_1min_after']} |")
    sahi = [r for r in rows if "sahi_wall_s" in r]
    if sahi:
        lines += ["", "SAHI `get_sliced_prediction` (same model as a SAHI DetectionModel, batches of 32, NMS/IoU 0.5, "
                  "torch 2.14.1 venv) on the same images:", "",
                  "| side (px) | SAHI wall s | SAHI peak RSS MB | ours wall s | ours peak RSS MB | SAHI detections | "
                  "ours matched by SAHI | SAHI's matched by ours | SAHI VOC07 mAP | ours VOC07 mAP |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sahi:
            lines.append(f"| {r['side']} | {r['sahi_wall_s']:.0f} | {r['sahi_peak_rss_mb']:.0f} | "
                         f"{r['stream_wall_s']:.0f} | {r['stream_peak_rss_mb']:.0f} | {r['sahi_detections']} | "
                         f"{100 * r['agree_ours_matched']:.1f}% | {100 * r['agree_sahi_matched']:.1f}% | "
                         f"{100 * r['sahi_voc07_map']:.1f} | {100 * r['stream_voc07_map']:.1f} |")
    (out / "gigapixel-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
