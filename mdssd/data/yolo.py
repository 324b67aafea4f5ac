"""YOLO (ultralytics) reader: a ``data.yaml`` and ``images/`` + ``labels/`` folders of ``.txt`` files.

The data set is found as ultralytics finds it (``ultralytics.data.utils.check_det_dataset``,
``img2label_paths``, ``verify_image_label``); where we differ it is said here:

* ``data.yaml`` holds ``path`` (the data set root; relative to the YAML's folder, which is also
  the default when ``path`` is missing: ultralytics would try the working directory and its own
  ``datasets_dir`` instead), ``train``, ``val``, optional ``test``, and ``names`` as a list or an
  ``{id: name}`` map with ids ``0..n-1`` (or only ``nc``: names ``class_0 ...``). A split is a
  folder of images (searched recursively), a ``.txt`` file listing images, or a list of those,
  relative to ``path`` (``../x`` that does not exist is retried as ``x``, as ultralytics does).
  In a list file, ``./x`` lines are relative to the list's folder (ultralytics), other relative
  lines too when they exist there (ultralytics: the working directory, tried second here).
* Labels: the last ``/images/`` in an image's path becomes ``/labels/``, the suffix ``.txt``
  (``a/images/train/1.jpg`` -> ``a/labels/train/1.txt``). A missing or empty label file: an image
  without objects (ultralytics counts it as background).
* A line is ``class xc yc w h`` normalised to 0-1, or a polygon ``class x1 y1 x2 y2 x3 y3 ...``
  (segment export, 3 or more points) whose bounding box is taken. As ultralytics: the box's
  ``xc yc w h`` (of a polygon: its extent) must lie in ``[0, 1]``; corners that still pass the
  border (``xc + w/2 > 1``) are clipped to the image; exact duplicate lines are removed, with a
  warning naming the file. Stricter than ultralytics (which warns and leaves the whole image out
  of training): any other bad line is an :class:`AnnotationError` naming file and line -- not a
  number, 6 values, an odd polygon, a class id that is not an integer in ``0..n-1``, a value
  below 0 or above 1, and a box of zero width or height (ultralytics keeps and later drops those).
* Image sizes come from the headers only, when the reader is built. Like ultralytics (which
  loads with OpenCV, applying the EXIF orientation), labels refer to the image as displayed:
  EXIF orientations 5-8 (a quarter turn) swap width and height (ultralytics' ``exif_size`` swaps
  for 6 and 8 only), and :meth:`YOLODetection.image` returns the rotated pixels.

Labels here are ``class id + 1`` (0 is background), ``class_names`` the ``names`` in id order.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import IMAGE_SUFFIXES, Annotation, AnnotationError, ImageFileSource, image_size, list_images, load_rgb

__all__ = ["YOLODetection", "IMAGE_SUFFIXES", "find_data_yaml", "read_data_yaml", "label_path", "parse_label_file"]

_SPLIT_KEYS = ("train", "val", "test")


def find_data_yaml(root: str | Path) -> Path:
    """``root`` itself when it is a YAML file, else ``root/data.yaml``, else the only ``*.yaml``
    (or ``*.yml``) in ``root``."""
    root = Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        raise AnnotationError(root, "data root", "no such file or folder")
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    found = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(found) != 1:
        what = "no YAML file" if not found else f"{len(found)} YAML files ({', '.join(p.name for p in found)})"
        raise AnnotationError(root, "data.yaml", f"not found: {what}; pass the YAML file itself as the data root")
    return found[0]


def _class_names(data: dict, path: Path) -> tuple[str, ...]:
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if not isinstance(nc, int) or nc < 1:
            raise AnnotationError(path, "names", "missing (and no 'nc' class count)")
        names = [f"class_{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as error:
            raise AnnotationError(path, "names", f"ids must be integers, got {list(names)}") from error
        if sorted(by_id) != list(range(len(by_id))):
            raise AnnotationError(path, "names", f"ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise AnnotationError(path, "names", f"expected a list or an id -> name map, got {names!r}")
    if nc is not None and nc != len(names):
        raise AnnotationError(path, "nc", f"nc is {nc} but names has {len(names)} entries")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise AnnotationError(path, "names", f"duplicate class names {names}")
    return tuple(names)


def read_data_yaml(path: str | Path) -> tuple[Path, dict[str, Any], tuple[str, ...]]:
    """``(dataset root, {split: spec}, class names)`` of a ``data.yaml``; errors name the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(path, "file", f"cannot read ({error})") from error
    except yaml.YAMLError as error:
        raise AnnotationError(path, "YAML", f"cannot parse ({' '.join(str(error).split())})") from error
    if not isinstance(data, dict):
        raise AnnotationError(path, "YAML", f"top level is not a mapping (got {type(data).__name__})")
    base = Path(os.path.expanduser(str(data["path"]))) if data.get("path") else path.parent
    if not base.is_absolute():
        base = path.parent / base
    splits = {k: data[k] for k in _SPLIT_KEYS if data.get(k)}
    return base, splits, _class_names(data, path)


def _list_file(list_path: Path) -> list[Path]:
    try:
        text = list_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(list_path, "file", f"cannot read an image list ({error})") from error
    files = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry:
            continue
        image = Path(entry)
        if not image.is_absolute():
            near = list_path.parent / (entry[2:] if entry.startswith("./") else entry)
            image = near if entry.startswith("./") or near.exists() or not image.exists() else image
        if not image.is_file():
            raise AnnotationError(list_path, f"line {number}", f"image {entry!r} not found ({image})")
        files.append(image)
    return files


