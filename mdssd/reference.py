"""Pure-PyTorch reference implementations of every mdssd op.

This module is the executable statement of the ops' semantics: the compiled kernels are tested
against it, and the model's ``reference`` backend runs on it. It favours clarity over speed (it
is vectorised, but loops over images and kept boxes in Python).

Conventions shared by all ops:

* boxes are ``(x1, y1, x2, y2)``; priors are ``(cx, cy, w, h)``; label 0 is background.
* A box with ``x2 < x1`` or ``y2 < y1`` (inverted) has area 0, exactly like a zero-area box.
* IoU of a pair whose union is 0 is 0, never NaN; so is the IoU of a pair with a NaN
  coordinate (its area and union are NaN), so a NaN box neither suppresses nor is suppressed.
* Every ranking is by descending score with ties to the lower index; every "best" is the first
  maximum (lowest index).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_iou",
    "point_form",
    "encode",
    "decode",
    "softmax",
    "match_encode",
    "l2norm_sum",
    "nms",
    "batched_nms",
    "ssd_postprocess",
]


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes; inverted boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU: ``[N,4] x [M,4] -> [N,M]`` or ``[B,N,4] x [B,M,4] -> [B,N,M]``.

    Computed as ``inter / ((area1 + area2) - inter)`` in the boxes' dtype; 0 where the union is 0.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def point_form(priors: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` priors to ``(x1, y1, x2, y2)`` boxes: ``c -/+ size * 0.5``."""
    half = priors[..., 2:] * 0.5
    return torch.cat([priors[..., :2] - half, priors[..., :2] + half], dim=-1)


def encode(matched: Tensor, priors: Tensor, variance_xy: float, variance_wh: float) -> Tensor:
    """SSD offsets of xyxy boxes ``matched`` relative to cxcywh ``priors`` (same leading shape).

    ``((gcx - pcx) / (variance_xy * pw), (gcy - pcy) / (variance_xy * ph),
    log(gw / pw) / variance_wh, log(gh / ph) / variance_wh)`` with ``gc = (x1 + x2) * 0.5`` and
    ``gw = x2 - x1``.
    """
    g_center = (matched[..., :2] + matched[..., 2:]) * 0.5
    g_size = matched[..., 2:] - matched[..., :2]
    d_center = (g_center - priors[..., :2]) / (variance_xy * priors[..., 2:])
    d_size = _log_rounded(g_size / priors[..., 2:]) / variance_wh
    return torch.cat([d_center, d_size], dim=-1)


def _exp_rounded(x: Tensor) -> Tensor:
    """``exp`` evaluated in float64 and rounded to ``x``'s dtype.

    float32 ``exp`` differs between libraries in the last bit; the correctly rounded value is the
    same everywhere, so the kernels and this reference agree bit for bit on scores and boxes.
    """
    return torch.exp(x.double()).to(x.dtype)


def _log_rounded(x: Tensor) -> Tensor:
    """``log`` evaluated in float64 and rounded to ``x``'s dtype (as :func:`_exp_rounded`: float32
    ``log`` differs between libraries in the last bit)."""
    return torch.log(x.double()).to(x.dtype)


def softmax(logits: Tensor) -> Tensor:
    """Softmax over the last dim, computed in float64 and rounded to the logits' dtype (see
    :func:`_exp_rounded` for why)."""
    return torch.softmax(logits.double(), dim=-1).to(logits.dtype)


def decode(loc: Tensor, priors: Tensor, variance_xy: float, variance_wh: float) -> Tensor:
    """Inverse of :func:`encode`, returning xyxy boxes clipped to ``[0, 1]``.

    ``c = pc + l_xy * variance_xy * psize``, ``size = psize * exp(l_wh * variance_wh)``,
    ``box = (c - size * 0.5, c + size * 0.5)``.
    """
    center = priors[..., :2] + loc[..., :2] * variance_xy * priors[..., 2:]
    size = priors[..., 2:] * _exp_rounded(loc[..., 2:] * variance_wh)
    half = size * 0.5
    return torch.cat([center - half, center + half], dim=-1).clamp(0, 1)


