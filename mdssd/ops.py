"""Typed, documented wrappers of the compiled ops (``torch.ops.mdssd.*``).

Importing this module loads the extension ``mdssd._C`` (which registers the CPU kernels, and the
CUDA kernels in a CUDA build) and registers, from Python, the fake kernels used by
``torch.compile``/``torch.export`` and the autograd formula of :func:`l2norm_sum`.

Semantics (the executable statement is :mod:`mdssd.reference`): boxes are ``xyxy``, priors
``cx, cy, w, h``, label 0 is background, inverted boxes have area 0, the IoU of a pair with an
empty union is 0, ranks are by descending score with ties to the lower index.

Argument checks (shapes, dtypes, devices, scalar ranges) raise ``RuntimeError`` naming the op and
the argument on every device. Value checks read the data and so run on CPU only: there, NaN or
infinite boxes/scores, ``gt_counts`` outside ``[0, G]`` and real ground-truth labels below 1 raise
``RuntimeError``. On CUDA such values are not checked (a check would synchronise the host); the
kernels stay memory-safe (counts are clamped to ``[0, G]``) but results involving non-finite
values are unspecified. What the CUDA kernels do today: ``nms`` ranks every NaN score first (tied
by index, as the reference's sort); ``ssd_postprocess`` never keeps a prior with a NaN or ``+inf``
logit (its scores are NaN and fail the threshold), and a NaN ``loc`` gives a NaN box.

A box with a NaN coordinate has IoU 0 with every box on every backend, as in the reference (its
area and union are NaN): it neither suppresses nor is suppressed. ``ssd_postprocess`` can decode
one from finite inputs (a zero-size prior times an overflowing ``exp``, or a centre and size
that both overflow); such a detection is kept like any other, with its NaN box.

Scalar arguments are checked as the kernels use them: rounded to float32 for float32 data (and
for ``l2norm_sum``'s float32 accumulation of float16/bfloat16), so ``eps=1e-50`` (0 in float32)
is rejected as not positive. ``l2norm_sum`` checks no values on any device: a NaN channel makes its
whole pixel NaN, as in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from . import _C  # noqa: F401  (loads the kernels)
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "mdssd's compiled ops are not built: run `pip install --no-build-isolation -e .` in the "
        f"repository (torch must be installed first). Original error: {error}"
    ) from error

__all__ = [
    "box_iou",
    "match_encode",
    "l2norm_sum",
    "nms",
    "batched_nms",
    "ssd_postprocess",
    "cuda_available",
    "cuda_emu_available",
]


def cuda_available() -> bool:
    """Whether this build has CUDA kernels and a CUDA device is present."""
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "mdssd::box_iou", "CUDA"
    )


def cuda_emu_available() -> bool:
    """Whether this is the emulated-CUDA build (``MDSSD_CUDA_EMU=1``, docs/cuda_emu.md): the CUDA
    kernels and glue then run on the CPU, on the torch device ``"cuda_emu"``."""
    return torch._C._get_privateuse1_backend_name() == "cuda_emu" and (
        torch._C._dispatch_has_kernel_for_dispatch_key("mdssd::box_iou", "PrivateUse1")
    )


if cuda_emu_available():
    from . import _cuda_emu

    _cuda_emu.register()


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``[N,4]`` or ``[B,N,4]``, float32 or float64.
        boxes2: ``[M,4]`` or ``[B,M,4]`` (same rank, dtype and device as ``boxes1``).

    Returns:
        ``[N,M]`` or ``[B,N,M]`` IoUs in the boxes' dtype; 0 where the union is empty.
    """
    return torch.ops.mdssd.box_iou.default(boxes1, boxes2)


