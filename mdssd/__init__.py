"""mdssd: MDSSD small-object detection on hand-written CPU/CUDA kernels."""

from . import ops, reference

__version__ = "0.1.0"
__all__ = ["ops", "reference", "load", "__version__"]


def load(weights, device=None, backend: str = "ext", class_names=None, runner=None):
    """A :class:`mdssd.inference.api.Detector` from a checkpoint: ``mdssd.load("best.pt").predict(
    "scene.tif", tile=512)`` (see :mod:`mdssd.inference.api`)."""
    from .inference.api import load as _load

    return _load(weights, device=device, backend=backend, class_names=class_names, runner=runner)
