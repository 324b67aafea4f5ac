"""The Python API: ``mdssd.load(weights)`` -> :class:`Detector`.

::

    import mdssd
    detector = mdssd.load("runs/mdssd_tiny/best.pt", device="cpu")
    found = detector.predict("scene.tif", tile=512, overlap=0.2)    # or a path, array, PIL image
    found.boxes, found.scores, found.labels, found.names            # pixels; names per detection
    found.map_polygons, found.crs                                   # georeferenced inputs
    detector.predict_file("ortho.tif", out="out/", tile=512)        # JSON, GeoJSON, overview PNG

Without ``tile`` the whole image is resized to the model's input; with it the image is streamed
tile by tile (:mod:`.stream`): a tiled TIFF of any size in bounded memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .step1_read import ArrayRaster, GeoReference, Raster, RasterError, open_raster
from .step2_tiles import TileSpec
from .step3_prefetch import Overview

__all__ = ["Prediction", "Detector", "load", "default_class_names"]

DEFAULT_OVERVIEW_SIDE = 2048


@dataclass
class Prediction:
    """Detections of one image: ``boxes [n,4]`` xyxy pixels, ``scores [n]``, ``labels [n]``
    (1-based, ``class_names[label - 1]``), best first; ``geo`` for georeferenced inputs."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    width: int
    height: int
    path: str | None = None
    geo: GeoReference | None = None
    overview: Overview | None = field(default=None, repr=False)
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The class name of every detection."""
        return [self.class_names[int(label) - 1] for label in self.labels]

    @property
    def crs(self) -> str | None:
        return self.geo.crs if self.geo is not None else None

    @property
    def map_polygons(self) -> np.ndarray | None:
        """``[n,5,2]`` closed polygons in the raster's CRS (None for plain images)."""
        return self.geo.box_polygons(self.boxes) if self.geo is not None else None

    def to_geojson(self, threshold: float = 0.0) -> dict:
        from .step6_outputs import geojson

        if self.geo is None:
            raise ValueError(f"{self.path or 'image'}: not georeferenced, no GeoJSON (boxes are in pixels)")
        return geojson([self], threshold)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """The synthetic set's names when the count fits, else ``class1..``."""
    from ..data.synthetic import SIGN_CLASSES

    k = num_classes - 1
    return SIGN_CLASSES if k == len(SIGN_CLASSES) else tuple(f"class{i}" for i in range(1, k + 1))


class Detector:
    """A loaded model with its class names; see the module docstring. ``runner``: replaces the
    model's forward + postprocess on fixed-shape batches (:mod:`.step4_batches`), e.g. a CUDA
    graph or a compiled module."""

    def __init__(self, model, class_names: Sequence[str] | None = None, runner=None):
        self.model = model.eval()
        self.class_names = tuple(class_names) if class_names else default_class_names(model.config.num_classes)
        if len(self.class_names) != model.config.num_classes - 1:
            raise ValueError(f"{len(self.class_names)} class names for a model with "
                             f"{model.config.num_classes - 1} classes")
        self.runner = runner

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def open(self, source, bands=None, value_range=None, allow_large: bool = False) -> Raster:
        """A raster of a path, an ``uint8`` array (``[H,W,3]`` or grey ``[H,W]``) or a PIL image."""
        if isinstance(source, Raster):
            return source
        if isinstance(source, (str, Path)):
            return open_raster(source, bands, value_range, allow_large)
        if hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
            source = np.asarray(source.convert("RGB"))
        array = np.asarray(source)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.dtype != np.uint8:
            raise RasterError("array", f"expected uint8 pixels, got {array.dtype} (scale them to 0-255 first)")
        return ArrayRaster(np.ascontiguousarray(array))

    def predict(self, source, tile: int | None = None, overlap: float = 0.25, *, full_image: bool = False,
                merge: str = "nms", batch_size: int = 32, max_detections: int = 1000, bands=None,
                value_range=None, overview_side: int | None = None, progress: bool = False,
                spec: TileSpec | None = None) -> Prediction:
        """Detections of one image (path, array, PIL image or raster). ``tile``: side of the
        square tiles in image pixels (streamed, merged across tiles); None: the whole image resized.
        ``overview_side``: also keep a downsampled picture for :meth:`predict_file`'s PNG."""
        from .stream import detect_raster
        from .whole_images import predict_images

        spec = spec or (TileSpec(tile, overlap, full_image=full_image, merge=merge, batch_size=batch_size,
                                 max_detections=max_detections) if tile else None)
        raster = self.open(source, bands, value_range, allow_large=spec is not None)
        path = str(raster.path) if raster.path is not None else None
        try:
            if spec is not None:
                result = detect_raster(self.model, raster, spec, runner=self.runner, overview_side=overview_side,
                                       progress=progress, label=Path(path).name if path else "")
                det, overview = result.detections, result.overview
                stats = {"tiles": result.tiles, "skipped_tiles": result.skipped, "seconds": result.seconds,
                         "megapixels_per_second": result.megapixels_per_second, "nms_survivors": result.settled,
                         "dropped_by_max_detections": max(0, result.settled - spec.max_detections)}
            else:
                _check_whole_image(raster)
                start = time.perf_counter()
                image, _ = raster.read(0, 0, raster.width, raster.height)
                det = predict_images(self.model, [image])[0]
                overview = None
                if overview_side:
                    overview = Overview(raster.width, raster.height, overview_side)
                    overview.add(0, 0, image)
                stats = {"seconds": time.perf_counter() - start}
        finally:
            if raster is not source:
                raster.close()
        return Prediction(det.boxes, det.scores, det.labels, self.class_names, raster.width, raster.height, path,
                          raster.geo, overview, stats)

    def predict_file(self, path, out, tile: int | None = None, overlap: float = 0.25, threshold: float = 0.3,
                     overview_side: int = DEFAULT_OVERVIEW_SIDE, **options) -> Prediction:
        """:meth:`predict` on one file, then writes ``out/`` (:mod:`.step6_outputs`): JSON, GeoJSON
        for georeferenced inputs, the overview PNG; ``threshold``: smallest score drawn and put in
        the GeoJSON (the JSON has every detection)."""
        from .step6_outputs import write_outputs

        prediction = self.predict(path, tile, overlap, overview_side=overview_side, **options)
        write_outputs(out, [prediction], threshold)
        return prediction


def _check_whole_image(raster: Raster) -> None:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and raster.width * raster.height > limit:
        raise RasterError(raster.path or "image", f"{raster.width}x{raster.height} px "
                          f"({raster.megapixels:.0f} megapixels) is too large to resize whole to the model's input: "
                          "pass tile=N (--tile N) to detect it in tiles")


def load(weights, device: str | torch.device | None = None, backend: str = "ext",
         class_names: Sequence[str] | None = None, runner=None) -> Detector:
    """A :class:`Detector` from a checkpoint mdssd wrote (``device``: default CUDA when available)."""
    from .checkpoint import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, names = load_model(weights, backend=backend, device=device)
    return Detector(model, class_names or names, runner)
