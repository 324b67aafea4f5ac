"""``python -m mdssd.eval --weights CKPT --dataset {synthetic,voc,coco,tt100k,yolo,visdrone,dota} [--data-root PATH]``.

Runs a trained model over a data set's evaluation split and prints the per-class table with
VOC07 mAP (11-point and area, ``difficult`` ignored) and, when pycocotools is installed, the COCO
box metrics (AP, AP50, AP75, AP small/medium/large, AR); ``--size-bins`` adds AP/AR per tiny-object
size bin (:data:`mdssd.metrics.SIZE_BINS`, through pycocotools' own area ranges).
``--compile [MODE]`` / ``--cuda-graphs`` run the batches through :mod:`mdssd.cuda_graphs`' runners
(as ``mdssd.detect``). :func:`evaluate` is the library entry point (training calls it on its val source). ``--tile N
--tile-overlap F`` slices each image into N x N tiles (:mod:`mdssd.tiling`) instead of resizing it
whole: small objects in large images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .metrics import SIZE_BINS, COCOResult, Detections, VOCResult, coco_eval, format_size_bins, format_table, voc_eval

__all__ = ["EvalReport", "evaluate", "score", "main"]


@dataclass
class EvalReport:
    voc: VOCResult
    coco: COCOResult | None
    table: str

    def as_dict(self) -> dict:
        def clean(v: float):
            return None if math.isnan(v) else float(v)

        out = {"voc07_map_11": clean(self.voc.map_11), "voc07_map_area": clean(self.voc.map_area),
               "per_class": {name: {"ap_11": clean(a), "ap_area": clean(b), "num_gt": int(n)}
                             for name, a, b, n in zip(self.voc.class_names, self.voc.ap_11, self.voc.ap_area,
                                                      self.voc.num_gt)}}
        if self.coco is not None:
            out["coco"] = {k: clean(v) for k, v in self.coco.stats.items()}
            if self.coco.size_bins:
                out["size_bins"] = {name: {k: (int(v) if k == "num_gt" else clean(v)) for k, v in row.items()}
                                    for name, row in self.coco.size_bins.items()}
        return out


def _coco_available() -> bool:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return False
    return True


def score(source, detections: Sequence[Detections], coco: bool | None = None, iou_threshold: float = 0.5,
          size_bins: bool = False) -> EvalReport:
    """Metrics of ``detections`` (one per image of ``source``, pixel coordinates).

    ``coco``: compute COCO metrics (default: when pycocotools is importable). A COCO source's own
    instances file and category ids are used for them, so crowd regions and areas are as released.
    ``size_bins``: also COCO AP/AR per :data:`mdssd.metrics.SIZE_BINS` bin (needs pycocotools).
    """
    if size_bins and coco is False:
        raise ValueError("size bins are COCO metrics: they cannot be computed with coco=False")
    annotations = [source.annotation(i) for i in range(len(source))]
    names = tuple(source.class_names)
    voc = voc_eval(annotations, detections, names, iou_threshold)
    coco_result = None
    if size_bins or (coco if coco is not None else _coco_available()):
        gt_file = getattr(source, "annotation_file", None)
        category_ids = getattr(source, "category_ids", None)
        # Our own reader already mapped category ids to labels; the released file is the reference.
        coco_result = coco_eval(annotations, detections, names, ground_truth=gt_file, category_ids=category_ids,
                                size_bins=SIZE_BINS if size_bins else None)
    table = format_table(names, voc, coco_result)
    if coco_result is not None and coco_result.size_bins:
        table += "\n" + format_size_bins(coco_result)
    return EvalReport(voc, coco_result, table)


def evaluate(model, source, batch_size: int = 8, num_workers: int = 0, coco: bool | None = None,
             iou_threshold: float = 0.5, tile=None, size_bins: bool = False, runner=None) -> EvalReport:
    """Run ``model`` (the docs/CONTRACTS.md API) on every image of ``source`` and score it;
    ``tile`` (a :class:`mdssd.tiling.TileSpec`): sliced inference instead of whole resized images,
    streamed from the image files in bounded memory (:mod:`mdssd.inference.stream`). ``runner``:
    what runs the batches (:mod:`mdssd.cuda_graphs`; default: the model eagerly), fed batches of
    ``tile.batch_size`` tiles or ``batch_size`` images, the last one padded."""
    from .inference import predict

    expected = len(source.class_names) + 1
    if model.config.num_classes != expected:
        raise ValueError(f"model has {model.config.num_classes} classes (with background), the data set "
                         f"{expected}")
    if tile is not None:
        from .inference.stream import predict_source_streamed

        detections = predict_source_streamed(model, source, tile, runner=runner)
    else:
        detections = predict(model, source, batch_size=batch_size, num_workers=num_workers, runner=runner)
    return score(source, detections, coco, iou_threshold, size_bins)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mdssd.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint (.pt) written by mdssd")
    from .data.dataset import DATASETS

    parser.add_argument("--data", "--dataset", dest="data", default="synthetic", choices=DATASETS)
    parser.add_argument("--data-root", default=None, help="data set folder (not needed for synthetic)")
    parser.add_argument("--split", default="val", help="val (default) or the data set's own split name")
    parser.add_argument("--num-images", type=int, default=None,
                        help="synthetic: images in the split (default: as in the training run)")
    parser.add_argument("--seed", type=int, default=None,
                        help="synthetic: generator seed (default: as in the training run)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--backend", default="ext", choices=("ext", "reference"))
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of the VOC metric")
    parser.add_argument("--no-coco", action="store_true", help="skip the pycocotools metrics")
    parser.add_argument("--size-bins", action="store_true",
                        help="also COCO AP/AR per object side 2-8, 8-16, 16-32, 32-64 px (AI-TOD's bins)")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--per-layer", action="store_true",
                        help="score once per prediction layer, only its priors kept (mdssd.per_layer): "
                        "AP, AP_small and the size bins per layer, with a plot")
    parser.add_argument("--per-layer-out", default=None, metavar="PREFIX",
                        help="--per-layer files PREFIX.json/.md/.png (default: per-layer next to --weights)")
    add_tile_arguments(parser)
    from .cuda_graphs import add_runner_arguments

    add_runner_arguments(parser)
    return parser


def add_tile_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tile N --tile-overlap F [--tile-full-image] [--tile-merge nms|ios]`` (also mdssd.detect)."""
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="sliced inference on N x N pixel tiles (default: whole images resized)")
    parser.add_argument("--tile-overlap", type=float, default=0.25, metavar="F",
                        help="overlap of neighbouring tiles, fraction of N (default 0.25)")
    parser.add_argument("--tile-full-image", action="store_true",
                        help="add one resized whole-image pass (objects larger than a tile)")
    parser.add_argument("--tile-merge", default="nms", choices=("nms", "ios"),
                        help="merge across tiles: class-aware NMS (default) or NMS + SAHI-style IoS merging")
    parser.add_argument("--tile-batch", type=int, default=32, metavar="B",
                        help="tiles per forward (fixed shape; default 32)")
    parser.add_argument("--max-detections", type=int, default=1000, metavar="K",
                        help="with --tile: keep the best K detections per image after merging (default 1000)")


