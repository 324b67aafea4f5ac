"""Pascal VOC reader: ``VOCdevkit/VOC2007``-style folders of XML annotations.

Layout (``root`` is e.g. ``VOCdevkit/VOC2007``)::

    root/ImageSets/Main/<image_set>.txt   one image stem per line
    root/Annotations/<stem>.xml
    root/JPEGImages/<stem>.jpg

Every XML is parsed and checked when the reader is built, so a broken file fails at start-up
rather than hours into training. VOC corners are 1-based and inclusive; they are converted to the
continuous convention of :mod:`mdssd.data.base` as ``(xmin-1, ymin-1, xmax, ymax)``, which also
makes the plain continuous IoU equal to the devkit's "+1" IoU.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import Annotation, AnnotationError, ImageFileSource, check_boxes, class_index

__all__ = ["VOC_CLASSES", "VOCDetection", "parse_voc_xml"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def _text(node: ET.Element, tag: str, file: Path, record: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(file, record, f"missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, file: Path, record: str) -> float:
    text = _text(node, tag, file, record)
    try:
        return float(text)
    except ValueError as error:
        raise AnnotationError(file, record, f"<{tag}> is not a number: {text!r}") from error


def parse_voc_xml(path: str | Path, labels: dict[str, int], image_id: int) -> Annotation:
    """Parse one VOC annotation file; raise :class:`AnnotationError` naming file and object."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, f"image {image_id}", "annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise AnnotationError(path, "XML", f"cannot parse ({error})") from error
    size = root.find("size")
    if size is None:
        raise AnnotationError(path, "<size>", "missing")
    width = int(_number(size, "width", path, "<size>"))
    height = int(_number(size, "height", path, "<size>"))
    if width <= 0 or height <= 0:
        raise AnnotationError(path, "<size>", f"invalid image size {width}x{height}")
    file_name = root.findtext("filename", default=f"{path.stem}.jpg").strip()
    boxes, classes, difficult, records = [], [], [], []
    for i, obj in enumerate(root.findall("object")):
        record = f"object {i}"
        name = _text(obj, "name", path, record)
        if name not in labels:
            raise AnnotationError(path, f"{record} ({name!r})", "unknown class")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(path, f"{record} ({name})", "missing <bndbox>")
        corners = [_number(bndbox, tag, path, f"{record} ({name})") for tag in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append([corners[0] - 1, corners[1] - 1, corners[2], corners[3]])
        classes.append(labels[name])
        difficult.append(obj.findtext("difficult", default="0").strip() == "1")
        records.append(f"{record} ({name})")
    boxes = check_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, path, records)
    return Annotation(image_id, file_name, width, height, boxes, classes, difficult=difficult)


class VOCDetection(ImageFileSource):
    """One VOC image set (e.g. VOC2007 ``trainval`` or ``test``) as a detection source.

    ``image_id`` is the position in the image-set file (VOC stems like ``000005`` are not unique
    across years, and COCO-style evaluation needs integers).
    """

    def __init__(self, root: str | Path, image_set: str = "trainval",
                 class_names: Sequence[str] = VOC_CLASSES):
        self.root = Path(root)
        self.class_names = tuple(class_names)
        labels = class_index(self.class_names)
        list_file = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise AnnotationError(list_file, f"image set {image_set!r}", "file not found")
        stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        self._annotations = []
        self._image_paths = []
        for image_id, stem in enumerate(stems):
            ann = parse_voc_xml(self.root / "Annotations" / f"{stem}.xml", labels, image_id)
            image_path = self.root / "JPEGImages" / ann.file_name
            if not image_path.is_file():
                raise AnnotationError(self.root / "Annotations" / f"{stem}.xml", f"<filename> {ann.file_name}",
                                      f"image file {image_path} not found")
            self._annotations.append(ann)
            self._image_paths.append(image_path)
