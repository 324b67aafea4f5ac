"""SSD augmentation and the plain resize used for evaluation, in numpy + Pillow.

Both produce the item of docs/CONTRACTS.md: float32 ``[3,S,S]`` normalised with the ImageNet
mean/std, boxes float32 ``[n,4]`` xyxy in ``[0,1]``, labels int64 ``[n]``.

:class:`SSDAugment` follows SSD's recipe (photometric distortion, zoom-out/expand, min-IoU random
crop, mirror, resize) with two deliberate differences, both for speed:

* **one resample**: expand, crop and resize are composed analytically and the image is resampled
  once, straight from the source photo to ``S x S`` (Pillow's antialiased ``resize`` of the
  visible region, pasted on a mean-coloured canvas). A 1024 px image expanded 4x is never built;
  the cost is O(S^2) plus the area read from the source.
* **photometric distortion after the resize**, as one affine colour map applied by Pillow in
  uint8: brightness, contrast, and saturation/hue as a scaling/rotation of the chroma plane in
  YIQ space (linear, unlike SSD's HSV round trip). It is applied to the ``S x S`` output, so the
  expand fill is distorted too (it stays a flat colour). SSD's random channel swap is off by default: in sign data colour
  *is* the class (red vs blue discs).

The crop is Caffe-SSD's sampler: a window with side in ``[0.3, 1]`` of the (expanded) image and
aspect ratio in ``[0.5, 2]`` is accepted when its best IoU with a ground-truth box is at least the
chosen minimum (one of ``min_ious``; ``None`` = keep the whole image, ``0.0`` = any window) and it
contains at least one box centre; up to ``max_trials`` windows are drawn, else the whole image is
kept. Boxes whose centre lies strictly inside the window are kept and clipped to it, the others
dropped. With tiny objects the larger minimum IoUs are rarely reachable, which is SSD's behaviour.

Randomness comes only from the ``numpy.random.Generator`` passed in, so an item is a function of
its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SSDAugment", "Resize", "to_tensor", "sample_crop"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_FILL = tuple(int(round(v * 255)) for v in IMAGENET_MEAN)  # expand fill: 0 after normalisation

# RGB <-> YIQ (NTSC). Hue is a rotation of the (I, Q) chroma plane, saturation its scaling.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


_SCALE = (1 / (255 * IMAGENET_STD)).astype(np.float32)
_SHIFT = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [S,S,3]`` RGB -> normalised float32 ``[3,S,S]``: ``(x/255 - mean) / std``.

    Plain numpy, one channel at a time: single-threaded on purpose (loader workers share the
    cores with training, and torch's intra-op threads thrash on a busy machine).
    """
    image = np.asarray(image)
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.multiply(image[:, :, c], _SCALE[c], out=out[c], casting="unsafe")
        out[c] -= _SHIFT[c]
    return torch.from_numpy(out)


def _render(image: np.ndarray, offset: tuple[float, float], window: np.ndarray, size: int) -> Image.Image:
    """Resample ``window`` (xyxy in a canvas where ``image`` sits at ``offset``) to ``size^2``.

    Canvas pixels outside the image get the ImageNet mean colour.
    """
    height, width = image.shape[:2]
    wx1, wy1, wx2, wy2 = window
    sx, sy = size / (wx2 - wx1), size / (wy2 - wy1)  # output pixels per canvas pixel
    # Visible part of the image in canvas coordinates, then in output pixels (rounded), then the
    # exact source region that maps onto those whole output pixels.
    vx1, vy1 = max(wx1, offset[0]), max(wy1, offset[1])
    vx2, vy2 = min(wx2, offset[0] + width), min(wy2, offset[1] + height)
    dx1, dy1 = int(round((vx1 - wx1) * sx)), int(round((vy1 - wy1) * sy))
    dx2, dy2 = int(round((vx2 - wx1) * sx)), int(round((vy2 - wy1) * sy))
    if dx2 <= dx1 or dy2 <= dy1:  # the window shows only fill (cannot happen with a box inside)
        return Image.new("RGB", (size, size), _FILL)
    box = (
        min(max(wx1 + dx1 / sx - offset[0], 0.0), width), min(max(wy1 + dy1 / sy - offset[1], 0.0), height),
        min(max(wx1 + dx2 / sx - offset[0], 0.0), width), min(max(wy1 + dy2 / sy - offset[1], 0.0), height),
    )
    patch = Image.fromarray(image).resize((dx2 - dx1, dy2 - dy1), Image.BILINEAR, box=box)
    if (dx1, dy1, dx2, dy2) == (0, 0, size, size):
        return patch
    canvas = Image.new("RGB", (size, size), _FILL)
    canvas.paste(patch, (dx1, dy1))
    return canvas


