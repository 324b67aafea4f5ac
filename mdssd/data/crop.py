"""Native-resolution crop training (``--crop``): windows of the model's input size cut out of
large images instead of resizing whole images.

A 20 px object in a 2048 px image is 1-2 px once the image is resized to a 128 px input; in a
window of 128 source pixels it stays about 20 px, which is also how sliced inference
(:mod:`mdssd.tiling`) will show it to the model.

:class:`NativeCrop` draws, from the item's ``numpy`` generator only (so an item is a function of
its seed and runs resume exactly):

* a scale ``s`` (output pixels per source pixel), log-uniform in ``scale_range`` (modest jitter
  around native resolution); the window's side in the source is ``size / s``;
* with probability ``object_prob`` (and when the image has objects) a window that contains one
  ground-truth box picked uniformly (its position uniform among the windows that hold the whole
  box; centred on it when the box is larger than the window), else a uniformly placed window:
  background crops, so the model also sees empty regions;
* an image smaller than the window along a side is placed at a random offset inside it and the
  rest is padded with the mean colour (0 after normalisation), i.e. padded at native
  resolution, never upscaled beyond the scale jitter.

A box cut by the window edge is kept (clipped) when at least ``min_visible`` of its area remains;
a box with less but some area inside is returned as an *ignore* region: the loss neither trains
priors on it as an object nor pushes them to background (:func:`mdssd.model.loss.ignore_priors`).
Then mirror and photometric distortion as :class:`~mdssd.data.transforms.SSDAugment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .transforms import _photometric, _render, to_tensor

__all__ = ["NativeCrop", "crop_boxes", "windows_per_image"]

# Default number of crop windows per image and epoch: at most this many (a 20,000 px DOTA image
# holds thousands of 300 px windows; an epoch of that many items would only delay evaluation).
MAX_DEFAULT_WINDOWS = 64


def crop_boxes(boxes: np.ndarray, window: np.ndarray, min_visible: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``boxes [n,4]`` (pixels) by how much of each lies in ``window`` (xyxy pixels).

    Returns ``(kept, keep_mask, ignored)``: the boxes with at least ``min_visible`` of their area
    inside, clipped to the window; the mask of those; the clipped remainders of the boxes with
    some, but less, area inside. Coordinates stay in source pixels.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = np.clip(boxes, window[[0, 1, 0, 1]], window[[2, 3, 2, 3]])
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    visible = np.where(area > 0, inside / np.where(area > 0, area, 1), 0.0)
    keep = (visible >= min_visible) & (inside > 0)
    ignore = (inside > 0) & ~keep
    return clipped[keep], keep, clipped[ignore]


def windows_per_image(source, size: int, limit: int = MAX_DEFAULT_WINDOWS, sample: int = 1000) -> int:
    """Crop windows per image and epoch when none is asked for: the median image area over the
    window area (``size^2``, native resolution), rounded, in ``[1, limit]``; so an epoch shows
    about every pixel once. The median is taken over at most ``sample`` images spread evenly
    over the set (annotations only: image headers, no decoding)."""
    n = len(source)
    if n == 0:
        return 1
    picks = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))
    areas = [source.annotation(int(i)).width * source.annotation(int(i)).height for i in picks]
    return int(np.clip(round(float(np.median(areas)) / (size * size)), 1, limit))


def _axis_start(rng: np.random.Generator, length: float, side: float, box: tuple[float, float] | None) -> float:
    """Start of a window of ``side`` along an image side of ``length`` (see the module docstring)."""
    u = rng.random()
    if length <= side:  # the image fits: place it at a random offset inside the window (padding)
        return -(side - length) * u
    if box is None:
        return (length - side) * u
    lo, hi = max(0.0, box[1] - side), min(length - side, box[0])
    if lo > hi:  # the box is larger than the window: centre the window on it
        return float(np.clip((box[0] + box[1] - side) / 2, 0.0, length - side))
    return lo + (hi - lo) * u


@dataclass
class NativeCrop:
    """Training transform ``(uint8 image, pixel boxes, labels, rng) -> (tensor, boxes01, labels,
    ignore01)``: a ``size x size`` window at (about) native resolution; see the module docstring."""

    size: int = 300
    scale_range: tuple[float, float] = (0.8, 1.25)
    object_prob: float = 0.8
    min_visible: float = 0.6
    mirror_prob: float = 0.5
    photometric: bool = True
    brightness: float = 32.0
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue_degrees: float = 18.0

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"crop scale range must be 0 < low <= high, got {self.scale_range}")
        if not 0 <= self.object_prob <= 1:
            raise ValueError(f"crop object probability must be in [0, 1], got {self.object_prob}")
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"crop min visible fraction must be in (0, 1], got {self.min_visible}")

    def window(self, rng: np.random.Generator, width: int, height: int, boxes: np.ndarray) -> np.ndarray:
        """The crop window (xyxy, source pixels; may extend past a side smaller than it)."""
        lo, hi = (float(v) for v in self.scale_range)
        scale = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rng.random())
        side = self.size / scale
        around = rng.random() < self.object_prob and len(boxes) > 0
        box = boxes[int(rng.integers(len(boxes)))] if around else None
        # Whole-pixel starts: at scale 1 the crop is an exact copy of source pixels.
        x1 = math.floor(_axis_start(rng, width, side, None if box is None else (box[0], box[2])))
        y1 = math.floor(_axis_start(rng, height, side, None if box is None else (box[1], box[3])))
        return np.array([x1, y1, x1 + side, y1 + side], dtype=np.float64)

    takes_ignore = True  # DetectionDataset passes crowd regions as ``ignore``

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 ignore: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ignore``: pixel regions (crowd) whose part inside the window joins the cut boxes'
        ignore regions; the window is drawn without regard to them."""
        height, width = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        window = self.window(rng, width, height, boxes)
        kept, keep, ignored = crop_boxes(boxes, window, self.min_visible)
        if ignore is not None and len(ignore):
            regions = np.clip(np.asarray(ignore, dtype=np.float64).reshape(-1, 4), window[[0, 1, 0, 1]],
                              window[[2, 3, 2, 3]])
            regions = regions[(regions[:, 2] > regions[:, 0]) & (regions[:, 3] > regions[:, 1])]
            ignored = np.concatenate([ignored, regions])
        labels = labels[keep]
        side = window[2] - window[0]
        origin = window[[0, 1, 0, 1]]
        kept, ignored = (kept - origin) / side, (ignored - origin) / side
        out = _render(image, (0.0, 0.0), window, self.size)
        if rng.random() < self.mirror_prob:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
            kept, ignored = (np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1) for b in (kept, ignored))
        if self.photometric:
            out = _photometric(out, rng, self.brightness, self.contrast, self.saturation, self.hue_degrees, False)

        def as_tensor(b: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.clip(b, 0.0, 1.0).astype(np.float32).reshape(-1, 4))

        return to_tensor(np.asarray(out)), as_tensor(kept), torch.from_numpy(labels), as_tensor(ignored)
