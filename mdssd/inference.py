"""Shared by ``mdssd.eval`` and ``mdssd.detect``: load a trained model, run it on images."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .data.transforms import Resize
from .metrics import Detections

__all__ = ["load_model", "predict", "predict_images"]


def read_checkpoint(path: str | Path):
    """A checkpoint's contents. Training checkpoints hold RNG states and config objects, so they
    are read with ``weights_only=False``: load only files you trust."""
    return torch.load(path, map_location="cpu", weights_only=False)


def synthetic_val_options(data) -> dict:
    """The synthetic validation set a training checkpoint was scored on (size, seed, image
    sizes), so that ``mdssd.eval`` reproduces the mAP the training run reported; {} for other
    checkpoints."""
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or config.get("dataset") != "synthetic":
        return {}
    options = {"num_images": config.get("synthetic_val_images"), "seed": config.get("data_seed"),
               "min_size": config.get("synthetic_min_size"), "max_size": config.get("synthetic_max_size")}
    options.update(synthetic_shape_options(config))
    return {k: v for k, v in options.items() if v is not None}


def synthetic_shape_options(config: dict) -> dict:
    """The synthetic generator's object options of a training config (as a dict)."""
    options = {}
    if config.get("synthetic_object_sizes") is not None:
        options["object_sizes"] = tuple(float(v) for v in config["synthetic_object_sizes"])
    if config.get("synthetic_objects") is not None:
        options["objects"] = tuple(int(v) for v in config["synthetic_objects"])
    return options


def load_model(path: str | Path | dict, backend: str = "ext", device: str | torch.device = "cpu"):
    """``(model, class_names or None)`` from any checkpoint mdssd writes (a path, or its contents
    already read with :func:`read_checkpoint`).

    Accepted layouts: :func:`mdssd.model.save_checkpoint` files (``format: mdssd-checkpoint``),
    training checkpoints (``model_config``, ``model``, ``class_names``), and the plain
    ``{"model": state_dict, "config": {"name", "num_classes", ...}}``.
    """
    from .model import Detector, ModelConfig, build_model

    data = path if isinstance(path, dict) else read_checkpoint(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an mdssd checkpoint (top level is {type(data).__name__})")
    class_names = data.get("class_names")
    if data.get("format") == "mdssd-checkpoint":
        model, state = Detector(ModelConfig.from_dict(data["config"]), backend), data["state_dict"]
    elif isinstance(data.get("model_config"), dict) and "model" in data:
        model, state = Detector(ModelConfig.from_dict(data["model_config"]), backend), data["model"]
    elif isinstance(data.get("config"), dict) and "name" in data["config"] and "model" in data:
        config = dict(data["config"])
        name, num_classes = config.pop("name"), config.pop("num_classes")
        batch_norm = config.pop("batch_norm", False)
        model = build_model(name, num_classes=num_classes, backend=backend, batch_norm=batch_norm)
        state = data["model"]
    else:
        raise ValueError(f"{path}: unrecognised checkpoint layout (keys {sorted(data)})")
    model.load_state_dict(state)
    model.to(device).eval()
    return model, (tuple(class_names) if class_names else None)


def _to_detections(boxes, scores, labels, counts, sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """Fixed-shape model output -> per-image :class:`Detections` in pixels of each image."""
    out = []
    boxes, scores, labels, counts = (t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                                     for t in (boxes, scores, labels, counts))
    for b, (width, height) in enumerate(sizes):
        n = int(counts[b])
        scale = np.array([width, height, width, height], dtype=np.float64)
        out.append(Detections(boxes[b, :n].astype(np.float64) * scale, scores[b, :n], labels[b, :n]))
    return out


@torch.no_grad()
def run_batch(model, images: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    loc, conf = model(images)
    return _to_detections(*model.postprocess(loc, conf), sizes)


class _Images(torch.utils.data.Dataset):
    """Source images resized for the model, with their index (no augmentation)."""

    def __init__(self, source, size: int):
        self.source, self.resize = source, Resize(size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, _, _ = self.resize(self.source.image(index), np.zeros((0, 4)), np.zeros(0, np.int64))
        return image, index


@torch.no_grad()
def predict(model, source, batch_size: int = 8, num_workers: int = 0,
            device: str | torch.device | None = None) -> list[Detections]:
    """Detections for every image of ``source`` (a :class:`~mdssd.data.base.DetectionSource`),
    in pixel coordinates of the stored images, in source order."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = torch.utils.data.DataLoader(_Images(source, model.config.image_size), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False)
    model.eval()
    detections = []
    for images, indices in loader:
        annotations = [source.annotation(int(i)) for i in indices]
        detections += run_batch(model, images.to(device), [(a.width, a.height) for a in annotations])
    return detections


def predict_images(model, images: Iterable[np.ndarray], batch_size: int = 8) -> list[Detections]:
    """Detections for in-memory ``uint8 [H,W,3]`` images (pixel coordinates of each)."""
    device = next(model.parameters()).device
    resize = Resize(model.config.image_size)
    out, batch, sizes = [], [], []
    for image in list(images) + [None]:
        if image is not None:
            batch.append(resize(image, np.zeros((0, 4)), np.zeros(0, np.int64))[0])
            sizes.append((image.shape[1], image.shape[0]))
        if batch and (image is None or len(batch) == batch_size):
            out += run_batch(model, torch.stack(batch).to(device), sizes)
            batch, sizes = [], []
    return out