def assign(iou: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """The matching rule of :func:`match_encode` on one image's ``iou [G,P]`` (G >= 1): per prior
    the ground truth it takes (``best_gt [P]``) and whether it is a positive (``positive [P]``)."""
    num_priors = iou.shape[1]
    best_prior = iou.argmax(dim=1)  # first maximum: lowest prior index
    best_prior_iou = iou.gather(1, best_prior[:, None])[:, 0]
    best_gt = iou.argmax(dim=0)  # first maximum: lowest gt index
    best_gt_iou = iou.gather(0, best_gt[None, :])[0]

    forcing = best_prior_iou > 0
    forced_gt = torch.full((num_priors,), -1, dtype=torch.long, device=iou.device)
    gt_index = torch.arange(iou.shape[0], device=iou.device)
    forced_gt.scatter_reduce_(0, best_prior[forcing], gt_index[forcing], reduce="amax")
    is_forced = forced_gt >= 0
    best_gt = torch.where(is_forced, forced_gt, best_gt)
    return best_gt, is_forced | (best_gt_iou >= iou_threshold)


def match_encode(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_counts: Tensor,
    iou_threshold: float = 0.5,
    variance_xy: float = 0.1,
    variance_wh: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """Match priors ``[P,4]`` to ground truths ``[B,G,4]`` and encode the targets.

    Returns ``loc [B,P,4]`` (priors' dtype) and ``labels [B,P]`` (int64). Only the first
    ``gt_counts[b]`` ground truths of image ``b`` are real. Rule:

    1. every real ground truth takes its best prior (ties: lowest prior index), whatever the
       threshold, provided it overlaps some prior at all (a ground truth whose IoU is 0 with every
       prior, e.g. a zero-area box, forces nothing);
    2. when several ground truths force the same prior, the highest ground-truth index wins;
    3. every other prior takes its best ground truth (ties: lowest index) if that IoU is
       ``>= iou_threshold``, else it is background (label 0, loc 0).
    """
    batch, num_priors = gt_boxes.shape[0], priors.shape[0]
    loc = priors.new_zeros(batch, num_priors, 4)
    labels = torch.zeros(batch, num_priors, dtype=torch.long, device=priors.device)
    prior_boxes = point_form(priors)
    for b in range(batch):
        n = int(gt_counts[b])
        if n == 0 or num_priors == 0:  # nothing to match (no ground truth or no prior)
            continue
        best_gt, positive = assign(box_iou(gt_boxes[b, :n], prior_boxes), iou_threshold)
        labels[b] = torch.where(positive, gt_labels[b, best_gt], torch.zeros_like(best_gt))
        offsets = encode(gt_boxes[b, best_gt[positive]], priors[positive], variance_xy, variance_wh)
        loc[b, positive] = offsets
    return loc, labels


def l2norm_sum(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, eps: float = 1e-10) -> Tensor:
    """``scale_a * a / max(||a||, eps) + scale_b * b / max(||b||, eps)`` for ``[B,C,H,W]`` maps.

    Norms are over channels, per pixel; half and bfloat16 inputs are computed in float32 and the
    result is cast back to ``a``'s dtype.
    """
    acc = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype

    def normalized(x: Tensor, scale: Tensor) -> Tensor:
        x = x.to(acc)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)
        # The unit vector first: (scale * x) / norm would round scale * x in the subnormal range
        # for tiny x (a clamped norm with a tiny eps), losing most of its digits.
        return scale.to(acc).view(1, -1, 1, 1) * (x / norm)

    return (normalized(a, scale_a) + normalized(b, scale_b)).to(a.dtype)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS with torchvision's semantics; returns kept indices (int64) in rank order.

    Rank is descending score, ties to the lower index; a box is dropped when a kept box of better
    rank overlaps it with IoU ``> iou_threshold``.
    """
    remaining = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while remaining.numel() > 0:
        best = remaining[0]
        keep.append(best)
        rest = remaining[1:]
        iou = box_iou(boxes[best][None], boxes[rest])[0]
        remaining = rest[~(iou > iou_threshold)]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.stack(keep)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each value of ``idxs`` (boxes of different idxs never suppress each other).

    Returns kept indices in rank order over all idxs (descending score, ties to lower index).
    """
    kept = [
        torch.nonzero(idxs == value)[:, 0][nms(boxes[idxs == value], scores[idxs == value], iou_threshold)]
        for value in torch.unique(idxs)
    ]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = torch.cat(kept).sort().values
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def ssd_postprocess(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    variance_xy: float = 0.1,
    variance_wh: float = 0.2,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    top_k_per_class: int = 400,
    keep_top_k: int = 200,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SSD detection output with fixed shapes.

    ``loc [B,P,4]``, ``conf [B,P,K]`` (logits), ``priors [P,4]``. Per image: softmax over K
    (in float64, rounded),
    decode and clip to ``[0, 1]``; for each class ``1..K-1`` keep scores ``> score_threshold``,
    the best ``top_k_per_class`` of them (ties: lower prior index), NMS at ``iou_threshold``
    on the clipped boxes; then the best ``keep_top_k`` over all classes (ties: lower class, then
    lower prior index). Returns ``boxes [B,keep_top_k,4]``, ``scores [B,keep_top_k]``,
    ``labels [B,keep_top_k]`` (int64), ``counts [B]`` (int64); padding rows have box 0, score 0
    and label -1.
    """
    batch, num_priors, num_classes = conf.shape
    scores_all = softmax(conf)
    boxes_all = decode(loc, priors, variance_xy, variance_wh)
    out_boxes = loc.new_zeros(batch, keep_top_k, 4)
    out_scores = conf.new_zeros(batch, keep_top_k)
    out_labels = torch.full((batch, keep_top_k), -1, dtype=torch.long, device=loc.device)
    out_counts = torch.zeros(batch, dtype=torch.long, device=loc.device)
    empty = torch.zeros(0, dtype=torch.long, device=loc.device)
    for b in range(batch):
        # Start from empty lists so that K = 1 (background only) gives no detections.
        picked_prior, picked_score, picked_label = [empty], [conf.new_zeros(0)], [empty]
        for c in range(1, num_classes):
            scores = scores_all[b, :, c]
            candidates = torch.nonzero(scores > score_threshold)[:, 0]
            order = torch.sort(scores[candidates], descending=True, stable=True).indices
            candidates = candidates[order[:top_k_per_class]]
            kept = candidates[nms(boxes_all[b, candidates], scores[candidates], iou_threshold)]
            picked_prior.append(kept)
            picked_score.append(scores[kept])
            picked_label.append(torch.full_like(kept, c))
        prior = torch.cat(picked_prior)
        score = torch.cat(picked_score)
        label = torch.cat(picked_label)
        # Classes were appended in ascending order and each class in rank order, so a stable
        # sort by score gives the documented tie-break (class, then prior index).
        order = torch.sort(score, descending=True, stable=True).indices[:keep_top_k]
        n = order.numel()
        out_boxes[b, :n] = boxes_all[b, prior[order]]
        out_scores[b, :n] = score[order]
        out_labels[b, :n] = label[order]
        out_counts[b] = n
    return out_boxes, out_scores, out_labels, out_counts
