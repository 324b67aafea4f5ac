"""VisDrone2019-DET reader: ``images/*.jpg`` and ``annotations/<stem>.txt`` per split.

Layout: ``root/VisDrone2019-DET-train``, ``-val``, ``-test-dev`` as released (``split`` ``train``,
``val``, ``test``), or any folder under ``root`` named as the split (``--val-split .``: ``root``
itself), each holding ``images/`` and ``annotations/``. Every image needs its annotation file.

One object per line: ``left,top,width,height,score,category,truncation,occlusion`` (pixels;
a trailing comma is allowed). Categories 1-10 are the classes (:data:`VISDRONE_CLASSES`).

Ignore rule (VisDrone's own evaluation toolkit): category 0 ("ignored regions"), category 11
("others") and any box with ``score`` 0 are *ignore regions*: never training targets, left out
of the loss (priors inside them are neither objects nor background,
:func:`mdssd.model.loss.ignore_priors`), and detections on them count neither way in
evaluation (``iscrowd`` for pycocotools; the VOC metric ignores detections inside them). A
VisDrone region holds no class, so it is stored once per class with ``crowd`` set: each class's
metric sees it, and training merges the copies (:func:`mdssd.data.dataset.ignore_regions`).

Truncation (0 none, 1 partial) and occlusion (0 none, 1 partial, 2 heavy) are checked to be
those values and otherwise not used: truncated and occluded objects are ordinary objects, as in
the toolkit's evaluation (which scores every category 1-10 box); they are kept on the reader as
:attr:`VisDroneDetection.truncation` / ``occlusion`` (per image, in the order of its non-crowd
boxes) for users who filter.

Boxes are checked against the image header; a box passing the border by at most 1 px is
clipped (integer corners at ``width``), more is an error, as is a box of zero size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (Annotation, AnnotationError, ImageFileSource, check_boxes, image_size, list_images,
                   read_annotation_text, split_folder)

__all__ = ["VISDRONE_CLASSES", "VisDroneDetection", "parse_visdrone_file"]

VISDRONE_CLASSES = ("pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus",
                    "motor")
IGNORED_REGIONS, OTHERS = 0, 11
_SPLITS = {"train": ["VisDrone2019-DET-train"], "val": ["VisDrone2019-DET-val"],
           "test": ["VisDrone2019-DET-test-dev"], "test-dev": ["VisDrone2019-DET-test-dev"]}
_BORDER_TOLERANCE = 1.0


def parse_visdrone_file(path: Path, width: int, height: int, image_id: int, file_name: str
                        ) -> tuple[Annotation, np.ndarray, np.ndarray]:
    """``(annotation, truncation, occlusion)`` of one annotation file (see the module docstring)."""
    text = read_annotation_text(path, file_name, "annotation file not found")
    k = len(VISDRONE_CLASSES)
    boxes, labels, crowd, records, truncation, occlusion = [], [], [], [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = [f.strip() for f in line.strip().rstrip(",").split(",")]
        if fields == [""]:
            continue
        record = f"line {number}"
        if len(fields) != 8:
            raise AnnotationError(path, record, f"{len(fields)} fields: expected "
                                                "left,top,width,height,score,category,truncation,occlusion")
        try:
            left, top, w, h, score = (float(v) for v in fields[:5])
            category, trunc, occ = (int(v) for v in fields[5:])
        except ValueError as error:
            raise AnnotationError(path, record, f"not a number in {line.strip()!r}") from error
        if not 0 <= category <= OTHERS:
            raise AnnotationError(path, record, f"category {category} is not 0-11")
        if trunc not in (0, 1) or occ not in (0, 1, 2):
            raise AnnotationError(path, record, f"truncation {trunc} / occlusion {occ} not in 0-1 / 0-2")
        if not (w > 0 and h > 0):
            raise AnnotationError(path, record, f"zero-size box (width {w:g}, height {h:g})")
        box = [left, top, left + w, top + h]
        if category in (IGNORED_REGIONS, OTHERS) or score == 0:
            for label in range(1, k + 1):  # a class-agnostic region: one crowd box per class
                boxes.append(box), labels.append(label), crowd.append(True), records.append(record)
            continue
        boxes.append(box), labels.append(category), crowd.append(False), records.append(record)
        truncation.append(trunc), occlusion.append(occ)
    boxes = check_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, path, records,
                        tolerance=_BORDER_TOLERANCE)
    annotation = Annotation(image_id, file_name, width, height, boxes, labels, crowd=crowd)
    return annotation, np.array(truncation, np.int64), np.array(occlusion, np.int64)


class VisDroneDetection(ImageFileSource):
    """One VisDrone-DET split; ``image_id`` is the position in the sorted image list."""

    class_names = VISDRONE_CLASSES

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        self.folder = split_folder(self.root, split, _SPLITS, ("images", "annotations"))
        self._image_paths = list_images(self.folder / "images")
        if not self._image_paths:
            raise AnnotationError(self.folder / "images", f"split {split!r}", "no images")
        self._annotations, self.truncation, self.occlusion = [], [], []
        for image_id, image in enumerate(self._image_paths):
            width, height = image_size(image, f"image {image_id}")
            ann, trunc, occ = parse_visdrone_file(self.folder / "annotations" / f"{image.stem}.txt", width, height,
                                                  image_id, image.name)
            self._annotations.append(ann)
            self.truncation.append(trunc)
            self.occlusion.append(occ)
