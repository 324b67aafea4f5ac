"""SSD prior (default box) generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import PriorConfig


def make_priors(config: PriorConfig, image_size: int) -> Tensor:
    """``[P,4]`` float32 cxcywh priors in [0, 1], ordered by map, row, column, then per cell:
    square ``min_size``, square ``sqrt(min_size * max_size)``, then ``(a, 1/a)`` per aspect ratio
    ``a`` (width ``s*sqrt(a)``, height ``s/sqrt(a)`` and the transpose). Centres are
    ``(index + 0.5) * step / image_size``. Computed in float64, returned as float32."""
    blocks = []
    for f, step, min_size, max_size, ratios in zip(
            config.feature_maps, config.steps, config.min_sizes, config.max_sizes, config.aspect_ratios):
        centers = (torch.arange(f, dtype=torch.float64) + 0.5) * step / image_size
        cy, cx = torch.meshgrid(centers, centers, indexing="ij")
        s = min_size / image_size
        s_big = math.sqrt(min_size * max_size) / image_size
        sizes = [(s, s), (s_big, s_big)]
        for a in ratios:
            r = math.sqrt(a)
            sizes += [(s * r, s / r), (s / r, s * r)]
        wh = torch.tensor(sizes, dtype=torch.float64)  # [A, 2]
        centre = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        blocks.append(torch.cat([centre, wh.expand(f * f, -1, -1)], -1).reshape(-1, 4))
    priors = torch.cat(blocks)
    if config.clip:
        priors = priors.clamp(0, 1)
    return priors.float()
