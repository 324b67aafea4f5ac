"""mdssd: MDSSD small-object detection on hand-written CPU/CUDA kernels."""

from . import ops, reference

__version__ = "0.1.0"
__all__ = ["ops", "reference", "__version__"]
