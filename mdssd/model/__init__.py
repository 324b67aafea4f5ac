"""MDSSD and SSD detectors on the mdssd ops (see ``docs/CONTRACTS.md``).

``build_model(name, num_classes, backend, batch_norm)`` builds a preset from
:mod:`mdssd.model.config`; ``python -m mdssd.model <preset>`` prints its summary.
"""

from .backend import BACKENDS, Backend, get_backend
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, ModelConfig, get_config
from .detector import Detector, build_model
from .export import export_onnx, export_program
from .priors import make_priors
from .resnet import load_resnet_imagenet
from .vgg import load_vgg16_imagenet

__all__ = [
    "BACKENDS", "Backend", "Detector", "ModelConfig", "PRESETS", "build_model", "export_onnx",
    "export_program", "get_backend", "get_config", "load_checkpoint", "load_resnet_imagenet", "load_vgg16_imagenet",
    "make_priors", "save_checkpoint",
]
