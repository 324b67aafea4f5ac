"""Real aerial images: resize vs crop + tile on DeepForest's sample tree crowns (NEON data).

``python -m benchmarks.deepforest --src DEEPFOREST_DATA --work DIR [--steps N] [--runs ...] [--report]``

``DEEPFOREST_DATA`` is the ``deepforest/data`` folder of the deepforest wheel (images with
VOC-style XML). Training: the 2299x2472 image (574 crowns of about 18 px) listed 16 times plus
OSBS_029 and SOAP_061 (400x400) 4 times each, so that an epoch holds several batches; test: the
1249x1035 image (279 crowns). Written as a COCO folder under ``DIR/data`` (images linked, not
copied), then trained and measured as :mod:`benchmarks.large_images`.
"""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

TRAIN = {"2019_YELL_2_528000_4978000_image_crop2": 16, "OSBS_029": 4, "SOAP_061": 4}
TEST = {"2019_YELL_2_541000_4977000_image_crop": 1}


def _boxes(xml: Path) -> tuple[int, int, list[list[float]]]:
    root = ET.parse(xml).getroot()
    width, height = int(root.find("size/width").text), int(root.find("size/height").text)
    boxes = []
    for obj in root.iter("object"):
        b = obj.find("bndbox")
        x1, y1, x2, y2 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
        if x2 > x1 and y2 > y1:
            boxes.append([x1, y1, x2 - x1, y2 - y1])
    return width, height, boxes


def convert(src: Path, data: Path) -> None:
    """COCO ``train2017`` / ``val2017`` splits of the sample images (see the module docstring)."""
    for split, images in (("train2017", TRAIN), ("val2017", TEST)):
        (data / split).mkdir(parents=True, exist_ok=True)
        (data / "annotations").mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "Tree"}]}
        for stem, repeat in images.items():
            link = data / split / f"{stem}.png"
            if not link.exists():
                os.symlink((src / f"{stem}.png").resolve(), link)
            width, height, boxes = _boxes(src / f"{stem}.xml")
            for _ in range(repeat):
                image_id = len(coco["images"]) + 1
                coco["images"].append({"id": image_id, "file_name": link.name, "width": width, "height": height})
                for box in boxes:
                    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                                "category_id": 1, "bbox": box, "area": box[2] * box[3],
                                                "iscrowd": 0})
        (data / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def main(argv=None) -> int:
    from benchmarks.large_images import measure, train_args, write

    parser = argparse.ArgumentParser(prog="python -m benchmarks.deepforest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="the deepforest/data folder (images + XML)")
    parser.add_argument("--work", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", default="resize,crop")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--rows", default=None, help="as benchmarks.large_images --rows")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    work, data = Path(args.work), Path(args.work) / "data"
    convert(Path(args.src), data)
    from mdssd import config as config_mod
    from mdssd.train import train

    for run in filter(None, args.runs.split(",")):
        train(config_mod.from_args(train_args(data, work / run, run, args.steps)))
    if args.report:
        rows = measure(work, data, set(args.rows.split(",")) if args.rows else None)
        notes = ["Data: DeepForest sample data (NEON tree crowns, from the deepforest 2.1.0 wheel). Train: "
                 "the 2299x2472 image (574 crowns, ~18 px) x16 + two 400x400 images x4; test: the 1249x1035 "
                 "image (279 crowns, 39x41 px on average). COCO AP counts at most 100 detections per image, so with 279 crowns it "
                 "understates recall: read VOC mAP.",
                 f"Training: mdssd_tiny 128 px, {args.steps} steps of batch 8; `crop` adds `--crop`."]
        print(write(Path(args.out), "deepforest-cpu-amd-epyc-1thread", "Tree crowns: resize vs crop + tile",
                    notes, {"data": "DeepForest sample data", "steps": args.steps}, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
