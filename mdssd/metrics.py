"""Detection metrics: VOC07 mAP (11-point and all-point/area) and COCO metrics via pycocotools.

Inputs are per image, in pixel coordinates of the stored image:

* ground truth: :class:`mdssd.data.base.Annotation` (boxes xyxy, labels, ``difficult``, ``crowd``);
* detections: :class:`Detections` (boxes xyxy, scores, labels) in the same order as the
  annotations.

VOC protocol (as the VOC devkit's ``VOCevaldet``): per class, detections over all images are
ranked by descending score (ties: earlier image, then earlier detection); a detection is a true
positive when its best-overlapping ground truth of that class has IoU >= 0.5, is not ``difficult``
and was not already taken; a detection whose best match is ``difficult`` is ignored (neither true
nor false positive); crowd regions are treated like difficult objects, and also, as pycocotools
matches crowd, a detection that would be a false positive is ignored when at least the IoU
threshold of its own area lies inside a crowd region of its class (VisDrone's ignored regions are
large: a small detection in one has a small IoU). Boxes use the continuous
convention of :mod:`mdssd.data.base`, which equals the devkit's "+1" pixel arithmetic on VOC's
inclusive corners. A class without non-difficult ground truth has AP NaN and is left out of mAP.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .data.base import Annotation

__all__ = ["Detections", "voc_ap", "voc_eval", "coco_eval", "format_table", "format_size_bins", "VOCResult",
           "COCOResult", "SIZE_BINS"]


@dataclass
class Detections:
    """Detections of one image: boxes float [n,4] xyxy pixels, scores [n], labels int [n] (1..K-1)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision from a recall/precision curve.

    ``use_07_metric``: VOC2007's 11-point interpolation, the mean over ``t in {0, 0.1, ..., 1}`` of
    the best precision at recall >= t (0 when no such point). Otherwise the area under the
    precision envelope (VOC2010+ "all points").
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        total = 0.0
        for t in np.linspace(0, 1, 11):
            above = precision[recall >= t - 1e-12]
            total += above.max() if above.size else 0.0
        return total / 11
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope (non-increasing)
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _inside_crowd(box: np.ndarray, crowd: np.ndarray, threshold: float) -> bool:
    """At least ``threshold`` of ``box``'s area inside one of the ``crowd`` boxes (pycocotools'
    crowd overlap: intersection over the detection's area)."""
    if len(crowd) == 0:
        return False
    lt = np.maximum(box[:2], crowd[:, :2])
    rb = np.minimum(box[2:], crowd[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = float(np.prod(box[2:] - box[:2]))
    return bool(area > 0 and (inter >= threshold * area).any())


@dataclass
class VOCResult:
    class_names: tuple[str, ...]
    ap_11: np.ndarray  # [K-1], NaN for classes without ground truth
    ap_area: np.ndarray
    num_gt: np.ndarray  # non-difficult ground truth per class
    num_det: np.ndarray

    @property
    def map_11(self) -> float:
        return float(np.nanmean(self.ap_11)) if np.isfinite(self.ap_11).any() else float("nan")

    @property
    def map_area(self) -> float:
        return float(np.nanmean(self.ap_area)) if np.isfinite(self.ap_area).any() else float("nan")


def voc_eval(annotations: Sequence[Annotation], detections: Sequence[Detections],
             class_names: Sequence[str], iou_threshold: float = 0.5) -> VOCResult:
    """VOC AP per class (11-point and area) at ``iou_threshold``; see the module docstring."""
    if len(annotations) != len(detections):
        raise ValueError(f"{len(annotations)} annotations but {len(detections)} detection lists")
    k = len(class_names)
    ap_11, ap_area = np.full(k, np.nan), np.full(k, np.nan)
    num_gt, num_det = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for label in range(1, k + 1):
        gts, crowds = [], []
        for ann in annotations:
            mask = ann.labels == label
            gts.append((ann.boxes[mask], (ann.difficult | ann.crowd)[mask]))
            crowds.append(ann.boxes[mask & ann.crowd])
        npos = sum(int((~ignore).sum()) for _, ignore in gts)
        # (score, image, detection) ranked by descending score, ties to earlier image/detection.
        image_idx, boxes, scores = [], [], []
        for i, det in enumerate(detections):
            mask = det.labels == label
            image_idx.append(np.full(int(mask.sum()), i))
            boxes.append(det.boxes[mask])
            scores.append(det.scores[mask])
        image_idx = np.concatenate(image_idx) if image_idx else np.zeros(0, np.int64)
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-scores, kind="stable")
        num_gt[label - 1], num_det[label - 1] = npos, len(order)
        taken = [np.zeros(len(g), bool) for g, _ in gts]
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for rank, d in enumerate(order):
            gt_boxes, ignore = gts[image_idx[d]]
            if len(gt_boxes) == 0:
                fp[rank] = 1
                continue
            overlaps = _iou(boxes[d], gt_boxes)
            best = int(np.argmax(overlaps))  # first maximum
            if overlaps[best] >= iou_threshold:
                if ignore[best]:
                    continue  # matched a difficult object: neither TP nor FP
                if not taken[image_idx[d]][best]:
                    tp[rank] = 1
                    taken[image_idx[d]][best] = True
                else:
                    fp[rank] = 1  # duplicate detection
            elif not _inside_crowd(boxes[d], crowds[image_idx[d]], iou_threshold):
                fp[rank] = 1
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap_11[label - 1] = voc_ap(recall, precision, True)
        ap_area[label - 1] = voc_ap(recall, precision, False)
    return VOCResult(tuple(class_names), ap_11, ap_area, num_gt, num_det)


COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


# Tiny-object size bins, by box side in pixels of the stored image (sqrt of the COCO area), as
# AI-TOD reports them (very tiny 2-8, tiny 8-16, small 16-32, medium 32-64); COCO's own
# small/medium/large (0-32-96-inf) stay in ``COCOResult.stats``.
SIZE_BINS: dict[str, tuple[float, float]] = {
    "2-8px": (2.0, 8.0), "8-16px": (8.0, 16.0), "16-32px": (16.0, 32.0), "32-64px": (32.0, 64.0),
}


@dataclass
class COCOResult:
    stats: dict[str, float]
    per_class_ap: np.ndarray  # AP@[.5:.95] per class (area all, 100 dets), NaN without ground truth
    summary: str = field(default="", repr=False)  # pycocotools' printed summary
    # Per size bin (when asked for): {"AP", "AP50", "AR" (100 detections), "num_gt"}; the APs are
    # NaN for a bin without (non-crowd) ground truth.
    size_bins: dict[str, dict[str, float]] = field(default_factory=dict)


def coco_results(annotations: Sequence[Annotation], detections: Sequence[Detections],
                 category_ids: Sequence[int] | None = None) -> list[dict]:
    """Detections in COCO results format (``bbox`` as ``[x, y, w, h]`` pixels).

    ``category_ids[label-1]`` maps labels to the data set's category ids (COCO's have gaps);
    default: category id = label.
    """
    results = []
    for ann, det in zip(annotations, detections):
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            category = int(category_ids[label - 1]) if category_ids is not None else int(label)
            results.append({"image_id": int(ann.image_id), "category_id": category,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def coco_eval(annotations: Sequence[Annotation], detections: Sequence[Detections], class_names: Sequence[str],
              ground_truth: dict | str | None = None, category_ids: Sequence[int] | None = None,
              size_bins: dict[str, tuple[float, float]] | None = None) -> COCOResult:
    """COCO box metrics with pycocotools (imported here: an optional dependency).

    ``ground_truth`` is the data set's instances JSON (path or dict) when there is one (COCO: keeps
    ``iscrowd`` and ``area`` exactly as released); otherwise it is built from the annotations with
    :func:`mdssd.data.export.coco_ground_truth` (difficult -> ``iscrowd``).

    ``size_bins`` (e.g. :data:`SIZE_BINS`: name -> (min side, max side) in pixels) adds area
    ranges ``[min^2, max^2]`` to pycocotools' own ``params.areaRng``, after COCO's four, so the
    matching per bin is pycocotools' (ground truth outside the range ignored, unmatched
    detections outside it not counted); ``size_bins`` in the result reads them off its
    accumulated precision/recall exactly as its ``summarize`` does for small/medium/large.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO metrics need pycocotools: pip install pycocotools") from error
    from .data.export import coco_ground_truth

    if ground_truth is None:
        ground_truth = coco_ground_truth(list(annotations), tuple(class_names))
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ground_truth, dict):
            gt = COCO()
            gt.dataset = ground_truth
            gt.createIndex()
        else:
            gt = COCO(str(ground_truth))
    results = coco_results(annotations, detections, category_ids)
    stats = dict.fromkeys(COCO_STAT_NAMES, float("nan"))
    per_class = np.full(len(class_names), np.nan)
    image_ids = [int(a.image_id) for a in annotations]
    bins = _check_size_bins(size_bins or {})
    if not results:  # loadRes refuses an empty list; with no detections every AP is 0
        stats = dict.fromkeys(COCO_STAT_NAMES, 0.0)
        empty_bins = {name: {"AP": 0.0, "AP50": 0.0, "AR": 0.0, "num_gt": _bin_gt_count(gt, image_ids, rng)}
                      for name, rng in bins.items()}
        for row in empty_bins.values():
            if row["num_gt"] == 0:
                row.update(AP=float("nan"), AP50=float("nan"), AR=float("nan"))
        return COCOResult(stats, np.zeros(len(class_names)), "no detections", empty_bins)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = image_ids
        for name, area_range in bins.items():
            evaluator.params.areaRng.append(list(area_range))
            evaluator.params.areaRngLbl.append(name)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]; -1 where undefined
    cat_ids = list(evaluator.params.catIds)
    wanted = category_ids if category_ids is not None else range(1, len(class_names) + 1)
    for k, cid in enumerate(wanted):
        if cid in cat_ids:
            p = precision[:, :, cat_ids.index(cid), 0, -1]
            p = p[p > -1]
            per_class[k] = float(p.mean()) if p.size else float("nan")
    size_results = {name: _bin_metrics(evaluator, name, gt, image_ids, rng) for name, rng in bins.items()}
    return COCOResult(stats, per_class, buffer.getvalue(), size_results)


def _check_size_bins(size_bins: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Side ranges (pixels) -> area ranges, refusing reversed or negative bins and COCO's names."""
    areas = {}
    for name, bounds in size_bins.items():
        if name in ("all", "small", "medium", "large"):
            raise ValueError(f"size bin {name!r}: that name is one of COCO's own area ranges")
        lo, hi = (float(v) for v in bounds)
        if not 0 <= lo < hi:
            raise ValueError(f"size bin {name!r}: need 0 <= min side < max side, got {bounds}")
        areas[name] = (lo * lo, hi * hi)
    return areas


def _bin_gt_count(gt, image_ids: list[int], area_range: tuple[float, float]) -> int:
    """Non-crowd ground truth whose COCO ``area`` is in the range (pycocotools' test, inclusive)."""
    lo, hi = area_range
    wanted = set(image_ids)
    return sum(1 for a in gt.dataset["annotations"]
               if a["image_id"] in wanted and not a.get("iscrowd", 0) and lo <= a["area"] <= hi)


def _bin_metrics(evaluator, name: str, gt, image_ids: list[int], area_range) -> dict[str, float]:
    """AP@[.5:.95], AP50 and AR (100 detections) of one area range, as ``COCOeval.summarize``
    averages them: over IoU thresholds, recall points and categories, ignoring -1 (undefined)."""
    params = evaluator.params
    a = params.areaRngLbl.index(name)
    m = params.maxDets.index(100) if 100 in params.maxDets else len(params.maxDets) - 1

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else float("nan")

    precision = evaluator.eval["precision"][:, :, :, a, m]  # [T, R, K]
    recall = evaluator.eval["recall"][:, :, a, m]  # [T, K]
    at50 = np.flatnonzero(np.isclose(params.iouThrs, 0.5))
    return {"AP": mean(precision), "AP50": mean(precision[at50]), "AR": mean(recall),
            "num_gt": _bin_gt_count(gt, image_ids, area_range)}


def format_size_bins(result: COCOResult) -> str:
    """One line per size bin: ground truth count, AP@[.5:.95], AP50, AR@100 (percent)."""
    def pct(v: float) -> str:
        return "    -" if v is None or math.isnan(v) else f"{100 * v:5.1f}"

    lines = [f"{'size bin (side)':<16} {'#gt':>6} {'AP':>6} {'AP50':>6} {'AR100':>6}"]
    for name, row in result.size_bins.items():
        lines.append(f"{name:<16} {row['num_gt']:>6} {pct(row['AP']):>6} {pct(row['AP50']):>6} {pct(row['AR']):>6}")
    return "\n".join(lines)


def format_table(class_names: Sequence[str], voc: VOCResult | None = None, coco: COCOResult | None = None) -> str:
    """Per-class table plus summary lines, as printed by ``python -m mdssd.eval``."""
    def pct(v: float) -> str:
        return "   -" if v is None or math.isnan(v) else f"{100 * v:5.1f}"

    width = max(12, *(len(n) for n in class_names))
    header = f"{'class':<{width}}  {'#gt':>6}  {'#det':>6}  {'AP07-11':>7}  {'AP-area':>7}"
    if coco is not None:
        header += f"  {'COCO AP':>7}"
    lines = [header, "-" * len(header)]
    for k, name in enumerate(class_names):
        row = f"{name:<{width}}"
        if voc is not None:
            row += f"  {voc.num_gt[k]:>6}  {voc.num_det[k]:>6}  {pct(voc.ap_11[k]):>7}  {pct(voc.ap_area[k]):>7}"
        else:
            row += f"  {'':>6}  {'':>6}  {'':>7}  {'':>7}"
        if coco is not None:
            row += f"  {pct(coco.per_class_ap[k]):>7}"
        lines.append(row)
    lines.append("-" * len(header))
    if voc is not None:
        lines.append(f"VOC07 mAP (11-point) {pct(voc.map_11)}   mAP (area) {pct(voc.map_area)}")
    if coco is not None:
        lines.append("COCO " + "  ".join(f"{k} {pct(v).strip()}" for k, v in coco.stats.items()))
    return "\n".join(lines)
