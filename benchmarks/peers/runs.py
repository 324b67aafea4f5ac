"""One contestant run of ``python -m benchmarks.peers``: train, predict the val images, score.

mdssd runs in this process (``mdssd.train.train``, then ``mdssd.inference`` / ``mdssd.tiling``);
YOLO runs in the peers venv through :mod:`benchmarks.peers.yolo_runner`. Both end as one
:class:`mdssd.metrics.Detections` per val image, scored by the same call
(:func:`mdssd.eval.score`: pycocotools with the AI-TOD size bins) on the same COCO ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data import Prepared
from .load import LoadSampler, loadavg

SCORE_FLOOR = 0.01      # mdssd's post-processing floor (SPEC.md); YOLO's conf is set to it
MAX_DETECTIONS = 200    # per image, both sides
TILE, TILE_OVERLAP = 128, 0.25


def write_json(path: Path, data: Any) -> None:
    """Atomically: a run interrupted while writing leaves no half result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def score_detections(source, detections) -> dict[str, Any]:
    """The metrics every contestant is compared on, in fractions (the report prints percent)."""
    from mdssd.eval import score

    report = score(source, detections, coco=True, size_bins=True)
    stats = report.coco.stats
    return {"ap": stats["AP"], "ap50": stats["AP50"], "ap_small": stats["AP_small"], "ar_small": stats["AR_small"],
            "voc07_map": report.voc.map_11,
            "size_bins": {name: dict(row) for name, row in report.coco.size_bins.items()}}


def yolo_detections(source, rows_by_file: dict[str, list]) -> list:
    """YOLO's ``[x1, y1, x2, y2, score, class]`` rows per file name -> Detections in source order
    (YOLO class k is mdssd label k + 1; label 0 is background)."""
    from mdssd.metrics import Detections

    out = []
    for index in range(len(source)):
        name = Path(source.annotation(index).file_name).name
        if name not in rows_by_file:
            raise KeyError(f"the YOLO run has no predictions for val image {name}")
        rows = np.asarray(rows_by_file[name], dtype=np.float64).reshape(-1, 6)
        out.append(Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64) + 1))
    return out


def logged_train_seconds(log: Path, steps: int) -> float:
    """Seconds from the start of the training loop to its last step, as ``train_log.csv`` logged
    them: without the set-up and the final evaluation (a sliced evaluation of large images takes
    longer than a short training), as ultralytics' ``results.csv`` times YOLO's epochs."""
    import csv

    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or int(rows[-1]["step"]) != steps:
        raise ValueError(f"{log}: no row for the last step {steps}")
    return float(rows[-1]["time_s"])


def run_mdssd(prep: Prepared, preset: str, seed: int, steps: int, batch: int, threads: int,
              run_dir: Path) -> dict[str, Any]:
    import torch

    from mdssd import config as config_mod
    from mdssd import train as train_mod
    from mdssd.data import build_source
    from mdssd.inference import load_model, predict
    from mdssd.model.summary import summarize
    from mdssd.tiling import predict_source_tiled

    # Always from scratch: a resumed run's wall time would cover only its second part, and the
    # equal-time budget is derived from it (training is deterministic: nothing is lost but time).
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = ["--preset", preset, "--seed", str(seed), "--dataset", "coco", "--data-root", str(prep.coco),
            "--steps", str(steps), "--batch-size", str(batch), "--out-dir", str(run_dir),
            # --threads: mdssd.train otherwise picks its own count (cores less one per data worker),
            # which need not be the one YOLO is given.
            "--threads", str(threads), "--eval-interval", "0", "--no-progress", *prep.mdssd_flags]
    cfg = config_mod.from_args(args)
    start = time.time()
    with LoadSampler() as load:
        summary = train_mod.train(cfg)
    train_wall = time.time() - start
    if summary["steps"] != summary["total_steps"]:
        raise RuntimeError(f"{preset} seed {seed}: training stopped at step {summary['steps']}; rerun to continue")
    train_s = logged_train_seconds(run_dir / "train_log.csv", steps)
    model, _ = load_model(run_dir / "last.pt", device="cpu")
    post = model.config.postprocess
    if (post.score_threshold, post.keep_top_k) != (SCORE_FLOOR, MAX_DETECTIONS):
        raise ValueError(f"{preset}: post-processing floor/keep {post.score_threshold}/"
                         f"{post.keep_top_k} differ from the protocol's {SCORE_FLOOR}/{MAX_DETECTIONS}")
    source = build_source("coco", prep.coco, "val")
    spec = train_mod.tile_spec(config_mod.from_args([*args, *prep.detect_flags]))
    if spec is not None:
        from dataclasses import replace

        spec = replace(spec, max_detections=MAX_DETECTIONS)
    with torch.no_grad():
        # One image first, untimed (allocator and kernel warm-up), then every val image.
        (predict_source_tiled(model, source, spec, indices=[0]) if spec else predict(model, source, batch_size=1))
        start = time.perf_counter()
        detections = (predict_source_tiled(model, source, spec) if spec else predict(model, source, batch_size=1))
        infer = time.perf_counter() - start
    _, totals = summarize(model.config)
    result = {"contestant": preset, "family": "mdssd", "seed": seed, "input": model.config.image_size,
              "images_seen": steps * batch, "train_s": train_s, "wall_s": train_wall, "threads": torch.get_num_threads(),
              "infer_ms_per_image": 1e3 * infer / len(source), "gflops": 2 * totals["macs"] / 1e9,
              "loadavg": loadavg(), **load.summary(), **score_detections(source, detections)}
    if spec is not None:
        pixels = sum(source.annotation(i).width * source.annotation(i).height for i in range(len(source)))
        result["sliced_mp_per_s"] = pixels / 1e6 / infer
    return result


