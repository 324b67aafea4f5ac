"""Does ``--dataset yolo`` read a YOLO folder as ultralytics reads it?

``python -m benchmarks.ultralytics_parity [--ultralytics-python PYTHON] [--out benchmarks/results]``

Writes small YOLO folders covering what both accept -- boxes, polygon (segment) lines, corners
past the border, duplicate lines, images without a label file or with an empty one, nested
folders, a ``.txt`` image list, names as an id map, an EXIF-rotated JPEG, and the folder
``mdssd.data.export.export_yolo`` writes from the synthetic set -- then lists every image's
file, size, classes and boxes as ultralytics' ``check_det_dataset`` + ``YOLODataset`` see them
(run in the peers' venv: mdssd never imports ultralytics) and as ``mdssd.data.yolo`` does, and
compares. Writes ``ultralytics-yolo-parity.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.peers import default_python

# Run by the ultralytics python: print {yaml: {split: [{im, shape, cls, bboxes}]}} as JSON.
_ULTRALYTICS_SIDE = r"""
import json, os, sys, contextlib, io
os.environ["YOLO_OFFLINE"] = "1"
import ultralytics
from ultralytics.data.utils import check_det_dataset
from ultralytics.data.dataset import YOLODataset
out = {"version": ultralytics.__version__}
for y in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        d = check_det_dataset(y)
        rows = {}
        for split in ("train", "val"):
            ds = YOLODataset(img_path=d[split], data=d, augment=False, task="detect")
            rows[split] = [{"im": lb["im_file"], "shape": list(lb["shape"]), "cls": lb["cls"].ravel().tolist(),
                            "bboxes": lb["bboxes"].tolist()} for lb in ds.get_labels()]
    out[y] = rows
print(json.dumps(out))
"""


def _image(path: Path, width: int, height: int, orientation: int | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (90, 120, 150))
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)


def write_cases(root: Path) -> list[Path]:
    """The folders; returns their data.yaml paths."""
    from mdssd.data import SyntheticSigns
    from mdssd.data.export import export_yolo

    case = root / "cases"
    labels = {
        "images/train/a.jpg": (320, 240, "0 0.5 0.5 0.2 0.4\n2 0.1 0.2 0.1 0.2\n"),
        "images/train/border.jpg": (200, 100, "1 0.97 0.5 0.1 0.2\n0 0.02 0.03 0.05 0.05\n"),  # corners past
        "images/train/poly.png": (64, 64, "1 0.25 0.25 0.75 0.25 0.5 0.75\n0 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n"),
        "images/train/dup.jpg": (100, 100, "0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n1 0.3 0.3 0.2 0.2\n"),
        "images/train/empty.jpg": (50, 40, ""),
        "images/train/nolabel.jpg": (50, 40, None),
        "images/train/sub/deep.jpg": (80, 60, "2 0.5 0.5 0.5 0.5\n"),
        "images/val/v1.jpg": (120, 90, "1 0.4 0.6 0.3 0.2\n"),
        "images/val/v2.jpg": (120, 90, "0 0.5 0.5 1 1\n"),
    }
    for rel, (width, height, text) in labels.items():
        _image(case / rel, width, height)
        if text is not None:
            label = case / rel.replace("images/", "labels/", 1).rsplit(".", 1)[0]
            Path(f"{label}.txt").parent.mkdir(parents=True, exist_ok=True)
            Path(f"{label}.txt").write_text(text)
    _image(case / "images/train/rotated.jpg", 80, 40, orientation=6)  # stored 80x40, shown 40x80
    (case / "labels/train/rotated.txt").write_text("0 0.5 0.25 0.5 0.25\n")
    (case / "val.txt").write_text("./images/val/v1.jpg\n./images/val/v2.jpg\n")
    (case / "data.yaml").write_text(f"path: {case}\ntrain: images/train\nval: val.txt\n"
                                    "names:\n  0: car\n  1: person\n  2: bike\n")
    exported = root / "exported"
    for split in ("train", "val"):
        export_yolo(SyntheticSigns(split, num_images=4, seed=2, min_size=128, max_size=256), exported, split)
    return [case / "data.yaml", exported / "data.yaml"]


def compare(yaml_path: Path, theirs: dict) -> tuple[int, int, float]:
    """``(images, boxes, largest corner difference in px)``; raises AssertionError on a difference."""
    from mdssd.data import build_source

    images = boxes = 0
    worst = 0.0
    for split, rows in theirs.items():
        ours = build_source("yolo", yaml_path, split)
        assert len(ours) == len(rows), f"{yaml_path} {split}: {len(ours)} images, ultralytics {len(rows)}"
        by_file = {str(ours.image_path(i)): i for i in range(len(ours))}
        for row in rows:
            ann = ours.annotation(by_file[row["im"]])
            assert [ann.height, ann.width] == row["shape"], (row["im"], (ann.width, ann.height), row["shape"])
            xywh = np.array(row["bboxes"], dtype=np.float64).reshape(-1, 4)
            scale = np.array([ann.width, ann.height, ann.width, ann.height])
            theirs_xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1) * scale
            theirs_xyxy = np.clip(theirs_xyxy, 0, scale)  # ultralytics clips when it builds the instances
            a, b = np.lexsort(ann.boxes.T[::-1]), np.lexsort(theirs_xyxy.T[::-1])
            assert ann.labels[a].tolist() == [int(c) + 1 for c in np.array(row["cls"])[b]], row["im"]
            if len(xywh):
                worst = max(worst, float(np.abs(ann.boxes[a] - theirs_xyxy[b]).max()))
            images += 1
            boxes += len(xywh)
    return images, boxes, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ultralytics_parity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ultralytics-python", default=default_python(),
                        help="a python with ultralytics (default: $PEERS_PYTHON or build/peers-venv/bin/python, "
                        "made by benchmarks/peers_venv.sh)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mdssd-parity-") as tmp:
        yamls = write_cases(Path(tmp))
        done = subprocess.run([args.ultralytics_python, "-c", _ULTRALYTICS_SIDE, *map(str, yamls)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        lines = ["# `--dataset yolo` vs ultralytics", "",
                 f"ultralytics {theirs['version']} (`check_det_dataset` + `YOLODataset.get_labels`, in "
                 f"{args.ultralytics_python}) and `mdssd.data.yolo` on the folders of "
                 "`python -m benchmarks.ultralytics_parity`: same image files, sizes (EXIF orientation "
                 "applied), classes and boxes.", "",
                 "| folder | images | boxes | largest corner difference (px) |", "|---|---:|---:|---:|"]
        for yaml_path in yamls:
            images, boxes, worst = compare(yaml_path, theirs[str(yaml_path)])
            lines.append(f"| {yaml_path.parent.name} | {images} | {boxes} | {worst:.1e} |")
    lines += ["", "ultralytics reads float32 labels: the differences are its rounding."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ultralytics-yolo-parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