def _iou_windows(windows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU ``[T,n]`` between crop windows ``[T,4]`` and boxes ``[n,4]``."""
    lt = np.maximum(windows[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(windows[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_w = np.prod(windows[:, 2:] - windows[:, :2], axis=1)[:, None]
    area_b = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)[None, :]
    union = area_w + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _centres_inside(windows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[T,n]``: box centre strictly inside the window (SSD's rule)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return ((windows[:, None, 0] < centres[None, :, 0]) & (centres[None, :, 0] < windows[:, None, 2])
            & (windows[:, None, 1] < centres[None, :, 1]) & (centres[None, :, 1] < windows[:, None, 3]))


def sample_crop(rng: np.random.Generator, width: float, height: float, boxes: np.ndarray,
                min_iou: float | None, max_trials: int = 50, min_scale: float = 0.3,
                aspect_range: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """Pick a crop window (xyxy, float64) in a ``width x height`` image; see the module docstring.

    Returns the whole image when ``min_iou is None`` or when no trial is acceptable. All trials
    are drawn at once (vectorised) and the first acceptable one is taken, so the result is the same
    as a trial-by-trial loop over the same random numbers.
    """
    whole = np.array([0.0, 0.0, width, height])
    if min_iou is None:
        return whole
    draws = rng.random((max_trials, 4))
    w = width * (min_scale + (1 - min_scale) * draws[:, 0])
    h = height * (min_scale + (1 - min_scale) * draws[:, 1])
    x1 = (width - w) * draws[:, 2]
    y1 = (height - h) * draws[:, 3]
    windows = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
    ok = (h / w >= aspect_range[0]) & (h / w <= aspect_range[1])
    if len(boxes):
        ok &= _iou_windows(windows, boxes).max(axis=1) >= min_iou
        ok &= _centres_inside(windows, boxes).any(axis=1)
    hits = np.flatnonzero(ok)
    return windows[hits[0]] if len(hits) else whole


def _photometric(image: Image.Image, rng: np.random.Generator, brightness: float, contrast: tuple[float, float],
                 saturation: tuple[float, float], hue_degrees: float, channel_swap: bool) -> Image.Image:
    """Random affine colour map (each part with probability 0.5), applied by Pillow in uint8
    with saturation at 0 and 255 (one pass over the image)."""
    on = rng.random(5) < 0.5
    draws = rng.random(4)
    delta = (2 * draws[0] - 1) * brightness if on[0] else 0.0
    alpha = contrast[0] + (contrast[1] - contrast[0]) * draws[1] if on[1] else 1.0
    sat = saturation[0] + (saturation[1] - saturation[0]) * draws[2] if on[2] else 1.0
    theta = np.deg2rad((2 * draws[3] - 1) * hue_degrees) if on[3] else 0.0
    chroma = np.array([[1, 0, 0],
                       [0, sat * np.cos(theta), -sat * np.sin(theta)],
                       [0, sat * np.sin(theta), sat * np.cos(theta)]])
    matrix = alpha * (_YIQ2RGB @ chroma @ _RGB2YIQ)
    if channel_swap and on[4]:
        matrix = matrix[rng.permutation(3)]
    if not on[:4].any() and not (channel_swap and on[4]):
        return image
    affine = np.concatenate([matrix, np.full((3, 1), delta)], axis=1)  # rows: out channel
    return image.convert("RGB", matrix=tuple(float(v) for v in affine.reshape(-1)))


@dataclass
class SSDAugment:
    """Training transform: ``(uint8 image, pixel boxes, labels, rng) -> (tensor, boxes01, labels)``."""

    size: int = 300
    expand_prob: float = 0.5
    max_expand: float = 4.0
    min_ious: Sequence[float | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)
    max_trials: int = 50
    mirror_prob: float = 0.5
    photometric: bool = True
    brightness: float = 32.0
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue_degrees: float = 18.0
    channel_swap: bool = False

    takes_ignore = True  # DetectionDataset passes crowd regions as ``ignore``

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator, ignore: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
        """``ignore`` (pixel boxes, e.g. crowd regions) follow the image through expand, crop and
        mirror and are returned fourth (clipped to the crop, empty ones dropped); the random
        draws do not depend on them."""
        height, width = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        regions = None if ignore is None else np.asarray(ignore, dtype=np.float64).reshape(-1, 4)

        # Zoom out: the image is placed at `offset` in a canvas `ratio` times larger.
        offset, canvas_w, canvas_h = (0.0, 0.0), float(width), float(height)
        if rng.random() < self.expand_prob and self.max_expand > 1:
            ratio = 1 + (self.max_expand - 1) * rng.random()
            canvas_w, canvas_h = width * ratio, height * ratio
            offset = (float((canvas_w - width) * rng.random()), float((canvas_h - height) * rng.random()))
            boxes = boxes + np.array([offset[0], offset[1], offset[0], offset[1]])
            if regions is not None:
                regions = regions + np.array([offset[0], offset[1], offset[0], offset[1]])

        # Min-IoU crop in canvas coordinates.
        min_iou = self.min_ious[rng.integers(len(self.min_ious))]
        window = sample_crop(rng, canvas_w, canvas_h, boxes, min_iou, self.max_trials)
        if len(boxes):
            keep = _centres_inside(window[None], boxes)[0]
            boxes, labels = boxes[keep], labels[keep]
        boxes = np.clip(boxes, window[[0, 1, 0, 1]], window[[2, 3, 2, 3]]) - window[[0, 1, 0, 1]]
        crop_w, crop_h = window[2] - window[0], window[3] - window[1]
        scale = np.array([crop_w, crop_h, crop_w, crop_h])
        boxes = boxes / scale
        if regions is not None:
            regions = (np.clip(regions, window[[0, 1, 0, 1]], window[[2, 3, 2, 3]]) - window[[0, 1, 0, 1]]) / scale
            regions = regions[(regions[:, 2] > regions[:, 0]) & (regions[:, 3] > regions[:, 1])]

        out = _render(image, offset, window, self.size)
        if rng.random() < self.mirror_prob:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)
            if regions is not None:
                regions = np.stack([1 - regions[:, 2], regions[:, 1], 1 - regions[:, 0], regions[:, 3]], axis=1)
        if self.photometric:
            out = _photometric(out, rng, self.brightness, self.contrast, self.saturation, self.hue_degrees,
                               self.channel_swap)
        boxes = np.clip(boxes, 0.0, 1.0).astype(np.float32).reshape(-1, 4)
        result = (to_tensor(np.asarray(out)), torch.from_numpy(boxes), torch.from_numpy(labels))
        if regions is None:
            return result
        return (*result, torch.from_numpy(np.clip(regions, 0.0, 1.0).astype(np.float32).reshape(-1, 4)))


@dataclass
class Resize:
    """Evaluation transform: the whole image resized (aspect not kept, as SSD) to ``size^2``."""

    size: int = 300

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = image.shape[:2]
        out = np.asarray(_render(image, (0.0, 0.0), np.array([0.0, 0.0, width, height]), self.size))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / np.array([width, height, width, height])
        return (to_tensor(out), torch.from_numpy(np.clip(boxes, 0, 1).astype(np.float32)),
                torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1)))
