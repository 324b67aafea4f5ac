"""Reading a trained model back: any checkpoint layout mdssd writes -> ``(model, class_names)``."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["read_checkpoint", "load_model", "synthetic_val_options", "synthetic_shape_options"]


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
    from ..model import Detector, ModelConfig, build_model

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
