"""Inference: from an image file (or array) to detections, maps and pictures.

A gigapixel GeoTIFF flows through the steps in the order of their file names:

* ``step1_read``     -- open the file as a raster that hands out windows on demand (tifffile for
  TIFF/GeoTIFF, read tile by tile; Pillow for the rest); georeferencing, bands, nodata.
* ``step2_tiles``    -- where the tiles go (:class:`TileSpec`, :class:`TileGrid`) and the per-tile
  geometry the merge needs.
* ``step3_prefetch`` -- a reader thread reads the tiles ahead into a bounded queue.
* ``step4_batches``  -- tiles -> normalised inputs -> fixed-shape batches through a *runner*
  (the model's forward + postprocess by default; a CUDA graph or compiled module can replace it).
* ``step5_merge``    -- tile boxes -> image boxes; cut-box rule, NMS (incrementally: only what an
  unfinished neighbour can still touch stays in memory), IoS merging.
* ``step6_outputs``  -- COCO JSON, GeoJSON in the raster's CRS, a downsampled overview picture.

``stream`` drives steps 1-5 for one image; ``sharding`` shares images and tiles out over
``torchrun`` ranks; ``api`` is the user-facing :func:`mdssd.load` / :class:`Detector`.
``in_memory`` is the all-tiles-at-once path (the reference the streaming path equals),
``whole_images`` the resize-whole-image path, ``checkpoint`` model loading.
"""

from .api import Detector, Prediction, load
from .checkpoint import load_model, read_checkpoint, synthetic_shape_options, synthetic_val_options
from .in_memory import predict_source_tiled, predict_tiled
from .step2_tiles import TileGrid, TileSpec, tile_starts, tile_windows
from .step4_batches import ModelRunner
from .step5_merge import merge_ios
from .whole_images import predict, predict_images, run_batch

__all__ = ["load", "Detector", "Prediction", "load_model", "read_checkpoint", "synthetic_shape_options",
           "synthetic_val_options", "predict",
           "predict_images", "run_batch", "TileSpec", "TileGrid", "tile_starts", "tile_windows",
           "predict_tiled", "predict_source_tiled", "merge_ios", "ModelRunner"]
