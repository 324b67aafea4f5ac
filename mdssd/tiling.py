"""Sliced inference (``--tile N --tile-overlap F``): large images cut into N x N tiles.

Geometry (:func:`tile_starts`): along a side of length ``L`` the tiles start at ``n`` evenly
spread integer positions from 0 to ``L - N``, with ``n`` the fewest for which neighbours overlap
by at least ``F * N`` pixels; so the last tile ends exactly on the border and the actual overlap
is ``>= F``. A side shorter than ``N`` gets one tile, padded with the mean colour (0 after
normalisation) past the border, as crop training pads (:mod:`mdssd.data.crop`). Tiles are
resized from ``N`` to the model's input side (nothing to do when ``N`` is that side: native
resolution). Optionally one more pass sees the whole image resized (``full_image``), for objects
larger than a tile.

On the device: the images of a batch are uploaded once, tiles are gathered by index tensors,
run through the model in chunks of a fixed ``batch_size`` (the last chunk padded), decoded by the
model's fixed-shape postprocess, mapped to image pixels and merged; the only host syncs are one
per batch of images (compacting the surviving detections) and the final copy of the results.

Merging, per image and class:

1. **cut boxes**: a detection touching an interior edge of its tile (within ``edge_margin``
   pixels; image borders are not interior) is a truncated view when another tile of the grid
   holds the same box away from that tile's interior edges; such detections are dropped, so an
   object in the overlap band is reported from the tile that sees it whole.
2. ``merge="nms"`` (default): class-aware NMS at IoU ``merge_iou`` on our
   :func:`mdssd.ops.batched_nms` kernel, all images of the batch in one call.
   ``merge="ios"``: the same NMS, then (on the best ``max_detections`` of each image) SAHI-style
   greedy merging of what is left: the best box of
   a class absorbs every lower one whose intersection over the smaller box is ``>= merge_ios``
   (box: their union, score: the best). It joins pieces of objects larger than the overlap, which
   step 1 cannot recognise (every tile cuts them), at the price of merging neighbours that touch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .metrics import Detections

__all__ = ["TileSpec", "tile_starts", "tile_windows", "predict_tiled", "predict_source_tiled", "merge_ios"]

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


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Integer start positions of the tiles along one side (see the module docstring)."""
    if length <= tile:
        return [0]
    step = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / step - 1e-9) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_windows(width: int, height: int, tile: int, overlap: float) -> np.ndarray:
    """``[T,4]`` int64 tile windows ``x1, y1, x1 + tile, y1 + tile`` in row-major order (may
    extend past a side shorter than ``tile``)."""
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    return np.array([[x, y, x + tile, y + tile] for y in ys for x in xs], dtype=np.int64).reshape(-1, 4)


