"""COCO reader: an ``instances_*.json`` file and a folder of images.

Categories are mapped to contiguous labels ``1..K-1`` in ascending category-id order (COCO's ids
have gaps); :attr:`COCODetection.category_ids` maps back for results files. ``iscrowd`` regions
are kept in the annotation as ``crowd`` (the metrics ignore detections on them, as pycocotools
does) and are never training targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import Annotation, AnnotationError, ImageFileSource, check_boxes

__all__ = ["COCODetection", "read_json"]

# Real COCO boxes overshoot the image border by up to a fraction of a pixel (polygon rounding):
# accept that much and clip, refuse anything larger.
_BORDER_TOLERANCE = 1.0


def read_json(path: str | Path) -> dict:
    """Load a JSON object; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file", "not found")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(path, "JSON", f"cannot parse ({error})") from error
    if not isinstance(data, dict):
        raise AnnotationError(path, "JSON", "top level is not an object")
    return data


def _field(record: dict, key: str, path: Path, name: str):
    if not isinstance(record, dict) or key not in record:
        raise AnnotationError(path, name, f"missing field {key!r}")
    return record[key]


class COCODetection(ImageFileSource):
    """A COCO instances file as a detection source.

    ``check_images`` verifies that every image file exists when the reader is built (one ``stat``
    per image); corrupt files are reported when they are loaded.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, check_images: bool = True):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        path = self.annotation_file
        data = read_json(path)
        categories = sorted(_field(data, "categories", path, "top level"),
                            key=lambda c: _field(c, "id", path, f"category {c}"))
        self.category_ids = tuple(int(c["id"]) for c in categories)
        self.class_names = tuple(str(_field(c, "name", path, f"category {c['id']}")) for c in categories)
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        images = _field(data, "images", path, "top level")
        by_id: dict[int, dict] = {}
        for i, img in enumerate(images):
            image_id = _field(img, "id", path, f"images[{i}]")
            for key in ("file_name", "width", "height"):
                _field(img, key, path, f"image {image_id}")
            if image_id in by_id:
                raise AnnotationError(path, f"image {image_id}", "duplicate image id")
            by_id[image_id] = {"info": img, "boxes": [], "labels": [], "crowd": [], "difficult": [], "records": []}
        for i, ann in enumerate(_field(data, "annotations", path, "top level")):
            ann_id = ann.get("id", i) if isinstance(ann, dict) else i
            name = f"annotation {ann_id}"
            image_id = _field(ann, "image_id", path, name)
            if image_id not in by_id:
                raise AnnotationError(path, name, f"unknown image_id {image_id}")
            category = _field(ann, "category_id", path, name)
            if category not in label_of:
                raise AnnotationError(path, name, f"unknown category_id {category}")
            bbox = _field(ann, "bbox", path, name)
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise AnnotationError(path, name, f"bbox must be [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            entry = by_id[image_id]
            entry["boxes"].append([x, y, x + w, y + h])
            entry["labels"].append(label_of[category])
            # "difficult" (written by mdssd.data.export next to iscrowd) reads back as VOC's flag.
            difficult = bool(ann.get("difficult", 0))
            entry["crowd"].append(bool(ann.get("iscrowd", 0)) and not difficult)
            entry["difficult"].append(difficult)
            entry["records"].append(f"{name} (image {image_id})")

        self._annotations, self._image_paths = [], []
        for image_id, entry in by_id.items():
            info = entry["info"]
            width, height = int(info["width"]), int(info["height"])
            boxes = check_boxes(np.array(entry["boxes"], dtype=np.float64).reshape(-1, 4), width, height,
                                path, entry["records"], tolerance=_BORDER_TOLERANCE)
            image_path = self.image_dir / info["file_name"]
            if check_images and not image_path.is_file():
                raise AnnotationError(path, f"image {image_id}", f"image file {image_path} not found")
            self._annotations.append(Annotation(int(image_id), str(info["file_name"]), width, height, boxes,
                                                entry["labels"], difficult=entry["difficult"], crowd=entry["crowd"]))
            self._image_paths.append(image_path)
