"""Steps 1-5 for one image: a raster's tiles through the model, merged as they come.

Memory: the reader's queue (``prefetch`` tiles), one batch of inputs on the device, the pending
detections of about one row of tiles (:class:`~.step5_merge.IncrementalMerge`) and the best
``max_detections``: nothing grows with the image. The result equals
:func:`~.in_memory.predict_tiled` on the same image (same survivors, same order).

For ``torchrun`` (:mod:`.sharding`) a process may read a band of tile rows only: detections that
tiles of other bands can touch are then handed back unsettled in :class:`StreamResult`, for the
process that merges. With ``spec.full_image`` the whole-image pass runs in one part and can touch
any box, so the other parts hand back all their detections unsettled (the pass decodes the whole
image anyway: it is refused above 2^28 pixels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics import Detections
from .step1_read import Raster, RasterError
from .step2_tiles import TileGrid, TileSpec, plan_tiles
from .step3_prefetch import Overview, prefetch_tiles
from .step4_batches import Runner, as_runner, tile_inputs, whole_image_input
from .step5_merge import IncrementalMerge, cut_duplicates, image_boxes

__all__ = ["StreamResult", "detect_raster", "merge_parts", "predict_source_streamed"]

_FULL_IMAGE_LIMIT = 1 << 28  # pixels: the whole-image pass decodes the whole image


@dataclass
class StreamResult:
    width: int
    height: int
    tiles: int  # tiles run through the model
    skipped: int  # all-nodata tiles not run
    seconds: float
    detections: Detections | None = None  # None for a part (rows of a sharded image)
    overview: Overview | None = None
    kept: tuple = field(default=(), repr=False)  # a part's settled survivors (boxes, scores, labels, keys)
    pending: tuple = field(default=(), repr=False)  # a part's unsettled detections
    settled: int = 0  # NMS survivors before the max_detections cut

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)


def _open_mask(grid: TileGrid, lo: int, hi: int, whole_image_elsewhere: bool = False):
    """``boxes -> bool``: touches a tile outside the processed row-major range ``[lo, hi)``
    (``lo`` at a row start), or anything at all when another process runs the whole-image pass."""
    xs, ys, nx, size = grid.xs, grid.ys, grid.nx, grid.spec.size

    def mask(boxes: np.ndarray) -> np.ndarray:
        if whole_image_elsewhere:
            return np.ones(len(boxes), bool)
        out = np.zeros(len(boxes), bool)
        if lo > 0:  # rows above: another process's
            out |= boxes[:, 1] <= ys[lo // nx - 1] + size
        if hi < len(grid):
            row, col = divmod(hi, nx)
            out |= (boxes[:, 2] >= xs[col]) & (boxes[:, 3] >= ys[row]) & (boxes[:, 1] <= ys[row] + size)
            if row + 1 < grid.ny:
                out |= boxes[:, 3] >= ys[row + 1]
        return out

    return mask


@torch.no_grad()
def detect_raster(model, raster: Raster, spec: TileSpec, runner: Runner | None = None, device=None,
                  rows: tuple[int, int] | None = None, full_image_pass: bool = True, prefetch: int = 64,
                  overview_side: int | None = None, progress: bool = False, label: str = "") -> StreamResult:
    """Sliced detection of ``raster``, streamed (module docstring). ``rows = (first, stop)``: only
    those tile rows (a part for :func:`merge_parts`); ``full_image_pass``: run ``spec.full_image``'s
    pass here (one part only); ``overview_side``: also keep an overview picture of at most that
    side; ``progress``: a progress bar (tiles, megapixels per second)."""
    from tqdm import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    runner = runner or as_runner(model)
    side = model.config.image_size
    grid = TileGrid(raster.width, raster.height, spec)
    first, stop = rows if rows is not None else (0, grid.ny)
    indices = grid.rows(first, stop)
    lo, hi = indices.start, indices.stop
    partial = lo > 0 or hi < len(grid)
    elsewhere = spec.full_image and not full_image_pass  # its boxes can touch any of ours
    merge = IncrementalMerge(spec)
    overview = Overview(raster.width, raster.height, overview_side) if overview_side else None
    width_k = None  # detections per tile of the runner's fixed-shape output
    start = time.perf_counter()
    tiles = skipped = 0

    def add(boxes01, scores, labels, plan_rows, keys_from):
        nonlocal width_k
        width_k = boxes01.shape[1]
        plan = plan_tiles(plan_rows, spec, device)
        boxes = image_boxes(boxes01, plan)
        keep = (labels >= 0) & ~cut_duplicates(boxes, plan, spec)
        keys = torch.as_tensor(keys_from, dtype=torch.int64, device=device)[:, None] * width_k + \
            torch.arange(width_k, device=device)
        merge.add(boxes[keep].cpu().numpy(), scores[keep].float().cpu().numpy(), labels[keep].cpu().numpy(),
                  keys[keep].cpu().numpy())

    if spec.full_image and full_image_pass:
        if raster.width * raster.height > _FULL_IMAGE_LIMIT:
            raise RasterError(raster.path, f"--tile-full-image needs the whole {raster.width}x{raster.height} image "
                                           "in memory; drop it for an image this large")
        whole, _ = raster.read(0, 0, raster.width, raster.height)
        inputs = whole_image_input(torch.from_numpy(np.ascontiguousarray(whole)).to(device), side)
        batch = torch.cat([inputs, inputs.new_zeros(spec.batch_size - 1, *inputs.shape[1:])])
        out = [t[:1] for t in runner(batch)]
        add(out[0], out[1], out[2], [(0, raster.width, raster.height, -1, -1)], [len(grid)])

    bar = tqdm(total=len(indices), unit="tile", disable=not progress, desc=label or None, leave=False)
    batch: list = []
    settled_row = lo // grid.nx
    reads = prefetch_tiles(raster, grid, indices, depth=prefetch, overview=overview)
    try:
        for count, tile in enumerate(reads, 1):
            if tile.skip:
                skipped += 1
            else:
                batch.append(tile)
            last = count == len(indices)
            if len(batch) == spec.batch_size or (last and batch):
                pixels = [torch.from_numpy(t.pixels).to(device, non_blocking=True) for t in batch]
                inputs = tile_inputs(pixels, spec.size, side)
                if len(batch) < spec.batch_size:
                    inputs = torch.cat([inputs, inputs.new_zeros(spec.batch_size - len(batch), *inputs.shape[1:])])
                boxes01, scores, labels, _ = (t[:len(batch)] for t in runner(inputs))
                plan_rows = [(0, raster.width, raster.height, t.index % grid.nx, t.index // grid.nx) for t in batch]
                add(boxes01, scores, labels, plan_rows, [t.index for t in batch])
                tiles += len(batch)
                batch = []
            if not batch:  # everything read so far has been through the model
                done = lo + count
                if done // grid.nx > settled_row or last:
                    settled_row = done // grid.nx
                    merge.settle(_open_mask(grid, lo, done, elsewhere))
            bar.update(1)
            if count % 64 == 0 or last:
                elapsed = time.perf_counter() - start
                megapixels = raster.width * raster.height / 1e6 * count / len(indices)
                bar.set_postfix_str(f"{megapixels / max(elapsed, 1e-9):.2f} MP/s", refresh=False)
    finally:
        reads.close()
        bar.close()
    seconds = time.perf_counter() - start
    result = StreamResult(raster.width, raster.height, tiles, skipped, seconds, overview=overview)
    if partial:
        merge.settle(_open_mask(grid, lo, hi, elsewhere))
        result.kept, result.pending, result.settled = merge.kept, merge.take_pending(), merge.settled_total
        return result
    merge.settle(lambda boxes: np.zeros(len(boxes), bool))
    result.detections, result.settled = merge.result(), merge.settled_total
    return result


def merge_parts(parts: list[StreamResult], spec: TileSpec) -> StreamResult:
    """One image's result from the parts of its tile rows (:func:`detect_raster` with ``rows``)."""
    merge = IncrementalMerge(spec)
    for part in parts:
        if len(part.kept):
            merge.add_kept(*part.kept)
        if len(part.pending):
            merge.add(*part.pending)
    merge.settled_total = sum(p.settled for p in parts)
    merge.settle(lambda boxes: np.zeros(len(boxes), bool))
    overview = None
    for part in parts:
        if part.overview is not None:
            if overview is None:
                overview = part.overview
            else:
                overview.merge(part.overview)
    first = parts[0]
    return StreamResult(first.width, first.height, sum(p.tiles for p in parts), sum(p.skipped for p in parts),
                        max(p.seconds for p in parts), merge.result(), overview, settled=merge.settled_total)


def predict_source_streamed(model, source, spec: TileSpec, indices=None, runner: Runner | None = None,
                            progress: bool = False) -> list[Detections]:
    """:func:`detect_raster` over images of a :class:`~mdssd.data.base.DetectionSource` (all, or
    ``indices``), in order: image files are streamed from disk when the source names them
    (TIFFs tile by tile, other formats decoded once without Pillow's pixel limit), else read
    through ``source.image``. Equal to :func:`~.in_memory.predict_source_tiled`."""
    from .step1_read import ArrayRaster, open_raster

    paths = getattr(source, "_image_paths", None)
    out = []
    for index in (range(len(source)) if indices is None else indices):
        ann = source.annotation(index)
        if paths is not None:
            raster = open_raster(paths[index], allow_large=True)
            if (raster.width, raster.height) != (ann.width, ann.height):
                raster.close()
                raise RasterError(paths[index], f"image is {raster.width}x{raster.height} but the annotation says "
                                                f"{ann.width}x{ann.height}")
        else:
            raster = ArrayRaster(source.image(index))
        with raster:
            out.append(detect_raster(model, raster, spec, runner=runner, progress=progress,
                                     label=str(ann.file_name)).detections)
    return out
