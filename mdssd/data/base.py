"""What every data source hands to the rest of mdssd: one :class:`Annotation` per image.

A *source* (VOC, COCO, TT100K readers, the synthetic generator) knows nothing about training: it
returns the decoded image (``uint8 [H,W,3]`` RGB) and the image's ground truth in **pixel**
coordinates of that image. :class:`mdssd.data.dataset.DetectionDataset` turns a source into the
normalised ``(image, target)`` items of docs/CONTRACTS.md; evaluation reads the annotations
directly, so ``difficult`` (VOC) and ``iscrowd`` (COCO) survive until the metrics.

Box convention: continuous ``xyxy`` pixel coordinates, ``0 <= x1 <= x2 <= width``; a pixel ``i``
covers ``[i, i+1)``. (VOC's 1-based inclusive corners are converted by the VOC reader.)
Labels are ``1..num_classes-1``; 0 is background and never appears in an annotation.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

__all__ = [
    "Annotation", "AnnotationError", "DetectionSource", "check_boxes", "class_index", "image_size", "load_rgb",
    "IMAGE_SUFFIXES", "list_images", "split_folder",
]

# Image files the folder readers take (ultralytics' IMG_FORMATS that Pillow decodes: not heic).
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"}


class AnnotationError(ValueError):
    """A missing, corrupt or inconsistent annotation or image; the message names file and record."""

    def __init__(self, file: str | Path, record: str, problem: str):
        self.file = str(file)
        self.record = record
        self.problem = problem
        super().__init__(f"{file}: {record}: {problem}")


@dataclass
class Annotation:
    """Ground truth of one image, in pixel coordinates of the stored image."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # float64 [n,4] xyxy pixels
    labels: np.ndarray  # int64 [n], 1..K-1
    difficult: np.ndarray = field(default=None)  # bool [n]: VOC "difficult"; ignored by the metrics
    crowd: np.ndarray = field(default=None)  # bool [n]: COCO "iscrowd"; ignored by the metrics

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.labels)
        self.difficult = np.zeros(n, bool) if self.difficult is None else np.asarray(self.difficult, bool)
        self.crowd = np.zeros(n, bool) if self.crowd is None else np.asarray(self.crowd, bool)
        if not (len(self.boxes) == n == len(self.difficult) == len(self.crowd)):
            raise ValueError(f"annotation of {self.file_name}: boxes, labels and flags differ in length")

    def trainable(self, keep_difficult: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and labels a detector should learn from.

        Crowd regions are never targets (they are not single objects); ``difficult`` objects are
        dropped unless ``keep_difficult`` (the VOC protocol ignores them in evaluation, so
        training on them is a choice); zero-area boxes cannot be matched to priors and are dropped.
        """
        keep = ~self.crowd
        if not keep_difficult:
            keep &= ~self.difficult
        keep &= (self.boxes[:, 2] > self.boxes[:, 0]) & (self.boxes[:, 3] > self.boxes[:, 1])
        return self.boxes[keep], self.labels[keep]


class DetectionSource(Protocol):
    """A data set on disk or generated: indexable images with annotations."""

    class_names: tuple[str, ...]  # without background; label i+1 is class_names[i]

    def __len__(self) -> int: ...

    def annotation(self, index: int) -> Annotation: ...

    def image(self, index: int) -> np.ndarray:  # uint8 [H,W,3] RGB, H,W as in the annotation
        ...


class ImageFileSource:
    """A data source whose annotations are read up front and whose images are files on disk:
    subclasses fill ``_annotations`` and ``_image_paths`` (same order) in ``__init__``."""

    _annotations: list[Annotation]
    _image_paths: list[Path]

    def __len__(self) -> int:
        return len(self._annotations)

    def annotation(self, index: int) -> Annotation:
        return self._annotations[index]

    def image(self, index: int) -> np.ndarray:
        ann = self._annotations[index]
        return load_rgb(self._image_paths[index], f"image {ann.image_id}", expect=(ann.width, ann.height))

    def image_path(self, index: int) -> Path:
        """The image file (export copies it as it is)."""
        return self._image_paths[index]


def check_boxes(boxes: np.ndarray, width: int, height: int, file: str | Path, records: Sequence[str],
                tolerance: float = 0.0) -> np.ndarray:
    """Raise :class:`AnnotationError` if a box is inverted or outside the image.

    ``records`` names each box in error messages (e.g. ``"object 3 (car)"``). ``tolerance``
    (pixels) admits boxes that overshoot the border by float rounding, as real COCO annotations
    do by fractions of a pixel; such boxes are clipped to the image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for box, record in zip(boxes, records):
        x1, y1, x2, y2 = box
        if not np.all(np.isfinite(box)):
            raise AnnotationError(file, record, f"non-finite box {box.tolist()}")
        if x2 < x1 or y2 < y1:
            raise AnnotationError(file, record, f"inverted box {box.tolist()}")
        if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
            raise AnnotationError(file, record, f"box {box.tolist()} outside the {width}x{height} image")
    return np.clip(boxes, 0, [width, height, width, height]) if len(boxes) else boxes


def load_rgb(path: str | Path, record: str, expect: tuple[int, int] | None = None,
             exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file to ``uint8 [H,W,3]`` RGB; errors name the file and the record.

    ``expect`` is the ``(width, height)`` the annotation claims; a different decoded size means
    the boxes refer to another image, so it is an error rather than a silent rescale.
    ``exif_transpose``: rotate/mirror as the EXIF orientation says (what YOLO labels refer to).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, record, "image file not found")
    try:
        with _pixel_limit(), Image.open(path) as im:
            im = (ImageOps.exif_transpose(im) if exif_transpose else im).convert("RGB")
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise AnnotationError(path, record, f"cannot decode image ({error})") from error
    if expect is not None and (array.shape[1], array.shape[0]) != tuple(expect):
        raise AnnotationError(
            path, record,
            f"image is {array.shape[1]}x{array.shape[0]} but the annotation says {expect[0]}x{expect[1]}",
        )
    return array


_EXIF_ORIENTATION = 0x0112

# Pillow refuses images over 2 x 89.5 megapixels as decompression bombs (a guard for untrusted
# uploads). Readers open the user's own data set, whose aerial images (DOTA: up to 20,000 px a
# side, 0.4 gigapixels) pass that: they allow up to this many pixels instead.
MAX_IMAGE_PIXELS = 1 << 30


@contextlib.contextmanager
def _pixel_limit():
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS // 2  # Pillow raises above twice its limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def image_size(path: str | Path, record: str, exif_orientation: bool = False) -> tuple[int, int]:
    """``(width, height)`` from the image header only (no decode).

    ``exif_orientation``: the size as displayed, i.e. swapped for EXIF orientations 5-8 (a
    quarter turn), for JPEG/MPO/TIFF/WebP whose EXIF is in the header (Pillow would decode a whole
    PNG to find its eXIf chunk: PNGs are taken as stored).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, record, "image file not found")
    try:
        with _pixel_limit(), Image.open(path) as im:
            width, height = im.size
            turned = (exif_orientation and im.format in ("JPEG", "MPO", "TIFF", "WEBP")
                      and im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise AnnotationError(path, record, f"cannot read image header ({error})") from error
    return (height, width) if turned else (width, height)


def read_annotation_text(path: Path, image: str, missing: str = "label file not found") -> str:
    """The text of an image's annotation file; an :class:`AnnotationError` naming the file when it
    is missing (as a record of ``image``) or unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise AnnotationError(path, f"image {image}", missing) from error
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(path, "file", f"cannot read ({error})") from error


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (:data:`IMAGE_SUFFIXES`, any case) in ``folder``, sorted by path."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_folder(root: Path, split: str, aliases: dict[str, list[str]], needs: tuple[str, ...]) -> Path:
    """The folder of ``split`` under ``root``: the first of ``aliases[split]`` (e.g. ``train`` ->
    ``VisDrone2019-DET-train``), then ``split`` itself (so ``.`` is ``root``), that holds every
    sub-folder in ``needs``; an error listing what was tried otherwise."""
    tried = []
    for name in [*aliases.get(split, []), split]:
        folder = root / name
        if all((folder / sub).is_dir() for sub in needs):
            return folder
        tried.append(str(folder))
    raise AnnotationError(root, f"split {split!r}", f"no folder with {' and '.join(needs)}/ (tried "
                                                     f"{', '.join(tried)}); name the split by its folder (mdssd.train "
                                                     f"--train-split/--val-split, mdssd.eval --split)")


def class_index(names: Sequence[str]) -> dict[str, int]:
    """Name -> label (1-based: 0 is background)."""
    return {name: i + 1 for i, name in enumerate(names)}
