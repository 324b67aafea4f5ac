"""Write any detection source out as a COCO or a YOLO (ultralytics) data set.

``python -m mdssd.data.export --dataset D [--data-root R] --to coco|yolo OUT [--splits train val]``
converts the named splits of any reader (synthetic, VOC, COCO, TT100K, YOLO, VisDrone, DOTA); the
result is read back by ``--dataset coco --data-root OUT`` or ``--dataset yolo --data-root OUT``,
and the YOLO folder's ``data.yaml`` is one ultralytics' ``check_det_dataset`` accepts.

What each format can hold: COCO keeps everything (VOC/DOTA ``difficult`` objects are written with
``iscrowd: 1``, which pycocotools ignores, plus a ``difficult: 1`` key that our reader reads back
as difficult). YOLO has no flag for crowd or difficult objects: they are not written (neither
trained on nor scored by ultralytics), and a warning says how many were left out. Images are
copied as they are when the source reads files (no re-encoding), else written as PNG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

from PIL import Image

from .base import Annotation, DetectionSource, image_size

__all__ = ["coco_ground_truth", "export_coco", "export_yolo", "main"]


def coco_ground_truth(annotations: list[Annotation], class_names: tuple[str, ...]) -> dict:
    """COCO instances dict of these annotations; category id = label (1..K-1).

    VOC ``difficult`` objects are written with ``iscrowd: 1``: pycocotools then ignores detections
    matched to them and does not count them as misses, which is what the VOC protocol does for
    difficult objects (crowd matching also uses intersection over detection area; close enough
    for a secondary metric, and the VOC metric treats difficult exactly). They also carry
    ``difficult: 1`` (a key pycocotools does not read), so that :class:`~mdssd.data.coco.COCODetection`
    reads them back as difficult rather than crowd.
    """
    images, instances = [], []
    for ann in annotations:
        images.append({"id": int(ann.image_id), "file_name": ann.file_name, "width": ann.width, "height": ann.height})
        for box, label, difficult, crowd in zip(ann.boxes, ann.labels, ann.difficult, ann.crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            instance = {
                "id": len(instances) + 1, "image_id": int(ann.image_id), "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(bool(crowd) or bool(difficult)),
            }
            if difficult and not crowd:
                instance["difficult"] = 1
            instances.append(instance)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": instances, "categories": categories}


def _write_image(source: DetectionSource, index: int, folder: Path, name: str, image_format: str | None) -> str:
    """Write image ``index`` as ``folder/name`` (suffix: the file's own when copied, else
    ``image_format``); returns the file name used."""
    path = getattr(source, "image_path", None)
    path = path(index) if path is not None else None
    ann = source.annotation(index)
    # Copy only a file whose stored size is the annotation's (not one shown turned by EXIF).
    if (image_format is None and path is not None and Path(path).is_file()
            and image_size(path, f"image {ann.image_id}") == (ann.width, ann.height)):
        name = Path(name).with_suffix(Path(path).suffix).name
        shutil.copyfile(path, folder / name)
        return name
    name = Path(name).with_suffix(f".{image_format or 'png'}").name
    Image.fromarray(source.image(index)).save(folder / name)
    return name


def _unique_name(ann: Annotation, used: set[str]) -> str:
    """The file's own name, prefixed with the image id when another image already took it
    (readers of nested folders may hold ``a/1.jpg`` and ``b/1.jpg``)."""
    name = Path(ann.file_name).name
    stem = Path(name).stem
    if stem in used:
        name = f"{ann.image_id}_{name}"
    used.add(Path(name).stem)
    return name


def export_coco(source: DetectionSource, out_dir: str | Path, split: str = "train",
                image_format: str | None = "png") -> Path:
    """Write ``out_dir/<split>/<file>`` images and ``out_dir/annotations/instances_<split>.json``.

    The result is the layout :func:`mdssd.data.build_source` (``"coco"``) reads back (name the
    split ``train2017``/``val2017`` for its ``train``/``val``). ``image_format=None`` copies image
    files as they are when the source reads files. Returns the JSON path.
    """
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    annotations, used = [], set()
    for index in range(len(source)):
        ann = source.annotation(index)
        name = _write_image(source, index, out_dir / split, _unique_name(ann, used), image_format)
        annotations.append(Annotation(ann.image_id, name, ann.width, ann.height, ann.boxes, ann.labels,
                                      ann.difficult, ann.crowd))
    path = out_dir / "annotations" / f"instances_{split}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco_ground_truth(annotations, tuple(source.class_names))))
    tmp.replace(path)
    return path


def yolo_lines(ann: Annotation) -> list[str]:
    """``class xc yc w h`` lines (normalised, 8 significant digits) of the annotation's plain
    objects (crowd and difficult ones have no YOLO form)."""
    lines = []
    keep = ~(ann.crowd | ann.difficult)
    for (x1, y1, x2, y2), label in zip(ann.boxes[keep], ann.labels[keep]):
        xc, yc = (x1 + x2) / 2 / ann.width, (y1 + y2) / 2 / ann.height
        w, h = (x2 - x1) / ann.width, (y2 - y1) / ann.height
        lines.append(f"{int(label) - 1} {xc:.8g} {yc:.8g} {w:.8g} {h:.8g}")
    return lines


def export_yolo(source: DetectionSource, out_dir: str | Path, split: str = "train",
                image_format: str | None = None) -> Path:
    """Write one split as ``out_dir/images/<split>/<file>`` and ``out_dir/labels/<split>/<stem>.txt``
    and add it to ``out_dir/data.yaml`` (``path`` absolute, ``names`` as a list); returns the
    YAML's path. Call once per split (ultralytics needs ``train`` and ``val``); the class names
    must agree with those already in the YAML. Objects without a YOLO form (crowd, difficult) are
    left out with a warning; ``image_format=None`` copies image files as they are.
    """
    import yaml

    from .dataset import ignore_regions

    out_dir = Path(out_dir).resolve()
    images, labels = out_dir / "images" / split, out_dir / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    yaml_path = out_dir / "data.yaml"
    names = [str(n) for n in source.class_names]
    data = {"path": str(out_dir)}
    if yaml_path.is_file():
        data = yaml.safe_load(yaml_path.read_text()) or data
        if data.get("names", names) != names:
            raise ValueError(f"{yaml_path}: names {data.get('names')} differ from this split's {names}")
    used, left_out = set(), 0
    for index in range(len(source)):
        ann = source.annotation(index)
        name = _write_image(source, index, images, _unique_name(ann, used), image_format)
        (labels / Path(name).with_suffix(".txt").name).write_text("".join(f"{line}\n" for line in yolo_lines(ann)))
        left_out += len(ignore_regions(ann)) + int((ann.difficult & ~ann.crowd).sum())
    if left_out:
        warnings.warn(f"{split}: {left_out} crowd regions or difficult objects (ignored in training and evaluation) "
                      f"have no YOLO form and were not written", stacklevel=2)
    data[split] = f"images/{split}"
    data = {**{k: data[k] for k in ("path", "train", "val", "test") if k in data},
            **{k: v for k, v in data.items() if k not in ("path", "train", "val", "test", "names")}, "names": names}
    tmp = yaml_path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(yaml_path)
    return yaml_path


def main(argv: list[str] | None = None) -> int:
    from .base import AnnotationError
    from .dataset import DATASETS, build_source

    parser = argparse.ArgumentParser(prog="python -m mdssd.data.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", default=None, help="data set folder (not needed for synthetic)")
    parser.add_argument("--to", required=True, choices=("coco", "yolo"), help="output format")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--splits", nargs="+", default=["train", "val"],
                        help="splits to convert (default: train val; the readers' names, e.g. test)")
    parser.add_argument("--num-images", type=int, default=None, help="synthetic: images per split")
    parser.add_argument("--seed", type=int, default=None, help="synthetic: generator seed")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("num_images", args.num_images), ("seed", args.seed)) if v is not None}
    if options and args.dataset != "synthetic":
        parser.error("--num-images and --seed are options of the synthetic set")
    try:
        for split in args.splits:
            source = build_source(args.dataset, args.data_root, split, **options)
            if args.to == "yolo":
                written = export_yolo(source, args.out, split)
            else:  # the COCO reader's names for train/val
                written = export_coco(source, args.out, {"train": "train2017", "val": "val2017"}.get(split, split),
                                      image_format=None)
            print(f"{args.dataset} {split}: {len(source)} images -> {written}")
    except (AnnotationError, ValueError, OSError) as error:
        print(f"mdssd.data.export: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
