"""Step 5: tile detections -> image detections, merged across tiles.

Per image and class:

1. **cut boxes**: a detection touching an interior edge of its tile (within ``edge_margin``
   pixels; image borders are not interior) is a truncated view when another tile of the grid
   holds the same box away from that tile's interior edges; such detections are dropped, so an
   object in the overlap band is reported from the tile that sees it whole. This depends on the
   grid only (:func:`cut_duplicates`), never on other tiles' detections.
2. ``merge="nms"`` (default): class-aware NMS at IoU ``merge_iou`` on our
   :func:`mdssd.ops.batched_nms` kernel, then the best ``max_detections``.
   ``merge="ios"``: the same, then SAHI-style greedy merging of what is left (:func:`merge_ios`):
   the best box of a class absorbs every lower one whose intersection over the smaller box is
   ``>= merge_ios`` (box: their union, score: the best). It joins pieces of objects larger than
   the overlap, which step 1 cannot recognise (every tile cuts them), at the price of merging
   neighbours that touch.

**Streaming** (:class:`IncrementalMerge`): greedy NMS decides a box from the boxes it overlaps,
so it splits over the connected components of "same class and touching" (a coarser relation
than "IoU above the threshold", hence exact). A component none of whose boxes touches a tile not
yet read cannot change any more: it is settled (NMS) and only its survivors stay, the best
``max_detections`` of them. What stays pending is what an unfinished neighbour can still touch:
about one row of tiles. Ties rank by the order the in-memory path sees the boxes in (tile, then
rank within the tile), so the result is identical to it, survivors and order.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import Detections
from .step2_tiles import TilePlan, TileSpec

__all__ = ["image_boxes", "cut_duplicates", "merge_ios", "finish", "IncrementalMerge"]


def image_boxes(boxes01: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """``[T,k,4]`` normalised tile boxes -> image pixels, clipped to the image."""
    extent = plan.windows[:, None, 2:] - plan.windows[:, None, :2]
    boxes = boxes01.float() * extent.repeat(1, 1, 2) + plan.windows[:, None, :2].repeat(1, 1, 2)
    return torch.minimum(boxes.clamp(min=0), plan.sizes[:, None, :].repeat(1, 1, 2))


def _contained(lo: torch.Tensor, hi: torch.Tensor, starts: torch.Tensor, valid: torch.Tensor, tile: int,
               sizes: torch.Tensor, margin: float) -> torch.Tensor:
    """``[T,k,n]``: the interval ``[lo, hi]`` (``[T,k]``) lies in grid tile ``n`` of its row's image
    at least ``margin`` from that tile's interior edges."""
    starts = starts[:, None, :]
    inner_lo = starts + margin * (starts > 0)
    inner_hi = starts + tile - margin * (starts + tile < sizes[:, None, None])
    return (lo[..., None] >= inner_lo) & (hi[..., None] <= inner_hi) & valid[:, None, :]


def cut_duplicates(boxes: torch.Tensor, plan: TilePlan, spec: TileSpec) -> torch.Tensor:
    """``[T,k]``: detections that are truncated views of a box another tile holds whole (rule 1)."""
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


def finish(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, spec: TileSpec) -> Detections:
    """NMS survivors in rank order -> the best ``max_detections`` (then IoS merging)."""
    det = (boxes[:spec.max_detections].astype(np.float64), scores[:spec.max_detections].astype(np.float64),
           labels[:spec.max_detections])
    if spec.merge == "ios":
        det = merge_ios(*det, spec.merge_ios)
    return Detections(*det)


def _rank(scores: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties to the lower key (the in-memory path's input order)."""
    return np.lexsort((keys, -scores.astype(np.float64)))


def touching_components(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Component id of every box in the graph "same label and the closed boxes intersect"."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    b = boxes.astype(np.float64)
    span = float(max(b[:, 2].max(), 0.0)) + 1.0
    x1 = b[:, 0] + labels * span  # sorted by (label, x1): a box's partners follow it
    order = np.argsort(x1, kind="stable")
    x1s = x1[order]
    ends = np.searchsorted(x1s, b[order, 2] + labels[order] * span, side="right")
    counts = ends - np.arange(n) - 1
    first = np.repeat(np.arange(n), counts)
    second = first + 1 + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    i, j = order[first], order[second]
    hit = (b[i, 1] <= b[j, 3]) & (b[j, 1] <= b[i, 3]) & (b[j, 0] <= b[i, 2])
    graph = coo_matrix((np.ones(int(hit.sum()), np.int8), (i[hit], j[hit])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


class IncrementalMerge:
    """Streaming NMS over the detections of one image (see the module docstring).

    ``add`` the cut-rule survivors of each batch with their keys (``tile * k + rank``), then
    ``settle(open_mask)`` whenever the tiles that remain change: ``open_mask(boxes) -> bool [n]``
    says which boxes a tile not yet read (or read by another process) can still touch."""

    def __init__(self, spec: TileSpec, device="cpu"):
        self.spec, self.device = spec, torch.device(device)
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.pending = empty
        self.kept = empty  # settled survivors: the best max_detections, by rank
        self.settled_total = 0  # survivors ever settled (before the max_detections cut)

    def add(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> None:
        self.pending = tuple(np.concatenate([a, b]) for a, b in zip(self.pending, (boxes, scores, labels, keys)))

    def settle(self, open_mask) -> None:
        boxes, scores, labels, keys = self.pending
        if len(keys) == 0:
            return
        is_open = open_mask(boxes)
        if is_open.any():
            component = touching_components(boxes, labels)
            is_open = np.isin(component, component[is_open])
        self._nms(*(a[~is_open] for a in self.pending))
        self.pending = tuple(a[is_open] for a in self.pending)

    def take_pending(self):
        """The unsettled detections (handed to the process that merges, then forgotten here)."""
        out, self.pending = self.pending, tuple(a[:0] for a in self.pending)
        return out

    def _nms(self, boxes, scores, labels, keys) -> None:
        from ..ops import batched_nms

        if len(keys) == 0:
            return
        order = np.argsort(keys, kind="stable")  # input order = the in-memory path's index order
        boxes, scores, labels, keys = boxes[order], scores[order], labels[order], keys[order]
        kept = batched_nms(torch.from_numpy(boxes).to(self.device), torch.from_numpy(scores).to(self.device),
                           torch.from_numpy(labels).to(self.device), self.spec.merge_iou).cpu().numpy()
        self.settled_total += len(kept)
        self.add_kept(boxes[kept], scores[kept], labels[kept], keys[kept])

    def add_kept(self, boxes, scores, labels, keys) -> None:
        """Settled survivors (also another process's): only the best ``max_detections`` stay."""
        merged = tuple(np.concatenate([a, b]) for a, b in zip(self.kept, (boxes, scores, labels, keys)))
        best = _rank(merged[1], merged[3])[:self.spec.max_detections]
        self.kept = tuple(a[best] for a in merged)

    def result(self) -> Detections:
        """The merged detections once everything is settled (pending must be empty)."""
        if len(self.pending[3]):
            raise RuntimeError("IncrementalMerge.result() with unsettled detections: settle(nothing open) first")
        boxes, scores, labels, _ = self.kept
        return finish(boxes, scores, labels, self.spec)