def match_encode(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_counts: Tensor,
    iou_threshold: float = 0.5,
    variance_xy: float = 0.1,
    variance_wh: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """SSD prior matching and box encoding for a batch (see :func:`mdssd.reference.match_encode`).

    Args:
        priors: ``[P,4]`` cxcywh, float32/float64, positive sizes.
        gt_boxes: ``[B,G,4]`` xyxy, same dtype; only the first ``gt_counts[b]`` rows are real.
        gt_labels: ``[B,G]`` int64, real labels ``>= 1``.
        gt_counts: ``[B]`` int64 in ``[0, G]``.
        iou_threshold: in ``(0, 1]``.

    Returns:
        ``loc [B,P,4]`` (priors' dtype; 0 for background) and ``labels [B,P]`` (int64).
    """
    return torch.ops.mdssd.match_encode.default(
        priors, gt_boxes, gt_labels, gt_counts, iou_threshold, variance_xy, variance_wh
    )


def l2norm_sum(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, eps: float = 1e-10) -> Tensor:
    """Fusion Block merge: ``scale_a * a / max(||a||, eps) + scale_b * b / max(||b||, eps)``.

    Norms are over channels per pixel, accumulated in float32 (float64 for float64 inputs).
    Differentiable in all four tensors through its own backward kernel.

    Args:
        a, b: ``[B,C,H,W]``, float16, bfloat16, float32 or float64 (same dtype), NCHW or
            channels_last (the output follows ``a``'s memory format).
        scale_a, scale_b: ``[C]``, float32 or ``a``'s dtype.
        eps: positive lower bound of the norms.
    """
    return torch.ops.mdssd.l2norm_sum.default(a, b, scale_a, scale_b, eps)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS with torchvision's semantics; float32/float64 boxes ``[N,4]`` and scores ``[N]``.

    Returns the kept indices (int64) in rank order (descending score, ties to lower index).
    """
    return torch.ops.mdssd.nms.default(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each value of ``idxs`` (int64 ``[N]``); kept indices in global rank order."""
    return torch.ops.mdssd.batched_nms.default(boxes, scores, idxs, iou_threshold)


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
    """SSD detection output with fixed shapes (see :func:`mdssd.reference.ssd_postprocess`).

    Args:
        loc: ``[B,P,4]`` offsets; conf: ``[B,P,K]`` logits; priors: ``[P,4]`` cxcywh; all float32
            or all float64.

    Returns:
        ``boxes [B,keep_top_k,4]`` (clipped to ``[0, 1]``), ``scores [B,keep_top_k]``,
        ``labels [B,keep_top_k]`` (int64, -1 for padding) and ``counts [B]`` (int64).
    """
    return torch.ops.mdssd.ssd_postprocess.default(
        loc, conf, priors, variance_xy, variance_wh, score_threshold, iou_threshold,
        top_k_per_class, keep_top_k,
    )


# ---------------------------------------------------------------------------------------------
# Fake kernels: output metadata only, for torch.compile / torch.export / FakeTensor.


@torch.library.register_fake("mdssd::box_iou")
def _box_iou_fake(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    torch._check(boxes1.dim() in (2, 3) and boxes2.dim() == boxes1.dim(), lambda: "box_iou: bad rank")
    return boxes1.new_empty((*boxes1.shape[:-1], boxes2.shape[-2]))


@torch.library.register_fake("mdssd::match_encode")
def _match_encode_fake(priors, gt_boxes, gt_labels, gt_counts, iou_threshold, variance_xy, variance_wh):
    batch, num_priors = gt_boxes.shape[0], priors.shape[0]
    return priors.new_empty((batch, num_priors, 4)), gt_labels.new_empty((batch, num_priors))


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else torch.contiguous_format


@torch.library.register_fake("mdssd::l2norm_sum")
def _l2norm_sum_fake(a, b, scale_a, scale_b, eps):
    return torch.empty_like(a, memory_format=_memory_format(a))


@torch.library.register_fake("mdssd::l2norm_sum_backward")
def _l2norm_sum_backward_fake(grad_out, a, b, scale_a, scale_b, eps):
    fmt = _memory_format(a)
    return (
        torch.empty_like(a, memory_format=fmt),
        torch.empty_like(b, memory_format=fmt),
        torch.empty_like(scale_a),
        torch.empty_like(scale_b),
    )


def _kept_indices_fake(boxes: Tensor) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.long)


@torch.library.register_fake("mdssd::nms")
def _nms_fake(boxes, scores, iou_threshold):
    return _kept_indices_fake(boxes)


@torch.library.register_fake("mdssd::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return _kept_indices_fake(boxes)


@torch.library.register_fake("mdssd::ssd_postprocess")
def _ssd_postprocess_fake(loc, conf, priors, variance_xy, variance_wh, score_threshold,
                          iou_threshold, top_k_per_class, keep_top_k):
    batch = loc.shape[0]
    return (
        loc.new_empty((batch, keep_top_k, 4)),
        conf.new_empty((batch, keep_top_k)),
        loc.new_empty((batch, keep_top_k), dtype=torch.long),
        loc.new_empty((batch,), dtype=torch.long),
    )


# ---------------------------------------------------------------------------------------------
# Autograd of l2norm_sum: its own backward op (CPU and CUDA kernels), not autograd of the forward.


def _l2norm_sum_setup_context(ctx, inputs, output):
    a, b, scale_a, scale_b, eps = inputs
    ctx.save_for_backward(a, b, scale_a, scale_b)
    ctx.eps = eps


def _l2norm_sum_backward(ctx, grad_out):
    a, b, scale_a, scale_b = ctx.saved_tensors
    grad_a, grad_b, grad_sa, grad_sb = torch.ops.mdssd.l2norm_sum_backward.default(
        grad_out, a, b, scale_a, scale_b, ctx.eps
    )
    return grad_a, grad_b, grad_sa, grad_sb, None


torch.library.register_autograd(
    "mdssd::l2norm_sum", _l2norm_sum_backward, setup_context=_l2norm_sum_setup_context
)
