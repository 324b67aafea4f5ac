"""Many images over many processes (``torchrun --nproc-per-node N -m mdssd.detect DIR ...``).

Work is shared out by tile rows: an image with at least as many tile rows as there are ranks is
cut into contiguous bands of rows, one per rank (so one huge image keeps every rank busy); smaller
images go whole to one rank each, in turn. Each rank streams its parts (:func:`~.stream.
detect_raster` with ``rows``), hands back its settled survivors and the detections other bands can
still touch; rank 0 merges them (:func:`~.stream.merge_parts`) into exactly what one process finds,
and writes the outputs. Without a process group this is a plain loop over the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import distributed
from .step1_read import RasterError, probe_size
from .step2_tiles import TileGrid, TileSpec

__all__ = ["assign", "predict_files"]


def assign(sizes: Sequence[tuple[int, int] | None], spec: TileSpec | None, world: int) -> list[list[tuple]]:
    """Per rank, its jobs ``(image index, (first row, stop row) or None)`` (None: the whole
    image). Images of unknown size (unreadable: the rank reports them) go whole to rank
    ``index % world``."""
    jobs: list[list[tuple]] = [[] for _ in range(world)]
    turn = 0
    for index, size in enumerate(sizes):
        if spec is None or size is None:
            jobs[index % world].append((index, None))
            continue
        rows = TileGrid(size[0], size[1], spec).ny
        if rows >= world > 1:
            bounds = [round(r * rows / world) for r in range(world + 1)]
            for rank in range(world):
                jobs[rank].append((index, (bounds[rank], bounds[rank + 1])))
        else:
            jobs[turn % world].append((index, None))
            turn += 1
    return jobs


def predict_files(detector, files: Sequence[Path], spec: TileSpec | None, *, bands=None, value_range=None,
                  overview_side: int | None = None, progress: bool = False):
    """Per file a :class:`~.api.Prediction` or a :class:`RasterError` (in file order) on rank 0;
    None on the other ranks."""
    from .api import Prediction
    from .stream import detect_raster, merge_parts

    info = distributed.info()
    sizes = []
    for file in files:
        try:
            sizes.append(probe_size(file) if info.enabled else None)
        except RasterError:
            sizes.append(None)
    mine = assign(sizes, spec, info.world_size)[info.rank]
    results = []
    for index, rows in mine:
        file = files[index]
        try:
            if rows is None:
                outcome = detector.predict(file, spec=spec, bands=bands, value_range=value_range,
                                           overview_side=overview_side, progress=progress)
            else:
                with detector.open(file, bands, value_range, allow_large=True) as raster:
                    outcome = (detect_raster(detector.model, raster, spec, runner=detector.runner, rows=rows,
                                             full_image_pass=rows[0] == 0, overview_side=overview_side,
                                             progress=progress, label=file.name), raster.geo)
        except RasterError as error:
            outcome = error
        results.append((index, outcome))
    gathered = distributed.all_gather_object(results)
    if not info.is_main:
        return None
    by_image: dict[int, list] = {}
    for part in (p for rank in gathered for p in rank):
        by_image.setdefault(part[0], []).append(part[1])
    out = []
    for index, file in enumerate(files):
        parts = by_image.get(index, [])
        errors = [p for p in parts if isinstance(p, RasterError)]
        if errors:
            out.append(errors[0])
        elif len(parts) == 1 and isinstance(parts[0], Prediction):
            out.append(parts[0])
        else:
            geo = parts[0][1]
            streamed = [p[0] for p in parts]
            merged = streamed[0] if len(streamed) == 1 and streamed[0].detections is not None else \
                merge_parts(streamed, spec)
            det = merged.detections
            out.append(Prediction(det.boxes, det.scores, det.labels, detector.class_names, merged.width,
                                  merged.height, str(file), geo, merged.overview,
                                  {"tiles": merged.tiles, "skipped_tiles": merged.skipped, "seconds": merged.seconds,
                                   "megapixels_per_second": merged.megapixels_per_second,
                                   "nms_survivors": merged.settled, "processes": info.world_size,
                                   "dropped_by_max_detections": max(0, merged.settled - spec.max_detections)}))
    return out
