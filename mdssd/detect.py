"""``python -m mdssd.detect IMAGE_OR_DIR --weights CKPT --out DIR [--tile N --tile-overlap F]``.

A thin layer over the Python API (:func:`mdssd.load`, :mod:`mdssd.inference`). Writes
``DIR/detections.json`` (every detection, COCO results format: ``image_id``, ``category_id`` =
label, ``bbox`` ``[x, y, w, h]`` pixels, ``score``), ``DIR/images.json`` (image ids -> files,
sizes, georeferencing), ``DIR/categories.json`` (category ids -> names), ``DIR/<stem>.png`` (the
image, downsampled to at most ``--overview-size`` px a side, with the detections scoring at least
``--threshold``) and, for GeoTIFFs, ``DIR/detections.geojson`` (polygons in the raster's CRS).

``--tile N --tile-overlap F``: sliced detection on N x N pixel tiles, streamed from the file in
bounded memory (:mod:`mdssd.inference.stream`); needed for images over the decoder's pixel limit.
Under ``torchrun --nproc-per-node K`` images and the tile rows of large images are shared out
over the ranks and rank 0 writes the merged outputs (:mod:`mdssd.inference.sharding`). Files of a
folder that cannot be read are named on stderr and skipped (exit status 1); a single unreadable
image is an error (status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .inference.step6_outputs import draw_detections

__all__ = ["draw_detections", "main"]

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(sorted(_EXTENSIONS))})")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


def _numbers(text: str | None, kind, what: str, count: tuple[int, ...]):
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if len(values) not in count:
        raise ValueError(f"{what}: expected {' or '.join(map(str, count))} values, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdssd.detect", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="an image or a folder of images")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3,
                        help="smallest score drawn and written to the GeoJSON (the JSON has all)")
    parser.add_argument("--classes", default=None,
                        help="class names when the checkpoint has none: comma-separated, or a YOLO data.yaml "
                             "(its names) (default: the synthetic set's names if the class count fits)")
    parser.add_argument("--batch-size", type=int, default=4, help="(kept for compatibility; tiles: --tile-batch)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default="ext", choices=("ext", "reference"))
    parser.add_argument("--bands", default=None, metavar="B[,G,R]",
                        help="TIFF bands to use, 1-based, one (grey) or three (RGB), e.g. 3,2,1 "
                             "(default: 1 band grey, 3 bands RGB, grey/RGB + alpha; others must choose)")
    parser.add_argument("--value-range", default=None, metavar="LO,HI",
                        help="16-bit / float TIFFs: values mapped to 0-255 (default: 0.5-99.5th percentile "
                             "of sampled tiles)")
    parser.add_argument("--overview-size", type=int, default=2048, metavar="PX",
                        help="longest side of the picture written per image (default 2048; 0: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .cuda_graphs import add_runner_arguments

    add_runner_arguments(parser)
    from .eval import add_tile_arguments, tile_spec_from_args

    add_tile_arguments(parser)
    args = parser.parse_args(argv)
    try:
        tile = tile_spec_from_args(args)
        bands = _numbers(args.bands, int, "--bands", (1, 3))
        value_range = _numbers(args.value_range, float, "--value-range", (2,))
    except ValueError as error:
        parser.error(str(error))

    import torch

    from . import distributed
    from .inference.api import load
    from .inference.sharding import predict_files
    from .inference.step6_outputs import write_outputs

    class_names = None
    if args.classes and args.classes.endswith((".yaml", ".yml")):
        from .data.base import AnnotationError
        from .data.yolo import read_data_yaml

        try:
            class_names = read_data_yaml(Path(args.classes))[2]
        except AnnotationError as error:
            print(f"mdssd.detect: {error}", file=sys.stderr)
            return 2
    elif args.classes:
        class_names = tuple(args.classes.split(","))
    kind = "cuda" if (args.device or "").startswith("cuda") or (args.device is None and torch.cuda.is_available()) \
        else "cpu"
    info = distributed.init(kind)
    device = args.device or kind
    if kind == "cuda" and info.enabled:
        device = f"cuda:{info.local_rank}"
    try:
        if (args.compile or args.cuda_graphs) and tile is None:
            raise ValueError("--compile and --cuda-graphs speed up tiled detection: pass --tile N")
        if args.cuda_graphs and kind != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device")
        detector = load(args.weights, device=device, backend=args.backend, class_names=class_names)
        if args.cuda_graphs or args.compile:
            from .cuda_graphs import runner_from_args

            detector.runner = runner_from_args(args, detector.model, tile.batch_size)
        files = _images(Path(args.input))
    except (FileNotFoundError, ValueError) as error:
        print(f"mdssd.detect: {error}", file=sys.stderr)
        distributed.shutdown()
        return 2
    predictions = predict_files(detector, files, tile, bands=bands, value_range=value_range,
                                overview_side=args.overview_size or None,
                                progress=not args.no_progress and info.is_main and sys.stderr.isatty())
    status = 0
    if info.is_main:
        good = []
        for file, found in zip(files, predictions):
            if isinstance(found, Exception):
                print(f"mdssd.detect: {found}", file=sys.stderr)
                status = 1
                continue
            good.append(found)
            shown = int((found.scores >= args.threshold).sum())
            extra = ""
            if found.stats.get("tiles") == 0 and found.stats.get("skipped_tiles"):
                extra = f", every tile is nodata: nothing run ({found.stats['skipped_tiles']} tiles skipped)"
            elif "tiles" in found.stats:
                extra = (f", {found.stats['tiles']} tiles ({found.stats['skipped_tiles']} nodata skipped), "
                         f"{found.stats['megapixels_per_second']:.2f} MP/s")
            if found.stats.get("dropped_by_max_detections"):
                extra += (f"; {found.stats['dropped_by_max_detections']} more dropped by --max-detections "
                          f"{args.max_detections}")
            where = f", map CRS {found.crs}" if found.geo is not None else ""
            print(f"{file}: {shown} detections >= {args.threshold} ({len(found)} in JSON){extra}{where}")
        if not good:
            status = 2
        else:
            write_outputs(Path(args.out), good, args.threshold, pictures=bool(args.overview_size))
            geo = " and GeoJSON" if any(p.geo is not None for p in good) else ""
            print(f"wrote {len(good)} images and {sum(len(p) for p in good)} detections{geo} to {args.out}")
    distributed.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
