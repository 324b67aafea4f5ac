"""Step 2: where the tiles go (``--tile N --tile-overlap F``), and the per-tile geometry the merge
of step 5 needs.

Geometry (:func:`tile_starts`): along a side of length ``L`` the tiles start at ``n`` evenly
spread integer positions from 0 to ``L - N``, with ``n`` the fewest for which neighbours overlap
by at least ``F * N`` pixels; so the last tile ends exactly on the border and the actual overlap
is ``>= F``. A side shorter than ``N`` gets one tile, padded with the mean colour (0 after
normalisation) past the border, as crop training pads (:mod:`mdssd.data.crop`). Tiles are
resized from ``N`` to the model's input side (nothing to do when ``N`` is that side: native
resolution). Optionally one more pass sees the whole image resized (``full_image``), for objects
larger than a tile. Tiles are visited in row-major order (:class:`TileGrid`), the order in
which the streaming merge can settle the rows above the ones being read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

__all__ = ["TileSpec", "TileGrid", "tile_starts", "tile_windows", "TilePlan", "plan_tiles"]

MERGES = ("nms", "ios")


@dataclass(frozen=True)
class TileSpec:
    """How to slice: tile side ``size`` (image pixels), ``overlap`` (fraction of a tile),
    ``full_image`` (one extra resized whole-image pass), the ``merge`` rule and its thresholds,
    ``edge_margin`` (pixels of a tile within which a box counts as touching its edge),
    ``batch_size`` (tiles per forward) and ``max_detections`` per image (best scores)."""

    size: int
    overlap: float = 0.25
    full_image: bool = False
    merge: str = "nms"
    merge_iou: float = 0.5
    merge_ios: float = 0.5
    edge_margin: float = 2.0
    batch_size: int = 32
    max_detections: int = 1000

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 8:
            raise ValueError(f"tile size must be an integer >= 8 pixels, got {self.size}")
        if not 0 <= self.overlap < 1 or self.size * (1 - self.overlap) < 2:
            raise ValueError(f"tile overlap must be in [0, 1) and leave a step of at least 2 pixels, got "
                             f"{self.overlap} for {self.size} px tiles")
        if self.merge not in MERGES:
            raise ValueError(f"tile merge must be one of {MERGES}, got {self.merge!r}")
        if self.batch_size < 1 or self.max_detections < 1:
            raise ValueError("tile batch_size and max_detections must be >= 1")


@lru_cache(maxsize=256)
def _starts(length: int, tile: int, overlap: float) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    step = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / step - 1e-9) + 1
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Integer start positions of the tiles along one side (see the module docstring)."""
    return list(_starts(int(length), int(tile), float(overlap)))


def tile_windows(width: int, height: int, tile: int, overlap: float) -> np.ndarray:
    """``[T,4]`` int64 tile windows ``x1, y1, x1 + tile, y1 + tile`` in row-major order (may
    extend past a side shorter than ``tile``)."""
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    return np.array([[x, y, x + tile, y + tile] for y in ys for x in xs], dtype=np.int64).reshape(-1, 4)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one ``width x height`` image: tile ``t`` is column ``t % nx``, row ``t // nx``."""

    width: int
    height: int
    spec: TileSpec

    @property
    def xs(self) -> list[int]:
        return tile_starts(self.width, self.spec.size, self.spec.overlap)

    @property
    def ys(self) -> list[int]:
        return tile_starts(self.height, self.spec.size, self.spec.overlap)

    @property
    def nx(self) -> int:
        return len(self.xs)

    @property
    def ny(self) -> int:
        return len(self.ys)

    def __len__(self) -> int:
        return self.nx * self.ny

    def window(self, t: int) -> tuple[int, int, int, int]:
        """Tile ``t``'s window ``x1, y1, x2, y2`` (may extend past a short side)."""
        x, y = self.xs[t % self.nx], self.ys[t // self.nx]
        return x, y, x + self.spec.size, y + self.spec.size

    def rows(self, first: int, stop: int) -> range:
        """Tile indices of grid rows ``first .. stop - 1``."""
        return range(first * self.nx, min(stop, self.ny) * self.nx)


@dataclass
class TilePlan:
    """Host-side geometry of a batch of model inputs: every row is one input (a tile, or the
    whole-image pass), with what the cut-box rule of step 5 needs to know about its image's grid."""

    windows: torch.Tensor  # [T,4] float: the input's extent in image pixels
    image: torch.Tensor  # [T] int64: which image of the batch
    cut_edges: torch.Tensor  # [T,4] bool: left/top/right/bottom edge lies inside the image
    grid_x: torch.Tensor  # [T,NX] float: tile starts along x of the row's image (padded)
    grid_y: torch.Tensor  # [T,NY]
    grid_x_valid: torch.Tensor  # [T,NX] bool
    grid_y_valid: torch.Tensor  # [T,NY]
    own_x: torch.Tensor  # [T] int64: the row's column in its grid (-1: full-image pass)
    own_y: torch.Tensor  # [T]
    sizes: torch.Tensor  # [T,2] float: image width, height


def plan_tiles(rows: Sequence[tuple[int, int, int, int, int]], spec: TileSpec, device) -> TilePlan:
    """The :class:`TilePlan` of ``rows`` = ``(image, width, height, column, row)`` (column and
    row ``-1``: the whole-image pass). A row's plan depends on that row alone, so a batch of a
    few tiles (streaming) and all tiles at once (in memory) see the same geometry."""
    out: dict[str, list] = {k: [] for k in ("windows", "image", "cut", "gx", "gy", "gxv", "gyv", "ox", "oy", "size")}
    grids = [(tile_starts(w, spec.size, spec.overlap), tile_starts(h, spec.size, spec.overlap))
             for _, w, h, _, _ in rows]
    nx = max((len(xs) for xs, _ in grids), default=1)
    ny = max((len(ys) for _, ys in grids), default=1)
    for (b, width, height, i, j), (xs, ys) in zip(rows, grids):
        if i < 0:
            out["windows"].append([0, 0, width, height])
            out["cut"].append([False] * 4)
        else:
            x, y = xs[i], ys[j]
            out["windows"].append([x, y, x + spec.size, y + spec.size])
            out["cut"].append([x > 0, y > 0, x + spec.size < width, y + spec.size < height])
        out["ox"].append(i)
        out["oy"].append(j)
        out["image"].append(b)
        out["gx"].append(xs + [0] * (nx - len(xs)))
        out["gy"].append(ys + [0] * (ny - len(ys)))
        out["size"].append([width, height])
        out["gxv"].append([k < len(xs) for k in range(nx)])
        out["gyv"].append([k < len(ys) for k in range(ny)])

    def t(key, dtype, shape):
        return torch.tensor(out[key], dtype=dtype, device=device).reshape(-1, *shape)

    return TilePlan(t("windows", torch.float32, (4,)), t("image", torch.int64, ()), t("cut", torch.bool, (4,)),
                    t("gx", torch.float32, (nx,)), t("gy", torch.float32, (ny,)), t("gxv", torch.bool, (nx,)),
                    t("gyv", torch.bool, (ny,)), t("ox", torch.int64, ()), t("oy", torch.int64, ()),
                    t("size", torch.float32, (2,)))


def image_rows(b: int, width: int, height: int, spec: TileSpec) -> list[tuple[int, int, int, int, int]]:
    """:func:`plan_tiles` rows of every tile of one image (row-major), then its whole-image pass."""
    grid = TileGrid(width, height, spec)
    rows = [(b, width, height, t % grid.nx, t // grid.nx) for t in range(len(grid))]
    return rows + ([(b, width, height, -1, -1)] if spec.full_image else [])
