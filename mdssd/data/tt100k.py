"""Tsinghua-Tencent 100K reader (``annotations.json`` of the TT100K release).

The file holds ``{"types": [class names], "imgs": {id: {"path": "train/123.jpg", "id": 123,
"objects": [{"category": "pl80", "bbox": {"xmin", "ymin", "xmax", "ymax"}, ...}]}}}``; the split
is the first component of ``path`` (``train``, ``test``, ``other``). The file stores no image
sizes, so boxes are checked against the image header the first time an image's annotation is
asked for (TT100K images are 2048x2048; reading 10k headers up front would cost seconds).

Detection work on TT100K usually keeps only frequent classes (45 with at least 100 instances in
the paper's line of work): pass them as ``class_names``; objects of other known types are then
dropped, objects of a type missing from ``types`` are an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import Annotation, AnnotationError, check_boxes, image_size, load_rgb
from .coco import read_json

__all__ = ["TT100KDetection"]


class TT100KDetection:
    def __init__(self, root: str | Path, split: str = "train", class_names: Sequence[str] | None = None,
                 annotation_file: str | Path | None = None):
        self.root = Path(root)
        self.file = Path(annotation_file) if annotation_file else self.root / "annotations.json"
        data = read_json(self.file)
        types = data.get("types")
        imgs = data.get("imgs")
        if not isinstance(types, list) or not isinstance(imgs, dict):
            raise AnnotationError(self.file, "top level", "needs a 'types' list and an 'imgs' object")
        for name in class_names or ():
            if name not in types:
                raise AnnotationError(self.file, "types", f"requested class {name!r} is not in 'types'")
        self.class_names = tuple(class_names) if class_names is not None else tuple(types)
        labels = {name: i + 1 for i, name in enumerate(self.class_names)}
        known = set(types)

        self._entries = []  # (image_id, path, boxes, labels, records)
        for key, img in imgs.items():
            record = f"imgs[{key!r}]"
            if not isinstance(img, dict) or "path" not in img:
                raise AnnotationError(self.file, record, "missing 'path'")
            rel = str(img["path"])
            if rel.split("/")[0] != split:
                continue
            try:
                image_id = int(img.get("id", key))
            except (TypeError, ValueError) as error:
                raise AnnotationError(self.file, record, f"id is not an integer: {img.get('id', key)!r}") from error
            boxes, classes, records = [], [], []
            for i, obj in enumerate(img.get("objects", [])):
                name = f"{record} object {i}"
                category = obj.get("category") if isinstance(obj, dict) else None
                if category not in known:
                    raise AnnotationError(self.file, name, f"unknown class {category!r}")
                bbox = obj.get("bbox")
                try:
                    box = [float(bbox[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                except (TypeError, KeyError, ValueError) as error:
                    raise AnnotationError(self.file, name, f"bad bbox {bbox!r}") from error
                if category not in labels:
                    continue
                boxes.append(box)
                classes.append(labels[category])
                records.append(f"{name} ({category})")
            path = self.root / rel
            if not path.is_file():
                raise AnnotationError(self.file, record, f"image file {path} not found")
            self._entries.append((image_id, path, np.array(boxes, dtype=np.float64).reshape(-1, 4),
                                  classes, records))
        self._cache: dict[int, Annotation] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def annotation(self, index: int) -> Annotation:
        if index not in self._cache:
            image_id, path, boxes, classes, records = self._entries[index]
            width, height = image_size(path, f"image {image_id}")
            boxes = check_boxes(boxes, width, height, self.file, records)
            self._cache[index] = Annotation(image_id, str(path.relative_to(self.root)), width, height, boxes, classes)
        return self._cache[index]

    def image_path(self, index: int) -> Path:
        return self._entries[index][1]

    def image(self, index: int) -> np.ndarray:
        ann = self.annotation(index)
        return load_rgb(self.root / ann.file_name, f"image {ann.image_id}", expect=(ann.width, ann.height))
