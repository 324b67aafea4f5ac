"""``python -m mdssd.detect IMAGE_OR_DIR --weights CKPT --out DIR``.

Writes ``DIR/<stem>.png`` (the image with labelled boxes scoring at least ``--threshold``) and
``DIR/detections.json``: every detection in COCO results format (``image_id``, ``category_id`` =
label, ``bbox`` ``[x, y, w, h]`` pixels, ``score``), with ``DIR/images.json`` mapping image ids to
files and ``DIR/categories.json`` category ids to names. ``--tile N --tile-overlap F``: sliced
detection on N x N pixel tiles for large images with small objects (:mod:`mdssd.tiling`).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["draw_detections", "main"]

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _colour(label: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps: neighbouring labels get clearly different colours.
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes, scores, labels, class_names: Sequence[str], threshold: float):
    """A Pillow image with one box and ``name score`` tag per detection above ``threshold``."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 400))
    for box, score, label in zip(boxes, scores, labels):
        if score < threshold:
            continue
        colour = _colour(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(int(label))
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y2 + 1
        draw.rectangle((x1, ty, x1 + right - left + 2, ty + bottom - top + 2), fill=colour)
        draw.text((x1 + 1, ty - top + 1), text, fill=(0, 0, 0), font=font)
    return canvas


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(sorted(_EXTENSIONS))})")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdssd.detect", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="an image or a folder of images")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3, help="smallest score drawn")
    parser.add_argument("--classes", default=None,
                        help="class names when the checkpoint has none: comma-separated, or a YOLO data.yaml "
                             "(its names) (default: the synthetic set's names if the class count fits)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default="ext", choices=("ext", "reference"))
    from .eval import add_tile_arguments, tile_spec_from_args

    add_tile_arguments(parser)
    args = parser.parse_args(argv)
    try:
        tile = tile_spec_from_args(args)
    except ValueError as error:
        parser.error(str(error))

    import torch

    from .data.base import load_rgb
    from .data.synthetic import SIGN_CLASSES
    from .inference import load_model, predict_images
    from .tiling import predict_tiled

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, class_names = load_model(args.weights, backend=args.backend, device=device)
    if args.classes and args.classes.endswith((".yaml", ".yml")):
        from .data.base import AnnotationError
        from .data.yolo import read_data_yaml

        try:
            class_names = read_data_yaml(Path(args.classes))[2]
        except AnnotationError as error:
            print(f"mdssd.detect: {error}", file=sys.stderr)
            return 2
    elif args.classes:
        class_names = tuple(args.classes.split(","))
    if class_names is None:
        k = model.config.num_classes - 1
        class_names = SIGN_CLASSES if k == len(SIGN_CLASSES) else tuple(f"class{i}" for i in range(1, k + 1))
    if len(class_names) != model.config.num_classes - 1:
        print(f"mdssd.detect: {len(class_names)} class names for a model with {model.config.num_classes - 1} "
              "classes", file=sys.stderr)
        return 2
    try:
        files = _images(Path(args.input))
    except FileNotFoundError as error:
        print(f"mdssd.detect: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, images_index = [], []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start:start + args.batch_size]
        arrays = [load_rgb(f, f"input {i}") for i, f in enumerate(chunk, start)]
        found = predict_tiled(model, arrays, tile) if tile else predict_images(model, arrays)
        for image_id, (file, array, det) in enumerate(zip(chunk, arrays, found), start):
            images_index.append({"id": image_id, "file_name": str(file), "width": array.shape[1],
                                 "height": array.shape[0]})
            for box, score, label in zip(det.boxes, det.scores, det.labels):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append({"image_id": image_id, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": float(score)})
            drawn = draw_detections(array, det.boxes, det.scores, det.labels, class_names, args.threshold)
            drawn.save(out / f"{file.stem}.png")
            shown = int((det.scores >= args.threshold).sum())
            print(f"{file}: {shown} detections >= {args.threshold} ({len(det.scores)} in JSON)")
    (out / "detections.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps(images_index, indent=1))
    (out / "categories.json").write_text(json.dumps([{"id": i + 1, "name": n} for i, n in enumerate(class_names)]))
    print(f"wrote {len(files)} images and {len(results)} detections to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
