"""Step 6: detections -> files.

* ``detections.json`` (every detection, COCO results format: ``image_id``, ``category_id`` =
  label, ``bbox`` ``[x, y, w, h]`` pixels, ``score``), ``images.json`` (ids -> files, sizes and
  georeferencing), ``categories.json`` (ids -> names);
* ``detections.geojson`` for georeferenced inputs: one polygon per detection scoring at least
  the threshold, in the raster's CRS (named in the legacy ``crs`` member, which GDAL and QGIS
  read), with ``class``, ``label``, ``score``, ``image`` and the pixel box. Images in different
  CRSs get one ``<stem>.geojson`` each instead;
* ``<stem>.png``: the image downsampled to at most ``--overview-size`` pixels a side with the
  detections scoring at least the threshold drawn (a full-size PNG of a gigapixel image is a file
  no viewer opens).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["draw_detections", "overview_picture", "geojson", "write_outputs"]


def _colour(label: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps: neighbouring labels get clearly different colours.
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes, scores, labels, class_names: Sequence[str], threshold: float,
                    scale: float = 1.0):
    """A Pillow image with one box and ``name score`` tag per detection above ``threshold``;
    ``scale``: image pixels per box pixel (an overview is ``1 / step`` of the image)."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 400))
    for box, score, label in zip(boxes, scores, labels):
        if score < threshold:
            continue
        colour = _colour(int(label))
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)), outline=colour, width=width)
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(int(label))
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y2 + 1
        draw.rectangle((x1, ty, x1 + right - left + 2, ty + bottom - top + 2), fill=colour)
        draw.text((x1 + 1, ty - top + 1), text, fill=(0, 0, 0), font=font)
    return canvas


def overview_picture(prediction, threshold: float):
    """The prediction's overview (see :class:`~.step3_prefetch.Overview`) with its detections."""
    overview = prediction.overview
    return draw_detections(overview.image, prediction.boxes, prediction.scores, prediction.labels,
                           prediction.class_names, threshold, scale=1.0 / overview.step)


def _crs_member(crs: str | None) -> dict | None:
    if crs is None:
        return None
    authority, code = crs.split(":")
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:{authority}::{code}"}}


def features(prediction, threshold: float, image_id: int | None = None) -> list[dict]:
    """GeoJSON features of one georeferenced prediction's detections scoring ``>= threshold``."""
    keep = prediction.scores >= threshold
    polygons = prediction.geo.box_polygons(prediction.boxes[keep])
    out = []
    for polygon, box, score, label in zip(polygons, prediction.boxes[keep], prediction.scores[keep],
                                          prediction.labels[keep]):
        name = prediction.class_names[label - 1] if 0 < label <= len(prediction.class_names) else str(int(label))
        properties = {"class": name, "label": int(label), "score": round(float(score), 6),
                      "pixel_box": [round(float(v), 3) for v in box]}
        if prediction.path is not None:
            properties["image"] = str(prediction.path)
        if image_id is not None:
            properties["image_id"] = image_id
        out.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [polygon.tolist()]},
                    "properties": properties})
    return out


def geojson(predictions: Sequence, threshold: float, first_id: int = 0) -> dict:
    """A FeatureCollection of georeferenced predictions that share one CRS (image ids from
    ``first_id``)."""
    return _collection(list(enumerate(predictions, first_id)), threshold)


def write_outputs(out: str | Path, predictions: Sequence, threshold: float, pictures: bool = True) -> Path:
    """All outputs of the module docstring for ``predictions`` (image ids in their order)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, images = [], []
    for image_id, p in enumerate(predictions):
        entry = {"id": image_id, "file_name": str(p.path) if p.path is not None else f"image{image_id}",
                 "width": p.width, "height": p.height}
        if p.geo is not None:
            entry.update({"transform": list(p.geo.transform), "crs": p.geo.crs})
        images.append(entry)
        for box, score, label in zip(p.boxes, p.scores, p.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": image_id, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
        if pictures and p.overview is not None:
            overview_picture(p, threshold).save(out / f"{_stem(p, image_id)}.png")
    (out / "detections.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps(images, indent=1))
    names = predictions[0].class_names if predictions else ()
    (out / "categories.json").write_text(json.dumps([{"id": i + 1, "name": n} for i, n in enumerate(names)]))
    geo = [(i, p) for i, p in enumerate(predictions) if p.geo is not None]
    if len({p.geo.crs for _, p in geo}) == 1:
        (out / "detections.geojson").write_text(json.dumps(_collection(geo, threshold)))
    else:
        for i, p in geo:
            (out / f"{_stem(p, i)}.geojson").write_text(json.dumps(geojson([p], threshold, i)))
    return out


def _collection(geo: Sequence[tuple[int, object]], threshold: float) -> dict:
    crs = {p.geo.crs for _, p in geo}
    if len(crs) > 1:
        raise ValueError(f"one GeoJSON file cannot hold several CRSs ({sorted(map(str, crs))})")
    collection: dict = {"type": "FeatureCollection"}
    member = _crs_member(next(iter(crs)) if crs else None)
    if member:
        collection["crs"] = member
    collection["features"] = [f for i, p in geo for f in features(p, threshold, i)]
    return collection


def _stem(prediction, image_id: int) -> str:
    return Path(prediction.path).stem if prediction.path is not None else f"image{image_id}"
