"""Real small objects as a COCO folder of tiles: DeepForest's largest sample image cut into 128 px tiles.

``python -m benchmarks.deepforest_tiles --src DEEPFOREST_DATA --out DIR [--tile 128] [--val-fraction 0.3]``

``DEEPFOREST_DATA`` is the ``deepforest/data`` folder of the deepforest wheel (``pip download
--no-deps deepforest==2.1.0``, unzip ``deepforest/data/*``; nothing is fetched at run time). Its
2299x2472 NEON image (574 tree crowns of about 18 px, VOC XML) is cut into non-overlapping tiles;
the top rows of tiles are ``train2017``, the bottom ``val-fraction`` of the image ``val2017``, so
train and val never share pixels and have the same sensor, scale and crown size (unlike the
wheel's other images, whose crowns are twice as large). A crown cut by a tile edge stays a
target when at least 60% of its area is inside (as ``--crop`` keeps boxes), otherwise it becomes
an ``iscrowd`` region (never a target; detections on it are not counted, as in pycocotools).
The result is what ``python -m mdssd.ablation --dataset coco --data-root DIR`` reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.deepforest import _boxes

IMAGE = "2019_YELL_2_528000_4978000_image_crop2"
KEEP_FRACTION = 0.6  # mdssd.data.crop's rule for boxes cut by a window


def tile_annotations(boxes: np.ndarray, x0: int, y0: int, tile: int) -> tuple[list, list]:
    """``(targets, crowd)`` xywh boxes of one tile from image ``xyxy`` boxes."""
    if not len(boxes):
        return [], []
    clipped = np.clip(boxes - [x0, y0, x0, y0], 0, tile)
    inside = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
    whole = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    targets, crowd = [], []
    for box, part, full in zip(clipped, inside, whole):
        if part <= 0:
            continue
        xywh = [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]
        (targets if part >= KEEP_FRACTION * full else crowd).append(xywh)
    return targets, crowd


def write_tiles(src: Path, out: Path, tile: int = 128, val_fraction: float = 0.3) -> dict[str, int]:
    """Write ``out/{train2017,val2017}/*.png`` and ``out/annotations/instances_*.json``; returns the
    tile and crown counts per split."""
    from PIL import Image

    image_path, xml = src / f"{IMAGE}.png", src / f"{IMAGE}.xml"
    if not image_path.is_file() or not xml.is_file():
        raise FileNotFoundError(f"{src}: no {IMAGE}.png/.xml (expected the deepforest wheel's deepforest/data folder)")
    width, height, xywh = _boxes(xml)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in xywh], dtype=np.float64).reshape(-1, 4)
    return write_tile_splits(Image.open(image_path).convert("RGB"), boxes, IMAGE, "Tree", out, tile, val_fraction)


def write_tile_splits(image, boxes: np.ndarray, stem: str, category: str, out: Path, tile: int = 128,
                      val_fraction: float = 0.3) -> dict[str, int]:
    """One annotated image (PIL, ``xyxy`` boxes of one class) as a COCO folder of non-overlapping
    ``tile`` px tiles: the top rows ``train2017``, the bottom ``val_fraction`` of the rows
    ``val2017``; returns the tile and object counts per split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
    rows, cols = image.height // tile, image.width // tile
    if rows < 2 or cols < 1:
        raise ValueError(f"{stem}: a {image.width}x{image.height} image holds fewer than 2 rows of {tile} px tiles")
    val_rows = min(rows - 1, max(1, int(round(rows * val_fraction))))
    counts = {}
    for split, row_range in (("train2017", range(0, rows - val_rows)), ("val2017", range(rows - val_rows, rows))):
        (out / split).mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": category}]}
        for r in row_range:
            for c in range(cols):
                x0, y0 = c * tile, r * tile
                name = f"{stem}_{y0}_{x0}.png"
                image.crop((x0, y0, x0 + tile, y0 + tile)).save(out / split / name)
                image_id = len(coco["images"]) + 1
                coco["images"].append({"id": image_id, "file_name": name, "width": tile, "height": tile})
                targets, crowd = tile_annotations(boxes, x0, y0, tile)
                for box, is_crowd in [(b, 0) for b in targets] + [(b, 1) for b in crowd]:
                    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                                "category_id": 1, "bbox": box, "area": box[2] * box[3],
                                                "iscrowd": is_crowd})
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        counts[split] = len(coco["images"])
        counts[f"{split} objects"] = sum(1 for a in coco["annotations"] if not a["iscrowd"])
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deepforest_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="the deepforest/data folder (images + XML)")
    parser.add_argument("--out", required=True, help="COCO folder to write")
    parser.add_argument("--tile", type=int, default=128, help="tile side in pixels (default: 128)")
    parser.add_argument("--val-fraction", type=float, default=0.3, help="bottom part of the image for val (default: 0.3)")
    args = parser.parse_args(argv)
    counts = write_tiles(Path(args.src), Path(args.out), args.tile, args.val_fraction)
    print(f"benchmarks.deepforest_tiles: wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
