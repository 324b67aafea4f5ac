"""Sliced detection of decoded images held in memory, all tiles of a batch of images at once.

The reference for the streaming path (:mod:`.stream`, which gives identical results with memory
bounded by a row of tiles), and the fastest way for many small images on a GPU: the images of a
batch are uploaded once, tiles are gathered by index tensors, run through the model in fixed-shape
chunks, mapped to image pixels and merged; the only host syncs are one per batch of images
(compacting the surviving detections) and the final copy of the results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import Detections
from .step2_tiles import TilePlan, TileSpec, image_rows, plan_tiles, tile_starts
from .step4_batches import as_runner, normalise, resize_inputs, run_fixed_batches, whole_image_input
from .step5_merge import cut_duplicates, finish, image_boxes

__all__ = ["predict_tiled", "predict_source_tiled"]


def _inputs(images: Sequence[torch.Tensor], plan: TilePlan, spec: TileSpec, side: int) -> torch.Tensor:
    """``[T,3,side,side]`` model inputs of the plan's rows (device ops only)."""
    out = []
    arange = torch.arange(spec.size, device=plan.windows.device)
    for image in images:
        height, width = image.shape[:2]
        xs, ys = tile_starts(width, spec.size, spec.overlap), tile_starts(height, spec.size, spec.overlap)
        right, bottom = max(0, xs[-1] + spec.size - width), max(0, ys[-1] + spec.size - height)
        padded = F.pad(normalise(image), (0, right, 0, bottom))
        rows = torch.tensor(ys, device=arange.device)[:, None] + arange  # [ny,N]
        cols = torch.tensor(xs, device=arange.device)[:, None] + arange  # [nx,N]
        tiles = padded[:, rows[:, None, :, None], cols[None, :, None, :]]  # [3,ny,nx,N,N]
        out.append(resize_inputs(tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, spec.size, spec.size), spec.size, side))
        if spec.full_image:
            out.append(whole_image_input(image, side))
    return torch.cat(out)


@torch.no_grad()
def predict_tiled(model, images: Sequence[np.ndarray], spec: TileSpec, device=None, runner=None) -> list[Detections]:
    """Sliced detections for ``uint8 [H,W,3]`` images, in pixels of each image. ``runner``: see
    :mod:`.step4_batches` (default: the model's forward and postprocess)."""
    from ..ops import batched_nms

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not len(images):
        return []
    sizes = [(int(image.shape[1]), int(image.shape[0])) for image in images]
    plan = plan_tiles([row for b, (w, h) in enumerate(sizes) for row in image_rows(b, w, h, spec)], spec, device)
    uploaded = [torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(device, non_blocking=True) for image in images]
    model.eval()
    inputs = _inputs(uploaded, plan, spec, model.config.image_size)
    boxes01, scores, labels, _ = run_fixed_batches(runner or as_runner(model), inputs, spec.batch_size)
    boxes = image_boxes(boxes01, plan)
    keep = (labels >= 0) & ~cut_duplicates(boxes, plan, spec)
    image_index = plan.image[:, None].expand_as(labels)
    num_classes = model.config.num_classes
    # One host sync for the batch: compact the survivors, then one NMS over all images.
    boxes, scores, labels, image_index = boxes[keep], scores[keep].float(), labels[keep], image_index[keep]
    kept = batched_nms(boxes.contiguous(), scores.contiguous(), image_index * num_classes + labels, spec.merge_iou)
    boxes, scores, labels, image_index = (t[kept].cpu().numpy() for t in (boxes, scores, labels, image_index))
    # kept indices are in rank order: best scores first
    return [finish(boxes[image_index == b], scores[image_index == b], labels[image_index == b], spec)
            for b in range(len(images))]


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
