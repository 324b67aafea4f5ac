"""Our own checkpoints: the config as plain data plus the state dict, loadable with
``torch.load(..., weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import atomic_save
from .backend import Backend
from .config import ModelConfig
from .detector import Detector

FORMAT = "mdssd-checkpoint"
VERSION = 1


def save_checkpoint(model: Detector, path: "str | Path", **extra) -> None:
    """Write ``{"format", "version", "config", "state_dict", "extra"}``; ``extra`` holds whatever the
    caller adds (epoch, optimizer state, ...) as long as ``weights_only`` loading accepts it."""
    # Atomic (temporary file, fsync, os.replace): a crash never leaves a truncated checkpoint.
    atomic_save({"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
                 "state_dict": model.state_dict(), "extra": extra}, path)


def load_checkpoint(path: "str | Path", backend: "str | Backend" = "ext", map_location="cpu") -> Detector:
    """Rebuild the model from the stored config and load its weights (strictly). The ``extra``
    dict is ``torch.load(path, weights_only=True)["extra"]``."""
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mdssd checkpoint (no format={FORMAT!r} field)")
    if data["version"] != VERSION:
        raise ValueError(f"{path}: checkpoint version {data['version']}, this code reads {VERSION}")
    model = Detector(ModelConfig.from_dict(data["config"]), backend)
    model.load_state_dict(data["state_dict"])
    return model
