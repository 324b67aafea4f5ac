"""Step 3: a reader thread reads tiles ahead of the model into a bounded queue.

Decoding (zlib, JPEG) and copying release the GIL, so reading the next tiles overlaps the
model's forward; the queue holds at most ``depth`` tiles, so memory stays bounded however
fast the reader is. Tiles whose window is all nodata are flagged (not run through the model).
An exception in the reader is re-raised in the consumer; closing the consumer stops the reader.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .step1_read import Raster
from .step2_tiles import TileGrid

__all__ = ["TileRead", "Overview", "prefetch_tiles"]


@dataclass
class TileRead:
    index: int  # row-major index in the grid
    pixels: np.ndarray  # uint8 [h,w,3]: the window clipped to the image
    skip: bool  # every pixel is nodata


class Overview:
    """A downsampled copy of the image, filled by the reader as windows pass (every ``step``-th
    pixel of each axis), for the overview picture (step 6); ``written`` marks filled pixels."""

    def __init__(self, width: int, height: int, max_side: int):
        self.step = max(1, -(-max(width, height) // max_side))
        self.image = np.zeros((-(-height // self.step), -(-width // self.step), 3), np.uint8)
        self.written = np.zeros(self.image.shape[:2], bool)

    def add(self, x1: int, y1: int, pixels: np.ndarray) -> None:
        s = self.step
        ox1, oy1 = -(-x1 // s), -(-y1 // s)  # first overview pixel at or after the window start
        ox2, oy2 = -(-(x1 + pixels.shape[1]) // s), -(-(y1 + pixels.shape[0]) // s)
        if ox2 > ox1 and oy2 > oy1:
            self.image[oy1:oy2, ox1:ox2] = pixels[oy1 * s - y1::s, ox1 * s - x1::s][:oy2 - oy1, :ox2 - ox1]
            self.written[oy1:oy2, ox1:ox2] = True

    def merge(self, other: "Overview") -> None:
        self.image[other.written] = other.image[other.written]
        self.written |= other.written


_DONE = object()


QUEUE_BYTES = 256 << 20  # at most this much decoded pixels waiting in the queue


def prefetch_tiles(raster: Raster, grid: TileGrid, indices: Iterable[int], depth: int = 64,
                   overview: Overview | None = None) -> Iterator[TileRead]:
    """The tiles ``indices`` (ascending) of ``grid`` read from ``raster`` by a background thread;
    at most ``depth`` tiles (and :data:`QUEUE_BYTES`) wait in the queue."""
    depth = max(2, min(depth, QUEUE_BYTES // (3 * grid.spec.size ** 2)))
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for t in indices:
                x1, y1, x2, y2 = grid.window(t)
                pixels, valid = raster.read(x1, y1, min(x2, raster.width), min(y2, raster.height))
                if overview is not None:
                    overview.add(x1, y1, pixels)
                # Own, writable, contiguous pixels (copied here, off the model's thread).
                pixels = np.require(pixels, np.uint8, ["C", "W", "O"])
                if not put(TileRead(t, pixels, valid is not None and not valid.any())):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)

    thread = threading.Thread(target=reader, name="mdssd-tile-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
