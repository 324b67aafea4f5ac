"""Sliced inference, kept importable under its old name: it now lives in :mod:`mdssd.inference`
(tile geometry in ``step2_tiles``, merging in ``step5_merge``, the in-memory path in
``in_memory``, the streaming path in ``stream``)."""

from .inference.in_memory import predict_source_tiled, predict_tiled
from .inference.step2_tiles import MERGES, TileSpec, tile_starts, tile_windows
from .inference.step5_merge import merge_ios

__all__ = ["TileSpec", "tile_starts", "tile_windows", "predict_tiled", "predict_source_tiled", "merge_ios", "MERGES"]
