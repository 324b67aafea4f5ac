"""Step 4: tiles -> normalised model inputs -> fixed-shape batches through the model.

Every forward sees exactly ``[batch_size, 3, S, S]`` (the last batch is padded with zero images),
so a runner may be a CUDA graph or a compiled module captured for that one shape. A *runner* is
any callable ``runner(images [B,3,S,S] float32) -> (boxes [B,k,4] in [0,1], scores [B,k],
labels [B,k] (-1: none), counts [B])``; :class:`ModelRunner` (the model's forward and its
fixed-shape postprocess) is the default, and the only place the model is called.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Runner", "ModelRunner", "normalise", "tile_inputs", "run_fixed_batches"]

Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class ModelRunner:
    """``model(images)`` (under autocast to ``amp_dtype`` when given) then ``model.postprocess``,
    without autograd: the eager runner, the one every other runner (:mod:`mdssd.cuda_graphs`) is
    compared with. The post-processing runs outside autocast, in the priors' dtype (it casts
    ``loc``/``conf`` itself, so float32 priors give float32 post-processing of a bfloat16 forward).
    The model's train/eval mode is left as it is (:func:`mdssd.cuda_graphs.eager_runner` sets eval)."""

    def __init__(self, model, amp_dtype: torch.dtype | None = None):
        self.model = model
        self.amp_dtype = amp_dtype

    def __call__(self, images: torch.Tensor):
        with torch.no_grad():
            if self.amp_dtype is None:
                loc, conf = self.model(images)
            else:
                with torch.autocast(images.device.type, dtype=self.amp_dtype):
                    loc, conf = self.model(images)
            return self.model.postprocess(loc, conf)


def as_runner(model_or_runner) -> Runner:
    """A runner for a model (anything with ``postprocess``), or the runner itself."""
    return ModelRunner(model_or_runner) if hasattr(model_or_runner, "postprocess") else model_or_runner


def normalise(image: torch.Tensor) -> torch.Tensor:
    """``uint8 [H,W,3]`` on the device -> normalised float32 ``[3,H,W]`` (as ``to_tensor``)."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (image.permute(2, 0, 1).float() / 255.0 - mean) / std


def resize_inputs(tiles: torch.Tensor, tile: int, side: int) -> torch.Tensor:
    """``[T,3,tile,tile]`` -> ``[T,3,side,side]`` (bilinear, antialiased when shrinking)."""
    if tile == side:
        return tiles
    return F.interpolate(tiles, size=(side, side), mode="bilinear", align_corners=False, antialias=tile > side)


def tile_inputs(pixels: Sequence[torch.Tensor], tile: int, side: int) -> torch.Tensor:
    """Model inputs ``[T,3,side,side]`` of tiles read from a raster: ``uint8 [h,w,3]`` with
    ``h, w <= tile`` (a window clipped at the image's right or bottom border), normalised, padded
    with 0 (the mean colour) to ``tile x tile``, resized to ``side`` (per tile: the same values as
    resizing them together)."""
    out = []
    for image in pixels:  # one at a time: a batch of large tiles in float32 would be GBs
        height, width = image.shape[:2]
        out.append(resize_inputs(F.pad(normalise(image), (0, tile - width, 0, tile - height))[None], tile, side))
    return torch.cat(out)


def whole_image_input(image: torch.Tensor, side: int) -> torch.Tensor:
    """``[1,3,side,side]``: the whole ``uint8 [H,W,3]`` image resized (the full-image pass)."""
    return F.interpolate(normalise(image)[None], size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)


def run_fixed_batches(runner: Runner, inputs: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """``runner`` over ``inputs`` in chunks of exactly ``batch_size`` (the last one padded with
    zero images), so every forward has the same shape; outputs of the real inputs only."""
    parts = []
    total = inputs.shape[0]
    for start in range(0, total, batch_size):
        chunk = inputs[start:start + batch_size]
        real = chunk.shape[0]
        if real < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros(batch_size - real, *chunk.shape[1:])])
        parts.append([t[:real] for t in runner(chunk)])
    return tuple(torch.cat([p[k] for p in parts]) for k in range(4))
