"""The backend table: which implementation of the three model-level ops the modules call.

``ext`` runs the compiled kernels (``torch.ops.mdssd.*`` through :mod:`mdssd.ops`), ``reference``
the pure-PyTorch statements of the same semantics (:mod:`mdssd.reference`). Both take the same
arguments, so a module holds a :class:`Backend` and never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import ops, reference


@dataclass(frozen=True)
class Backend:
    name: str
    l2norm_sum: Callable  # Fusion Block merge
    match_encode: Callable  # loss targets
    ssd_postprocess: Callable  # detections
    box_iou: Callable  # ignore regions in the loss (crop training)


BACKENDS = {
    "ext": Backend("ext", ops.l2norm_sum, ops.match_encode, ops.ssd_postprocess, ops.box_iou),
    "reference": Backend(
        "reference", reference.l2norm_sum, reference.match_encode, reference.ssd_postprocess,
        reference.box_iou,
    ),
}


def get_backend(backend: "str | Backend") -> Backend:
    if isinstance(backend, Backend):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend]
