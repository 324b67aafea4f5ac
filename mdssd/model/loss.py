"""MultiBox loss: Smooth L1 on positives plus softmax cross-entropy with hard negative mining.

Conventions (SSD's):

* targets come from ``backend.match_encode`` (positives: label > 0); priors marked ``-1`` by
  :func:`ignore_priors` (they overlap an ignore region, e.g. an object cut by a crop window) are
  neither positives nor candidate negatives: they add nothing to either term;
* per image, the negatives kept are the ``floor(neg_pos_ratio * num_pos)`` background priors with the
  largest background cross-entropy (ties to the lower prior index; at most all negatives), so an
  image without ground truth contributes nothing to either term;
* both terms are summed over the batch and divided by the batch's number of positives ``N``,
  taken as 1 when ``N = 0`` (both sums are then 0);
* computed in float32 whatever the autocast state, with fixed shapes (masks, no boolean
  indexing) so that it compiles without graph breaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig


def multibox_loss(loc: Tensor, conf: Tensor, loc_target: Tensor, label_target: Tensor,
                  config: LossConfig) -> dict[str, Tensor]:
    """``loc [B,P,4]``, ``conf [B,P,K]`` predictions; ``loc_target [B,P,4]``, ``label_target [B,P]``.

    Returns ``{"loc", "conf", "total"}`` scalar float32 tensors.
    """
    with torch.autocast(loc.device.type, enabled=False):
        loc, conf, loc_target = loc.float(), conf.float(), loc_target.float()
        num_priors = label_target.shape[1]
        positive = label_target > 0
        ignored = label_target < 0
        num_pos = positive.sum(1)
        ce = F.cross_entropy(conf.reshape(-1, conf.shape[-1]), label_target.clamp(min=0).reshape(-1),
                             reduction="none").view_as(label_target)
        with torch.no_grad():
            # For a background prior the cross-entropy is its background loss: rank those,
            # positives and ignored priors last (never mined).
            mining = ce.masked_fill(positive | ignored, float("-inf"))
            order = mining.sort(dim=1, descending=True, stable=True).indices
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(num_priors, device=order.device).expand_as(order))
            # floor(ratio * num_pos) as Caffe-SSD (a non-integer ratio must not round up).
            num_neg = torch.minimum((config.neg_pos_ratio * num_pos).floor().long(),
                                    num_priors - num_pos - ignored.sum(1))
            negative = rank < num_neg[:, None]
        conf_loss = torch.where(positive | negative, ce, 0.0).sum()
        smooth = F.smooth_l1_loss(loc, loc_target, reduction="none", beta=config.smooth_l1_beta).sum(-1)
        loc_loss = torch.where(positive, smooth, 0.0).sum()
        n = num_pos.sum().clamp(min=1).float()
        loc_loss, conf_loss = loc_loss / n, conf_loss / n
        return {"loc": loc_loss, "conf": conf_loss, "total": conf_loss + config.loc_weight * loc_loss}


def ignore_priors(priors_xyxy: Tensor, label_target: Tensor, ignore_boxes: Tensor, ignore_counts: Tensor,
                  iou_threshold: float, box_iou, inside_threshold: float = 0.5) -> Tensor:
    """``label_target [B,P]`` with background priors that overlap an ignore region set to -1.

    ``priors_xyxy [P,4]``, ``ignore_boxes [B,I,4]`` (only the first ``ignore_counts[b]`` rows are
    real), ``box_iou`` the batched IoU op (:func:`mdssd.ops.box_iou`). A background prior with
    IoU >= ``iou_threshold`` with an ignore box is what a whole object there would have made a
    positive or a near match; one with at least ``inside_threshold`` of its own area inside an
    ignore box lies in a crowd region (VisDrone's ignored regions are much larger than the
    priors: their IoU stays small). Positives (matched to a kept box) stay positives. Fixed shapes.
    """
    batch, count = ignore_boxes.shape[:2]
    priors = priors_xyxy.to(ignore_boxes.dtype).expand(batch, -1, -1).contiguous()
    iou = box_iou(priors, ignore_boxes.contiguous())  # [B,P,I]
    real = torch.arange(count, device=ignore_boxes.device)[None, :] < ignore_counts[:, None]
    # Intersection from the IoU: inter = iou * (area_p + area_i) / (1 + iou).
    area_p = ((priors[..., 2] - priors[..., 0]) * (priors[..., 3] - priors[..., 1]))[:, :, None]
    area_i = ((ignore_boxes[..., 2] - ignore_boxes[..., 0]) * (ignore_boxes[..., 3] - ignore_boxes[..., 1]))[:, None]
    inside = (iou * (area_p + area_i) >= inside_threshold * area_p * (1 + iou)) & (area_p > 0)
    hit = (((iou >= iou_threshold) | inside) & real[:, None, :]).any(-1)
    return torch.where(hit & (label_target == 0), torch.full_like(label_target, -1), label_target)


def check_targets(gt_boxes: Tensor, gt_labels: Tensor, gt_counts: Tensor, batch: int, num_classes: int) -> None:
    """Shape and value checks of a padded ground-truth batch (reads the data: one host sync).

    Raises ``ValueError`` naming the problem: wrong shapes, counts outside ``[0, G]``, real labels
    outside ``1..num_classes-1`` (0 is background), or non-finite real boxes.
    """
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4 or gt_boxes.shape[0] != batch:
        raise ValueError(f"gt_boxes must be [B={batch},G,4], got {tuple(gt_boxes.shape)}")
    g = gt_boxes.shape[1]
    if tuple(gt_labels.shape) != (batch, g):
        raise ValueError(f"gt_labels must be [B={batch},G={g}], got {tuple(gt_labels.shape)}")
    if tuple(gt_counts.shape) != (batch,):
        raise ValueError(f"gt_counts must be [B={batch}], got {tuple(gt_counts.shape)}")
    if gt_labels.dtype.is_floating_point or gt_counts.dtype.is_floating_point:
        raise ValueError("gt_labels and gt_counts must be integer tensors")
    counts = gt_counts.detach().cpu()
    if bool(((counts < 0) | (counts > g)).any()):
        raise ValueError(f"gt_counts must be in [0, {g}], got {counts.tolist()}")
    real = torch.arange(g)[None, :] < counts[:, None]
    labels = gt_labels.detach().cpu()
    bad = real & ((labels < 1) | (labels >= num_classes))
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"gt_labels out of range: image {b}, ground truth {i} has label "
                         f"{int(labels[b, i])}; real labels must be in 1..{num_classes - 1} "
                         f"(num_classes={num_classes}, 0 is background)")
    finite = torch.isfinite(gt_boxes.detach().cpu()).all(-1)
    if bool((real & ~finite).any()):
        b, i = (int(v) for v in (real & ~finite).nonzero()[0])
        raise ValueError(f"gt_boxes has a non-finite box: image {b}, ground truth {i}")


def check_finite(losses: dict[str, Tensor]) -> None:
    """Raise ``FloatingPointError`` naming the non-finite term (one host sync)."""
    bad = [name for name in ("loc", "conf") if not bool(torch.isfinite(losses[name]))]
    if bad:
        values = ", ".join(f"{k}={float(losses[k])}" for k in ("loc", "conf"))
        raise FloatingPointError(
            f"non-finite {' and '.join(bad)} loss ({values}): check the predictions for NaN/inf "
            "(diverged training, learning rate) and the ground-truth boxes (zero width or height)")
