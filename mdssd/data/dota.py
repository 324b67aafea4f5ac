"""DOTA v1.0 / v1.5 reader: ``images/*.png`` and ``labelTxt/<stem>.txt`` per split.

Layout: ``root/train``, ``root/val`` (or any folder under ``root`` named as the split; ``.`` is
``root`` itself), each holding ``images/`` and ``labelTxt/`` (or the one ``labelTxt*`` folder
there, e.g. ``labelTxt-v1.5``; ``label_dir`` names another). Every image needs its label file.

A label file may start with header lines ``imagesource:GoogleEarth`` and ``gsd:0.146`` (any line
with a ``:`` and no spaces before the first object is a header); then one object per line,
``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` (``difficult`` 0/1; missing means 0). The
oriented polygon becomes its axis-aligned bounding box. ``difficult`` objects are VOC's
difficult ones: not trained on (unless ``keep_difficult``), ignored by the VOC metric and written
as ``iscrowd`` for pycocotools.

Classes: DOTA v1.5's 16 (:data:`DOTA_CLASSES`; v1.0's 15 plus ``container-crane``, which then has
no ground truth: its AP is NaN and left out of mAP). DOTA's polygons pass the image border by a
few pixels in places: boxes are clipped to the image; a box with no area inside it, or of zero
size, is an error naming file and line.

DOTA images are up to 20,000 px a side: train with ``--crop`` (windows at native resolution)
and evaluate with ``--tile`` (sliced inference); an image is decoded whole when one of its
windows is needed, so the largest ones cost seconds per crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (Annotation, AnnotationError, ImageFileSource, class_index, image_size, list_images,
                   read_annotation_text, split_folder)

__all__ = ["DOTA_CLASSES", "DOTADetection", "parse_dota_file"]

DOTA_CLASSES = ("plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
                "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
                "roundabout", "soccer-ball-field", "swimming-pool", "container-crane")


def parse_dota_file(path: Path, width: int, height: int, labels: dict[str, int], image_id: int,
                    file_name: str) -> Annotation:
    """One DOTA label file as an :class:`Annotation` (see the module docstring)."""
    text = read_annotation_text(path, file_name)
    boxes, classes, difficult = [], [], []
    objects_started = False
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        record = f"line {number}"
        if not objects_started and len(tokens) == 1 and ":" in tokens[0]:
            continue  # imagesource:..., gsd:...
        objects_started = True
        if len(tokens) not in (9, 10):
            raise AnnotationError(path, record, f"{len(tokens)} fields: expected "
                                                "'x1 y1 x2 y2 x3 y3 x4 y4 category difficult'")
        try:
            points = np.array([float(t) for t in tokens[:8]]).reshape(4, 2)
        except ValueError as error:
            raise AnnotationError(path, record, f"not a number in {line.strip()!r}") from error
        name = tokens[8]
        if name not in labels:
            raise AnnotationError(path, record, f"unknown class {name!r} (DOTA v1.5 classes: {', '.join(labels)})")
        flag = tokens[9] if len(tokens) == 10 else "0"
        if flag not in ("0", "1"):
            raise AnnotationError(path, record, f"difficult must be 0 or 1, got {flag!r}")
        if not np.all(np.isfinite(points)):
            raise AnnotationError(path, record, f"non-finite coordinate in {line.strip()!r}")
        x1, y1 = points.min(axis=0)
        x2, y2 = points.max(axis=0)
        if x2 <= x1 or y2 <= y1:
            raise AnnotationError(path, record, f"zero-size box {[x1, y1, x2, y2]}")
        box = np.clip([x1, y1, x2, y2], 0, [width, height, width, height])
        if box[2] <= box[0] or box[3] <= box[1]:
            raise AnnotationError(path, record, f"box {[x1, y1, x2, y2]} outside the {width}x{height} image")
        boxes.append(box), classes.append(labels[name]), difficult.append(flag == "1")
    return Annotation(image_id, file_name, width, height, np.array(boxes).reshape(-1, 4), classes,
                      difficult=difficult)


class DOTADetection(ImageFileSource):
    """One DOTA split; ``image_id`` is the position in the sorted image list."""

    class_names = DOTA_CLASSES

    def __init__(self, root: str | Path, split: str = "train", label_dir: str | None = None):
        self.root = Path(root)
        if label_dir is None:  # labelTxt, else the one labelTxt* folder (v1.5: labelTxt-v1.5)
            found = sorted(p.name for p in (self.root / split).glob("labelTxt*") if p.is_dir())
            label_dir = "labelTxt" if "labelTxt" in found or len(found) != 1 else found[0]
        self.folder = split_folder(self.root, split, {}, ("images", label_dir))
        self._image_paths = list_images(self.folder / "images")
        if not self._image_paths:
            raise AnnotationError(self.folder / "images", f"split {split!r}", "no images")
        labels = class_index(self.class_names)
        self._annotations = []
        for image_id, image in enumerate(self._image_paths):
            width, height = image_size(image, f"image {image_id}")
            self._annotations.append(parse_dota_file(self.folder / label_dir / f"{image.stem}.txt", width, height,
                                                     labels, image_id, image.name))