def image_files(spec: Any, base: Path, yaml_path: Path, split: str) -> list[Path]:
    """The images of one split (``spec``: a folder, a ``.txt`` list, or a list of those)."""
    entries = spec if isinstance(spec, list) else [spec]
    files: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise AnnotationError(yaml_path, split, f"expected a path or a list of paths, got {entry!r}")
        where = Path(os.path.expanduser(entry))
        where = where if where.is_absolute() else base / where
        if not where.exists() and entry.startswith("../"):
            where = base / entry[3:]
        if where.is_dir():
            files += list_images(where, recursive=True)
        elif where.is_file():
            files += [p for p in _list_file(where) if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise AnnotationError(yaml_path, split, f"{entry!r} not found ({where})")
    if not files:
        raise AnnotationError(yaml_path, split, f"no images in {spec!r} (suffixes {' '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files, key=str)  # one sorted list, as ultralytics' get_img_files


def label_path(image: str | Path) -> Path:
    """ultralytics' ``img2label_paths``: the last ``/images/`` -> ``/labels/``, suffix -> ``.txt``."""
    text = str(image)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if a in text:
        head, tail = text.rsplit(a, 1)
        text = head + b + tail
    return Path(text).with_suffix(".txt")


def parse_label_file(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel ``xyxy`` boxes and 0-based class ids of one label file (see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(path, "file", f"cannot read ({error})") from error
    rows, seen, duplicates = [], {}, []
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        record = f"line {number}"
        try:
            values = [float(t) for t in tokens]
        except ValueError as error:
            raise AnnotationError(path, record, f"not a number in {line.strip()!r}") from error
        cls = values[0]
        if not (cls.is_integer() and 0 <= cls < num_classes):
            raise AnnotationError(path, record, f"class id {tokens[0]} is not one of names' ids 0..{num_classes - 1}")
        coords = values[1:]
        if len(coords) == 4:
            xc, yc, w, h = coords
        elif len(coords) >= 6 and len(coords) % 2 == 0:  # polygon: its bounding box
            xs, ys = coords[0::2], coords[1::2]
            xc, yc, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
        else:
            raise AnnotationError(path, record, f"{len(values)} values: expected 'class xc yc w h' (5) or a polygon "
                                                f"'class x1 y1 x2 y2 x3 y3 ...' (an even number of coordinates, >= 6)")
        # Plain floats, not numpy: this loop runs once per object of the whole data set.
        if not all(map(math.isfinite, coords)):
            raise AnnotationError(path, record, f"non-finite value in {line.strip()!r}")
        if min(coords) < 0 or max(coords) > 1 or min(xc, yc, w, h) < 0 or max(xc, yc, w, h) > 1:
            raise AnnotationError(path, record, f"coordinates must be normalised to [0, 1], got {line.strip()!r}")
        if w <= 0 or h <= 0:
            raise AnnotationError(path, record, f"zero-size box (w {w:g}, h {h:g})")
        key = tuple(values)
        if key in seen:
            duplicates.append(number)
            continue
        seen[key] = number
        rows.append([cls, (xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width, (yc + h / 2) * height])
    if duplicates:
        warnings.warn(f"{path}: duplicate label lines {duplicates} removed (as ultralytics does)", stacklevel=2)
    rows = np.array(rows, dtype=np.float64).reshape(-1, 5)
    boxes = np.clip(rows[:, 1:], 0, [width, height, width, height])  # corners past the border (ultralytics)
    return boxes, rows[:, 0].astype(np.int64)


class YOLODetection(ImageFileSource):
    """One split (``train``, ``val`` or ``test``) of a YOLO data set.

    ``root``: the ``data.yaml`` or the folder holding it (:func:`find_data_yaml`). Every label
    file is parsed and every image header read when the reader is built, so a bad line fails at
    start-up. ``image_id`` is the position in the split; ``file_name`` the image path relative to
    the data set root (absolute when outside it).
    """

    def __init__(self, root: str | Path, split: str = "train"):
        self.yaml_path = find_data_yaml(root)
        self.root, splits, self.class_names = read_data_yaml(self.yaml_path)
        if split not in splits:
            raise AnnotationError(self.yaml_path, split, f"no {split!r} entry (has {', '.join(splits) or 'none'})")
        self.split = split
        self._image_paths = image_files(splits[split], self.root, self.yaml_path, split)
        self.label_paths = [label_path(p) for p in self._image_paths]
        self._annotations = []
        for image_id, (image, labels) in enumerate(zip(self._image_paths, self.label_paths)):
            width, height = image_size(image, f"image {image_id}", exif_orientation=True)
            boxes, classes = parse_label_file(labels, width, height, len(self.class_names))
            try:
                name = str(image.relative_to(self.root))
            except ValueError:
                name = str(image)
            self._annotations.append(Annotation(image_id, name, width, height, boxes, classes + 1))

    def image(self, index: int) -> np.ndarray:
        ann = self._annotations[index]
        return load_rgb(self._image_paths[index], f"image {ann.image_id}", expect=(ann.width, ann.height),
                        exif_transpose=True)
