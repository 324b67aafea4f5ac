"""How well a model's priors cover a data set's objects, by object size: no training needed.

For every ground-truth box (normalised to the model's square input, as the ``Resize`` the models
see) the training matcher (:func:`mdssd.reference.assign`, the rule of ``match_encode``) decides
which priors become its positives. Reported per object side in **input** pixels (the unit the
priors are sized in): how many objects reach IoU >= the matching threshold with some prior (the
others only get their one forced best prior), the mean best IoU, the mean number of positives
per object, and which source layer holds each object's best prior. Small objects that no prior
fits well get few, poorly overlapping positives: the first suspect where a model loses on them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from .model.config import ModelConfig
from .model.priors import make_priors
from .reference import assign, box_iou, point_form

# Object sides in input pixels: the AI-TOD bins of mdssd.metrics.SIZE_BINS, plus everything above.
COVERAGE_BINS = (("<8px", 0.0, 8.0), ("8-16px", 8.0, 16.0), ("16-32px", 16.0, 32.0), ("32-64px", 32.0, 64.0),
                 (">=64px", 64.0, float("inf")))


def prior_coverage(config: ModelConfig, source, max_images: int | None = None) -> dict[str, dict]:
    """Per size bin: ``objects``, ``reach_threshold`` (share with best IoU >= the matching
    threshold), ``mean_best_iou``, ``mean_positives`` and ``best_layer`` (share per source name)."""
    size = config.image_size
    priors = make_priors(config.priors, size).double()
    prior_boxes = point_form(priors)
    layer_of = np.repeat(np.arange(len(config.sources)),
                         [f * f * n for f, n in zip(config.priors.feature_maps, config.priors.priors_per_cell())])
    threshold = config.loss.iou_threshold
    sides, best_ious, positives, layers = [], [], [], []
    count = len(source) if max_images is None else min(max_images, len(source))
    for index in range(count):
        ann = source.annotation(index)
        keep = ~(ann.difficult | ann.crowd)
        if not keep.any():
            continue
        boxes = torch.from_numpy(ann.boxes[keep] / np.array([ann.width, ann.height, ann.width, ann.height]))
        iou = box_iou(boxes, prior_boxes)  # [G, P]
        best_gt, positive = assign(iou, threshold)
        per_gt = torch.bincount(best_gt[positive], minlength=len(boxes))
        best = iou.max(dim=1)
        wh = (boxes[:, 2:] - boxes[:, :2]) * size
        sides += torch.sqrt(wh[:, 0] * wh[:, 1]).tolist()
        best_ious += best.values.tolist()
        positives += per_gt.tolist()
        layers += layer_of[best.indices.numpy()].tolist()
    sides, best_ious, positives, layers = map(np.asarray, (sides, best_ious, positives, layers))
    out = {}
    for name, lo, hi in COVERAGE_BINS:
        mask = (sides >= lo) & (sides < hi)
        n = int(mask.sum())
        if n == 0:
            out[name] = {"objects": 0}
            continue
        share = Counter(layers[mask].tolist())
        out[name] = {
            "objects": n,
            "reach_threshold": float((best_ious[mask] >= threshold).mean()),
            "mean_best_iou": float(best_ious[mask].mean()),
            "mean_positives": float(positives[mask].mean()),
            "best_layer": {config.sources[k]: share[k] / n for k in sorted(share)},
        }
    return out


def format_coverage(coverage_by_variant: dict[str, dict[str, dict]], threshold: float = 0.5) -> str:
    """A markdown table: one row per variant and size bin."""
    lines = [f"| variant | object side (input px) | objects | best IoU >= {threshold} | mean best IoU | "
             "positives per object | layer of the best prior |", "|---|---|---|---|---|---|---|"]
    for variant, bins in coverage_by_variant.items():
        for name, row in bins.items():
            if not row["objects"]:
                continue
            layers = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(row["best_layer"].items(),
                                                                        key=lambda kv: -kv[1]))
            lines.append(f"| `{variant}` | {name} | {row['objects']} | {100 * row['reach_threshold']:.0f}% | "
                         f"{row['mean_best_iou']:.2f} | {row['mean_positives']:.1f} | {layers} |")
    return "\n".join(lines)
