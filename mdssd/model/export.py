"""Exporting the network part (images -> loc, conf); the post-process is the boundary.

``torch.export`` keeps the Fusion merge as ``torch.ops.mdssd.l2norm_sum`` (ext backend), so the
exported program runs our kernel. ONNX has no such op: :func:`export_onnx` exports with the
``reference`` backend, whose merge is plain ATen (norm, clamp, mul, div, add) and lowers to
standard ONNX ops with the same weights; the model's own backend is restored afterwards.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .detector import Detector


def _example(model: Detector, batch: int) -> torch.Tensor:
    s = model.config.image_size
    p = next(model.parameters())
    return torch.zeros(batch, 3, s, s, dtype=p.dtype, device=p.device)


def export_program(model: Detector, batch: int = 1) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model.forward`` for a fixed batch size."""
    return torch.export.export(model, (_example(model, batch),))


def export_onnx(model: Detector, path: "str | Path", batch: int = 1, opset_version: int = 18) -> None:
    """Write ``model.forward`` as ONNX (inputs ``images``, outputs ``loc``, ``conf``)."""
    backend = model.backend
    model.set_backend("reference")
    try:
        torch.onnx.export(model, (_example(model, batch),), str(path), input_names=["images"],
                          output_names=["loc", "conf"], opset_version=opset_version, dynamo=True)
    finally:
        model.set_backend(backend)