def run_yolo_job(python: str, job: dict, job_path: Path, threads: int) -> dict[str, Any]:
    """Run one :mod:`benchmarks.peers.yolo_runner` job in the peers venv; its result dict."""
    write_json(job_path, job)
    env = {**os.environ, "YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false",
           "YOLO_CONFIG_DIR": str(job_path.parent / "ultralytics-config"),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = job_path.with_suffix(".log")
    with open(log, "w") as out:
        done = subprocess.run([python, "-m", "benchmarks.peers.yolo_runner", str(job_path)], env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"YOLO job {job_path} failed ({done.returncode}); the end of {log}:\n{tail}")
    return json.loads(job_path.with_suffix(".result.json").read_text())


def subset_yaml(prep: Prepared, count: int, seed: int, run_dir: Path) -> Path:
    """A data.yaml whose train split is ``count`` images drawn at random (per seed) from the whole
    set, listed in a .txt file (ultralytics' own ``fraction`` would take the first files by name:
    the slices of the first few images only)."""
    import yaml

    data = yaml.safe_load(prep.yolo_yaml.read_text())
    images = sorted((Path(data["path"]) / data["train"]).iterdir())
    chosen = np.random.default_rng([seed, count]).choice(len(images), size=count, replace=False)
    listing = run_dir / "train_subset.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{images[i]}\n" for i in sorted(chosen)))
    path = run_dir / "data.yaml"
    path.write_text(yaml.safe_dump({**data, "train": str(listing)}, sort_keys=False))
    return path


def run_yolo(python: str, prep: Prepared, arch: str, seed: int, schedule: tuple[int, int], imgsz: int, batch: int,
             threads: int, run_dir: Path) -> dict[str, Any]:
    from mdssd.data import build_source

    epochs, per_epoch = schedule
    data_yaml = prep.yolo_yaml if per_epoch == prep.yolo_train_images else subset_yaml(prep, per_epoch, seed, run_dir)
    job = {"job": "train", "arch": arch, "data_yaml": str(data_yaml), "epochs": epochs, "imgsz": imgsz,
           "batch": batch, "workers": 1, "seed": seed, "threads": threads, "run_dir": str(run_dir / "ultralytics"),
           "val_images": str(prep.val_images), "train_images": per_epoch,
           "score_floor": SCORE_FLOOR, "max_detections": MAX_DETECTIONS,
           "tile": TILE if prep.sliced else None, "tile_overlap": TILE_OVERLAP}
    out = run_yolo_job(python, job, run_dir / "job.json", threads)  # it samples the load of its training
    source = build_source("coco", prep.coco, "val")
    result = {"contestant": arch, "family": "yolo", "seed": seed, "input": imgsz, "epochs": epochs,
              "images_seen": out["images_seen"], "train_s": out["train_s"], "wall_s": out["train_wall_s"],
              "threads": threads,
              "infer_ms_per_image": 1e3 * out["infer_s_per_image"], "loadavg": loadavg(),
              "train_load": out.get("train_load"), "train_load_max": out.get("train_load_max"),
              **score_detections(source, yolo_detections(source, out["detections"]))}
    if "sliced_mp_per_s" in out:
        result["sliced_mp_per_s"] = out["sliced_mp_per_s"]
    return result


def sahi_slicer(python: str, threads: int):
    """``slice(coco_root, out) -> sliced COCO root`` (train split) with SAHI's ``slice_coco``."""

    def slice_train(coco: Path, out: Path) -> Path:
        images = out / "train2017"
        images.mkdir(parents=True, exist_ok=True)
        job = {"job": "slice", "annotations": str(coco / "annotations" / "instances_train2017.json"),
               "images": str(coco / "train2017"), "out_dir": str(images), "name": "sliced",
               "tile": TILE, "tile_overlap": TILE_OVERLAP}
        result = run_yolo_job(python, job, out / "slice-job.json", threads)
        (out / "annotations").mkdir(exist_ok=True)
        Path(result["annotations"]).replace(out / "annotations" / "instances_train2017.json")
        return out

    return slice_train