def tile_spec_from_args(args):
    """The :class:`mdssd.tiling.TileSpec` of parsed :func:`add_tile_arguments` flags, or None."""
    if args.tile is None:
        return None
    from .tiling import TileSpec

    return TileSpec(size=args.tile, overlap=args.tile_overlap, full_image=args.tile_full_image,
                    merge=args.tile_merge, batch_size=args.tile_batch, max_detections=args.max_detections)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        tile = tile_spec_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.size_bins and args.no_coco:
        parser.error("--size-bins are COCO metrics: drop --no-coco")
    if args.per_layer and args.no_coco:
        parser.error("--per-layer reports COCO metrics: drop --no-coco")
    if args.per_layer and (args.compile or args.cuda_graphs):
        parser.error("--per-layer runs the model eagerly: drop --compile / --cuda-graphs")
    from .data import build_source
    from .inference import load_model, read_checkpoint, synthetic_val_options

    checkpoint = read_checkpoint(args.weights)
    options = {}
    if args.data == "synthetic":
        # By default the validation set the run was scored on; flags override.
        options = synthetic_val_options(checkpoint)
        options.update({k: v for k, v in (("num_images", args.num_images), ("seed", args.seed)) if v is not None})
    from .data import AnnotationError

    try:
        source = build_source(args.data, args.data_root, args.split, **options)
    except (AnnotationError, ValueError) as error:
        print(f"mdssd.eval: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    model, class_names = load_model(checkpoint, backend=args.backend, device=args.device)
    if class_names is not None and tuple(class_names) != tuple(source.class_names):
        print(f"mdssd.eval: the checkpoint was trained on classes {list(class_names)}, the data set has "
              f"{list(source.class_names)}", file=sys.stderr)
        return 2
    if args.per_layer:
        return _per_layer(args, model, source, tile)
    from .cuda_graphs import runner_from_args

    try:
        runner = runner_from_args(args, model, tile.batch_size if tile else args.batch_size)
    except ValueError as error:
        print(f"mdssd.eval: {error}", file=sys.stderr)
        return 2
    from .inference.step1_read import RasterError

    try:
        report = evaluate(model, source, args.batch_size, args.workers, coco=False if args.no_coco else None,
                          iou_threshold=args.iou, tile=tile, size_bins=args.size_bins, runner=runner)
    except RasterError as error:
        print(f"mdssd.eval: {error}", file=sys.stderr)
        return 2
    sliced = f", {tile.size} px tiles, overlap {tile.overlap}, merge {tile.merge}" if tile else ""
    print(f"{args.data} {args.split}: {len(source)} images, weights {args.weights}{sliced}")
    print(report.table)
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2))
    return 0


def _per_layer(args, model, source, tile) -> int:
    from .per_layer import evaluate_per_layer, format_per_layer, write_per_layer

    rows = evaluate_per_layer(model, source, args.batch_size, args.workers, tile=tile)
    prefix = args.per_layer_out or str(Path(args.weights).with_name("per-layer"))
    title = f"Per-layer AP@[.5:.95] by object size: {model.config.name}, {args.data} {args.split}"
    paths = write_per_layer(prefix, rows, title, meta={"weights": str(args.weights), "data": args.data,
                                                       "split": args.split, "images": len(source),
                                                       "preset": model.config.name})
    print(f"{args.data} {args.split}: {len(source)} images, weights {args.weights}, one layer's priors at a time")
    print(format_per_layer(rows))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
