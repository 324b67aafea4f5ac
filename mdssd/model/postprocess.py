"""Detection output: the backend's ``ssd_postprocess`` with the model's priors and settings.

This is the boundary of the exported network: ``torch.export`` keeps it as the ``mdssd`` op (it
has a fake kernel), ONNX export stops before it (ONNX runtimes do not know our op), so an ONNX
user runs softmax/decode/NMS with ``loc``, ``conf`` and ``model.priors`` on their side.
"""

from __future__ import annotations

from torch import Tensor

from .backend import Backend
from .config import ModelConfig


def detect(backend: Backend, loc: Tensor, conf: Tensor, priors: Tensor, config: ModelConfig):
    """Returns fixed-shape ``boxes [B,k,4]``, ``scores [B,k]``, ``labels [B,k]`` (-1 padding) and
    ``counts [B]`` with ``k = config.postprocess.keep_top_k``; boxes xyxy in [0, 1]."""
    p = config.postprocess
    return backend.ssd_postprocess(
        loc.detach().to(priors.dtype), conf.detach().to(priors.dtype), priors,
        config.variance_xy, config.variance_wh, p.score_threshold, p.iou_threshold,
        p.top_k_per_class, p.keep_top_k)
