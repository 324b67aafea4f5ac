"""Reading a user's YOLO folder: time to index it (labels + image headers) and to load items.

``python -m benchmarks.data_formats [--images 10000] [--size 640x480] [--work DIR] [--out benchmarks/results]``

Writes a YOLO data set of ``--images`` JPEGs (smooth content with 5-15 labelled rectangles each, a
tenth of them without a label file) under ``--work`` (a temporary folder by default, deleted after),
then measures on the CPU, one thread:

* **index**: ``YOLODetection(root, "train")``: every label file parsed, every image header read
  (no decode), three times; the page cache is warm (the files were just written: the first
  read of a cold disk costs more, and we do not drop a shared machine's caches);
* **per item**: over 300 items spread over the set, the mean time of ``source.image(i)`` (JPEG
  decode), of a training item with SSD augmentation at 300 px, and of a ``--crop`` window at
  300 px (decode included in both).

With ``--ultralytics-python`` (default: the peers' venv, skipped when absent) the same folder is
also indexed by ultralytics' ``YOLODataset``, without and with its label cache, for the ratio.
Writes ``data-formats-cpu-<cpu>.md`` and ``.json`` with machine, load (1/5/15-minute averages
before and after) and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import cpu_model, load_average, slug
from benchmarks.peers import default_python


def write_folder(root: Path, count: int, width: int, height: int, seed: int = 0) -> int:
    """The YOLO folder; returns the number of labels written."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    gradient = np.linspace(40, 200, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    total = 0
    for i in range(count):
        image = Image.fromarray(gradient)
        draw = ImageDraw.Draw(image)
        lines = []
        for _ in range(int(rng.integers(5, 16))):
            w, h = rng.uniform(6, min(64, width / 2, height / 2), 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            draw.rectangle((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            lines.append(f"{int(rng.integers(3))} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                         f"{w / width:.6f} {h / height:.6f}")
        image.save(images / f"{i:06d}.jpg", quality=90)
        if i % 10:  # a tenth without a label file: background images
            (labels / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
            total += len(lines)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\n"
                                    "names: [a, b, c]\n")
    return total


def measure(root: Path, items: int = 300) -> dict:
    from mdssd.data import DetectionDataset, SSDAugment
    from mdssd.data.crop import NativeCrop
    from mdssd.data.yolo import YOLODetection

    index_s = []
    for _ in range(3):
        start = time.perf_counter()
        source = YOLODetection(root, "train")
        index_s.append(time.perf_counter() - start)
    picks = np.linspace(0, len(source) - 1, items).round().astype(int)

    def per_item(fn) -> float:
        fn(int(picks[0]))  # warm-up
        start = time.perf_counter()
        for i in picks:
            fn(int(i))
        return (time.perf_counter() - start) / len(picks) * 1e3

    augment = DetectionDataset(source, SSDAugment(size=300), seed=0)
    crop = DetectionDataset(source, NativeCrop(size=300), seed=0)
    return {
        "images": len(source),
        "labels": int(sum(len(source.annotation(i).boxes) for i in range(len(source)))),
        "index_s": index_s,
        "decode_ms": per_item(source.image),
        "ssd_item_ms": per_item(augment.__getitem__),
        "crop_item_ms": per_item(crop.__getitem__),
    }


# Run by the peers' python: ultralytics' own indexing of the same folder (``verify_image_label``
# on its thread pool: header, ``Image.verify``, JPEG end-of-file check, labels), without and with
# its ``labels/train.cache``.
_ULTRALYTICS_INDEX = r"""
import contextlib, io, json, os, sys, time
os.environ["YOLO_OFFLINE"] = "1"
import ultralytics
from ultralytics.utils import NUM_THREADS
from ultralytics.data.utils import check_det_dataset
from ultralytics.data.dataset import YOLODataset
root = sys.argv[1]
cache = os.path.join(root, "labels", "train.cache")
out = {"version": ultralytics.__version__, "threads": NUM_THREADS, "scan_s": [], "cached_s": None}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    d = check_det_dataset(os.path.join(root, "data.yaml"))
    for _ in range(2):
        if os.path.exists(cache):
            os.remove(cache)
        start = time.perf_counter()
        YOLODataset(img_path=d["train"], data=d, augment=False, task="detect")
        out["scan_s"].append(time.perf_counter() - start)
    start = time.perf_counter()
    YOLODataset(img_path=d["train"], data=d, augment=False, task="detect")
    out["cached_s"] = time.perf_counter() - start
    os.remove(cache)
print(json.dumps(out))
"""


def ultralytics_index(root: Path, python: str) -> dict | None:
    """ultralytics' indexing times of ``root`` (None when that python is missing or fails)."""
    import subprocess

    if not Path(python).is_file():
        return None
    done = subprocess.run([python, "-c", _ULTRALYTICS_INDEX, str(root)], capture_output=True, text=True, timeout=1800)
    if done.returncode:
        print(f"ultralytics side failed: {done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_formats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", default="640x480", help="image WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--work", default=None, help="folder for the data set (default: a temporary one, deleted)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--ultralytics-python", default=default_python(),
                        help="a python with ultralytics, to time its indexing of the same folder (skipped if absent; "
                        "default: $PEERS_PYTHON or build/peers-venv/bin/python)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mdssd-yolo-"))
    try:
        start = time.perf_counter()
        written = write_folder(work / "yolo", args.images, width, height)
        write_s = time.perf_counter() - start
        load_before = load_average()
        result = measure(work / "yolo")
        theirs = ultralytics_index(work / "yolo", args.ultralytics_python)
        load_after = load_average()
        size_mb = sum(p.stat().st_size for p in (work / "yolo").rglob("*") if p.is_file()) / 2**20
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    assert result["labels"] == written, (result["labels"], written)
    import PIL

    machine = {"cpu": cpu_model(), "cores": len(__import__("os").sched_getaffinity(0)), "threads": 1,
               "python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
               "load_before": load_before, "load_after": load_after}
    record = {"machine": machine, "images": args.images, "size": [width, height], "folder_mb": round(size_mb, 1),
              "write_s": round(write_s, 1), **result, "ultralytics": theirs}
    index = statistics.median(result["index_s"])
    repeats = ", ".join(f"{v:.2f}" for v in result["index_s"])
    lines = [
        "# Reading a YOLO folder (mdssd.data.yolo)", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (shared), 1 thread; python {machine['python']}, "
        f"torch {machine['torch']}, Pillow {machine['pillow']}. Load (1/5/15 min) {load_before} before, "
        f"{load_after} after.", "",
        f"Data: {result['images']} JPEGs of {width}x{height} ({size_mb:.0f} MB), {result['labels']} labels, a tenth "
        f"of the images without a label file; written by `python -m benchmarks.data_formats` "
        f"(page cache warm).", "",
        "| what | time |", "|---|---:|",
        f"| index (labels + headers), median of 3 | {index:.2f} s ({repeats}) |",
        f"| index per image | {index / result['images'] * 1e6:.0f} µs |",
        f"| decode one image (`source.image`) | {result['decode_ms']:.2f} ms |",
        f"| training item, SSD augmentation 300 px | {result['ssd_item_ms']:.2f} ms |",
        f"| training item, `--crop` window 300 px | {result['crop_item_ms']:.2f} ms |",
        "",
    ]
    if theirs:
        scan = statistics.median(theirs["scan_s"])
        lines += [
            f"The same folder indexed by ultralytics {theirs['version']} in the same run "
            f"({theirs['threads']} thread(s) of its pool; it also runs `Image.verify` and a JPEG end check on every "
            "image, and writes `labels/train.cache`):", "",
            "| indexer | time | ours / theirs |", "|---|---:|---:|",
            f"| mdssd (median of 3) | {index:.2f} s | 1 |",
            f"| ultralytics, no cache (median of 2: {', '.join(f'{s:.2f}' for s in theirs['scan_s'])}) | "
            f"{scan:.2f} s | {index / scan:.2f} |",
            f"| ultralytics, from its cache | {theirs['cached_s']:.2f} s | {index / theirs['cached_s']:.2f} |", "",
        ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"data-formats-cpu-{slug(machine['cpu']).split('-processor')[0]}"
    (out / f"{name}.md").write_text("\n".join(lines))
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))
    print(f"wrote {out / name}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
