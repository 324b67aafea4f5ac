"""The YOLO side of ``python -m benchmarks.peers``: runs inside the peers venv, never imports mdssd.

``PEERS_PYTHON -m benchmarks.peers.yolo_runner JOB.json`` reads one job and writes its result
JSON next to it (``JOB.result.json``). Jobs:

* ``gflops``: GFLOPs of each architecture at each candidate input size (ultralytics' own
  counter, thop MACs x 2 as mdssd's summary counts them);
* ``train``: ``YOLO("<arch>.yaml").train(...)`` from scratch, then predictions on the val images,
  whole (``model.predict``) or sliced (SAHI's ``get_sliced_prediction``), written as
  ``[x1, y1, x2, y2, score, class]`` rows per image file, plus the timings;
* ``slice``: SAHI's ``slice_coco`` on a COCO folder's train split (how SAHI users train on large
  images).

Offline by construction: the model is built from its yaml (``pretrained=False``, no weights),
``plots=False`` (no font download), ``amp=False`` (the AMP check downloads yolo11n.pt), and
``YOLO_OFFLINE=true YOLO_AUTOINSTALL=false`` in the environment (set by the caller, and here
before ultralytics is imported) stop update checks and pip installs; ``YOLO_CONFIG_DIR`` keeps its
settings file inside the run folder.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from .load import LoadSampler  # noqa: E402 (stdlib only; after the environment, as ultralytics below)


def _threads(job: dict) -> None:
    import torch

    torch.set_num_threads(int(job["threads"]))


def gflops(job: dict) -> dict:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    out = {}
    for arch in job["archs"]:
        model = YOLO(f"{arch}.yaml").model
        out[arch] = {str(size): float(get_flops(model, int(size))) for size in job["sizes"]}
    return out


def _image_files(folder: Path) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)


def _predict_whole(weights: Path, images: list[Path], job: dict) -> tuple[dict, float]:
    from ultralytics import YOLO

    model = YOLO(str(weights))
    detections, elapsed = {}, 0.0
    for index, path in enumerate(images):
        start = time.perf_counter()
        result = model.predict(str(path), imgsz=job["imgsz"], conf=job["score_floor"], max_det=job["max_detections"],
                               device="cpu", verbose=False)[0]
        if index:  # the first call builds the predictor: not counted
            elapsed += time.perf_counter() - start
        boxes = result.boxes
        detections[path.name] = [[*map(float, b), float(s), int(c)] for b, s, c in
                                 zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())]
    return detections, elapsed / max(1, len(images) - 1)


def _predict_sliced(weights: Path, images: list[Path], job: dict) -> tuple[dict, float, float]:
    from PIL import Image
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=str(weights),
                                               confidence_threshold=job["score_floor"], device="cpu",
                                               image_size=job["imgsz"])
    detections, elapsed, pixels = {}, 0.0, 0
    for path in images:
        image = Image.open(path).convert("RGB")
        start = time.perf_counter()
        # SAHI's defaults otherwise (as its users run it): a standard whole-image pass added, and
        # its merging, which at our score floor (below SAHI's LOW_MODEL_CONFIDENCE, 0.1) is NMS by
        # IoU at 0.5: SAHI switches from its default greedy NMM by IoS itself, with a warning.
        prediction = get_sliced_prediction(image, model, slice_height=job["tile"], slice_width=job["tile"],
                                           overlap_height_ratio=job["tile_overlap"],
                                           overlap_width_ratio=job["tile_overlap"], verbose=0)
        elapsed += time.perf_counter() - start
        pixels += image.width * image.height
        rows = [[*map(float, p.bbox.to_xyxy()), float(p.score.value), int(p.category.id)]
                for p in prediction.object_prediction_list]
        rows.sort(key=lambda r: -r[4])
        detections[path.name] = rows[: job["max_detections"]]
    return detections, elapsed / len(images), pixels / 1e6 / max(elapsed, 1e-9)


def train(job: dict) -> dict:
    from ultralytics import YOLO

    _threads(job)
    run = Path(job["run_dir"])
    model = YOLO(f"{job['arch']}.yaml")
    start = time.time()
    with LoadSampler() as load:
        model.train(data=job["data_yaml"], epochs=job["epochs"], imgsz=job["imgsz"], batch=job["batch"],
                    workers=job["workers"], device="cpu", seed=job["seed"], deterministic=True, pretrained=False,
                    plots=False, amp=False, val=False, project=str(run.parent), name=run.name, exist_ok=True,
                    verbose=False)
    train_wall = time.time() - start
    weights = run / "weights" / "last.pt"
    images = _image_files(Path(job["val_images"]))
    # The training loop's own clock (results.csv "time" at the last epoch: no set-up, no final
    # validation), as mdssd's train_log.csv times its steps.
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or int(float(rows[-1]["epoch"])) != job["epochs"]:
        raise RuntimeError(f"{run / 'results.csv'}: no row for the last epoch {job['epochs']}")
    result = {"train_wall_s": train_wall, "train_s": float(rows[-1]["time"]), "epochs": job["epochs"],
              "images_seen": job["epochs"] * job["train_images"], **load.summary()}
    if job.get("tile"):
        result["detections"], result["infer_s_per_image"], result["sliced_mp_per_s"] = _predict_sliced(
            weights, images, job)
    else:
        result["detections"], result["infer_s_per_image"] = _predict_whole(weights, images, job)
    return result


def slice_train(job: dict) -> dict:
    from sahi.slicing import slice_coco

    start = time.time()
    coco, path = slice_coco(coco_annotation_file_path=job["annotations"], image_dir=job["images"],
                            output_coco_annotation_file_name=job["name"], output_dir=job["out_dir"],
                            slice_height=job["tile"], slice_width=job["tile"],
                            overlap_height_ratio=job["tile_overlap"], overlap_width_ratio=job["tile_overlap"],
                            ignore_negative_samples=False, verbose=False)
    return {"annotations": str(path), "slices": len(coco["images"]), "wall_s": time.time() - start}


JOBS = {"gflops": gflops, "train": train, "slice": slice_train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.peers.yolo_runner JOB.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    job = json.loads(path.read_text())
    result = JOBS[job["job"]](job)
    out = path.with_suffix(".result.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