def _normalise(image: torch.Tensor) -> torch.Tensor:
    """``uint8 [H,W,3]`` on the device -> normalised float32 ``[3,H,W]`` (as ``to_tensor``)."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (image.permute(2, 0, 1).float() / 255.0 - mean) / std


@dataclass
class _Plan:
    """Host-side geometry of one batch of images: every row is one model input."""

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


def _plan(sizes: Sequence[tuple[int, int]], spec: TileSpec, device) -> _Plan:
    rows: dict[str, list] = {k: [] for k in ("windows", "image", "cut", "gx", "gy", "gxv", "gyv", "ox", "oy", "size")}
    grids = [(tile_starts(w, spec.size, spec.overlap), tile_starts(h, spec.size, spec.overlap)) for w, h in sizes]
    nx = max(len(xs) for xs, _ in grids)
    ny = max(len(ys) for _, ys in grids)
    for b, ((width, height), (xs, ys)) in enumerate(zip(sizes, grids)):
        passes = [(x, y, i, j) for j, y in enumerate(ys) for i, x in enumerate(xs)]
        for x, y, i, j in passes:
            rows["windows"].append([x, y, x + spec.size, y + spec.size])
            rows["cut"].append([x > 0, y > 0, x + spec.size < width, y + spec.size < height])
            rows["ox"].append(i)
            rows["oy"].append(j)
        if spec.full_image:
            rows["windows"].append([0, 0, width, height])
            rows["cut"].append([False] * 4)
            rows["ox"].append(-1)
            rows["oy"].append(-1)
        count = len(passes) + int(spec.full_image)
        rows["image"] += [b] * count
        rows["gx"] += [xs + [0] * (nx - len(xs))] * count
        rows["gy"] += [ys + [0] * (ny - len(ys))] * count
        rows["size"] += [[width, height]] * count
        rows["gxv"] += [[k < len(xs) for k in range(nx)]] * count
        rows["gyv"] += [[k < len(ys) for k in range(ny)]] * count

    def t(key, dtype):
        return torch.tensor(rows[key], dtype=dtype, device=device)

    return _Plan(t("windows", torch.float32), t("image", torch.int64), t("cut", torch.bool), t("gx", torch.float32),
                 t("gy", torch.float32), t("gxv", torch.bool), t("gyv", torch.bool), t("ox", torch.int64),
                 t("oy", torch.int64), t("size", torch.float32))


def _inputs(images: Sequence[torch.Tensor], plan: _Plan, spec: TileSpec, side: int) -> torch.Tensor:
    """``[T,3,side,side]`` model inputs of the plan's rows (device ops only)."""
    out = []
    arange = torch.arange(spec.size, device=plan.windows.device)
    for b, image in enumerate(images):
        height, width = image.shape[:2]
        xs, ys = tile_starts(width, spec.size, spec.overlap), tile_starts(height, spec.size, spec.overlap)
        full = _normalise(image)
        padded = F.pad(full, (0, max(0, xs[-1] + spec.size - width), 0, max(0, ys[-1] + spec.size - height)))
        rows = torch.tensor(ys, device=arange.device)[:, None] + arange  # [ny,N]
        cols = torch.tensor(xs, device=arange.device)[:, None] + arange  # [nx,N]
        tiles = padded[:, rows[:, None, :, None], cols[None, :, None, :]]  # [3,ny,nx,N,N]
        tiles = tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, spec.size, spec.size)
        if spec.size != side:
            tiles = F.interpolate(tiles, size=(side, side), mode="bilinear", align_corners=False,
                                  antialias=spec.size > side)
        out.append(tiles)
        if spec.full_image:
            out.append(F.interpolate(full[None], size=(side, side), mode="bilinear", align_corners=False,
                                     antialias=True))
    return torch.cat(out)


