"""Write any detection source out as a COCO data set (images + instances JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .base import Annotation, DetectionSource

__all__ = ["coco_ground_truth", "export_coco"]


def coco_ground_truth(annotations: list[Annotation], class_names: tuple[str, ...]) -> dict:
    """COCO instances dict of these annotations; category id = label (1..K-1).

    VOC ``difficult`` objects are written with ``iscrowd: 1``: pycocotools then ignores detections
    matched to them and does not count them as misses, which is what the VOC protocol does for
    difficult objects (crowd matching also uses intersection over detection area; close enough
    for a secondary metric, and the VOC metric treats difficult exactly).
    """
    images, instances = [], []
    for ann in annotations:
        images.append({"id": int(ann.image_id), "file_name": ann.file_name, "width": ann.width, "height": ann.height})
        for box, label, difficult, crowd in zip(ann.boxes, ann.labels, ann.difficult, ann.crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            instances.append({
                "id": len(instances) + 1, "image_id": int(ann.image_id), "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(bool(crowd) or bool(difficult)),
            })
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": instances, "categories": categories}


def export_coco(source: DetectionSource, out_dir: str | Path, split: str = "train", image_format: str = "png") -> Path:
    """Write ``out_dir/<split>/<file>`` images and ``out_dir/annotations/instances_<split>.json``.

    The result is the layout :func:`mdssd.data.build_source` (``"coco"``) reads back. Returns the
    JSON path.
    """
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    annotations = []
    for index in range(len(source)):
        ann = source.annotation(index)
        name = Path(ann.file_name).with_suffix(f".{image_format}").name
        Image.fromarray(source.image(index)).save(out_dir / split / name)
        annotations.append(Annotation(ann.image_id, name, ann.width, ann.height, ann.boxes, ann.labels,
                                      ann.difficult, ann.crowd))
    path = out_dir / "annotations" / f"instances_{split}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco_ground_truth(annotations, tuple(source.class_names))))
    tmp.replace(path)
    return path