@torch.no_grad()
def _run(model, inputs: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Model + postprocess over ``inputs`` in chunks of exactly ``batch_size`` (the last one padded
    with zero images), so every forward has the same shape."""
    parts = []
    total = inputs.shape[0]
    for start in range(0, total, batch_size):
        chunk = inputs[start:start + batch_size]
        real = chunk.shape[0]
        if real < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros(batch_size - real, *chunk.shape[1:])])
        loc, conf = model(chunk)
        out = model.postprocess(loc.float(), conf.float())
        parts.append([t[:real] for t in out])
    return tuple(torch.cat([p[k] for p in parts]) for k in range(4))


def _contained(lo: torch.Tensor, hi: torch.Tensor, starts: torch.Tensor, valid: torch.Tensor, tile: int,
               sizes: torch.Tensor, margin: float) -> torch.Tensor:
    """``[T,k,n]``: the interval ``[lo, hi]`` (``[T,k]``) lies in grid tile ``n`` of its row's image
    at least ``margin`` from that tile's interior edges."""
    starts = starts[:, None, :]
    inner_lo = starts + margin * (starts > 0)
    inner_hi = starts + tile - margin * (starts + tile < sizes[:, None, None])
    return (lo[..., None] >= inner_lo) & (hi[..., None] <= inner_hi) & valid[:, None, :]


def _cut_duplicates(boxes: torch.Tensor, plan: _Plan, spec: TileSpec) -> torch.Tensor:
    """``[T,k]``: detections that are truncated views of a box another tile holds whole (step 1 of
    the module docstring)."""
    local = boxes - plan.windows[:, None, :2].repeat(1, 1, 2)
    m = spec.edge_margin
    touches = ((local[..., 0] <= m) & plan.cut_edges[:, None, 0]) | ((local[..., 1] <= m) & plan.cut_edges[:, None, 1])
    touches |= (local[..., 2] >= spec.size - m) & plan.cut_edges[:, None, 2]
    touches |= (local[..., 3] >= spec.size - m) & plan.cut_edges[:, None, 3]
    in_x = _contained(boxes[..., 0], boxes[..., 2], plan.grid_x, plan.grid_x_valid, spec.size, plan.sizes[:, 0], m)
    in_y = _contained(boxes[..., 1], boxes[..., 3], plan.grid_y, plan.grid_y_valid, spec.size, plan.sizes[:, 1], m)
    tiles_holding = in_x.sum(-1) * in_y.sum(-1)
    own_x = in_x.gather(2, plan.own_x.clamp(min=0)[:, None, None].expand(-1, boxes.shape[1], 1))[..., 0]
    own_y = in_y.gather(2, plan.own_y.clamp(min=0)[:, None, None].expand(-1, boxes.shape[1], 1))[..., 0]
    others = tiles_holding - (own_x & own_y).long()
    return touches & (others > 0) & (plan.own_x >= 0)[:, None]


def merge_ios(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAHI-style greedy merging (see the module docstring); inputs sorted by descending score.

    Per class, in score order, each box not yet absorbed absorbs every later unabsorbed box whose
    intersection over the smaller of the two areas is ``>= threshold``; the result is their union
    box with the best score."""
    keep_boxes, keep_scores, keep_labels = [], [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        b = boxes[idx]
        area = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
        lt = np.maximum(b[:, None, :2], b[None, :, :2])
        rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        smaller = np.minimum(area[:, None], area[None, :])
        ios = np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1), 0.0)
        taken = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if taken[i]:
                continue
            group = np.flatnonzero(~taken & (ios[i] >= threshold))
            group = group[group >= i]
            taken[group] = True
            members = b[group]
            keep_boxes.append(np.concatenate([members[:, :2].min(0), members[:, 2:].max(0)]))
            keep_scores.append(scores[idx[i]])
            keep_labels.append(label)
    if not keep_boxes:
        return boxes[:0], scores[:0], labels[:0]
    order = np.argsort(-np.asarray(keep_scores), kind="stable")
    return np.stack(keep_boxes)[order], np.asarray(keep_scores)[order], np.asarray(keep_labels)[order]


@torch.no_grad()
def predict_tiled(model, images: Sequence[np.ndarray], spec: TileSpec, device=None) -> list[Detections]:
    """Sliced detections for ``uint8 [H,W,3]`` images, in pixels of each image."""
    from .ops import batched_nms

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not images:
        return []
    sizes = [(int(image.shape[1]), int(image.shape[0])) for image in images]
    plan = _plan(sizes, spec, device)
    uploaded = [torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(device, non_blocking=True) for image in images]
    model.eval()
    boxes01, scores, labels, _ = _run(model, _inputs(uploaded, plan, spec, model.config.image_size), spec.batch_size)
    extent = plan.windows[:, None, 2:] - plan.windows[:, None, :2]
    boxes = boxes01.float() * extent.repeat(1, 1, 2) + plan.windows[:, None, :2].repeat(1, 1, 2)
    boxes = torch.minimum(boxes.clamp(min=0), plan.sizes[:, None, :].repeat(1, 1, 2))
    keep = (labels >= 0) & ~_cut_duplicates(boxes, plan, spec)
    image_index = plan.image[:, None].expand_as(labels)
    num_classes = model.config.num_classes
    # One host sync for the batch: compact the survivors, then one NMS over all images.
    boxes, scores, labels, image_index = boxes[keep], scores[keep].float(), labels[keep], image_index[keep]
    kept = batched_nms(boxes.contiguous(), scores.contiguous(), image_index * num_classes + labels, spec.merge_iou)
    boxes, scores, labels, image_index = (t[kept].cpu().numpy() for t in (boxes, scores, labels, image_index))
    out = []
    for b in range(len(images)):
        mine = image_index == b  # kept indices are in rank order: best scores first
        # The best max_detections only: merge_ios is quadratic in the boxes of a class.
        det = tuple(part[mine][:spec.max_detections] for part in (boxes.astype(np.float64),
                                                                  scores.astype(np.float64), labels))
        if spec.merge == "ios":
            det = merge_ios(*det, spec.merge_ios)
        out.append(Detections(*det))
    return out


def predict_source_tiled(model, source, spec: TileSpec, indices: Sequence[int] | None = None,
                         images_per_batch: int = 2, device=None) -> list[Detections]:
    """:func:`predict_tiled` over images of a :class:`~mdssd.data.base.DetectionSource` (all, or
    ``indices``), in that order."""
    indices = list(range(len(source))) if indices is None else list(indices)
    out: list[Detections] = []
    for start in range(0, len(indices), images_per_batch):
        chunk = indices[start:start + images_per_batch]
        out += predict_tiled(model, [source.image(i) for i in chunk], spec, device)
    return out
