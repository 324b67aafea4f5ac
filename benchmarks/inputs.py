"""Realistic inputs for the benchmarks: priors from the real prior generator, small-object boxes,
detector-like NMS candidates and head outputs. Every tensor is random (never zeros: zeros hide
unwritten outputs and can run faster than real data), drawn from a seeded generator on the CPU
and then moved, so every device gets the same values."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

# MDSSD prior tables from docs/SPEC (300: the spec's defaults; 512: the spec's "sizes scaled as
# SSD512", an assumption of that spec, with a stride-4 layer in front of SSD512's seven). Used
# only while mdssd.model (the project's own prior generator) is not importable.
_PRIOR_TABLES = {
    "mdssd300": dict(
        image_size=300,
        maps=(75, 38, 19, 10, 5, 3, 1),
        steps=(4, 8, 16, 32, 64, 100, 300),
        min_sizes=(20, 30, 60, 111, 162, 213, 264),
        max_sizes=(30, 60, 111, 162, 213, 264, 315),
        ratios=((2,), (2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
    "mdssd512": dict(
        image_size=512,
        maps=(128, 64, 32, 16, 8, 4, 2, 1),
        steps=(4, 8, 16, 32, 64, 128, 256, 512),
        min_sizes=(20.48, 35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        max_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        ratios=((2,), (2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
}

NUM_PRIORS = {"mdssd300": 31_232, "mdssd512": 90_100}


def _local_priors(name: str) -> Tensor:
    """SSD-style priors ``[P,4]`` cxcywh: per cell, small square, large square (geometric mean of
    min and max), then each aspect ratio r as (r-wide, r-tall); clipped to [0, 1]."""
    t = _PRIOR_TABLES[name]
    size = t["image_size"]
    layers = []
    for fmap, step, lo, hi, ratios in zip(t["maps"], t["steps"], t["min_sizes"], t["max_sizes"], t["ratios"]):
        shapes = [(lo, lo), (math.sqrt(lo * hi),) * 2]
        for r in ratios:
            shapes += [(lo * math.sqrt(r), lo / math.sqrt(r)), (lo / math.sqrt(r), lo * math.sqrt(r))]
        wh = torch.tensor(shapes, dtype=torch.float64) / size  # [A,2]
        centre = (torch.arange(fmap, dtype=torch.float64) + 0.5) * step / size
        cy, cx = torch.meshgrid(centre, centre, indexing="ij")
        cxcy = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        layers.append(torch.cat([cxcy, wh.expand(cxcy.shape[0], -1, -1)], dim=-1).reshape(-1, 4))
    return torch.cat(layers).clamp(0, 1).float()


@lru_cache(maxsize=None)
def priors(name: str) -> tuple[Tensor, str]:
    """The priors of preset ``name`` and where they came from: the project's generator
    (``mdssd.model``: the preset's config through ``make_priors``, which is what ``build_model``
    stores as ``model.priors``) when importable, else the local table above."""
    try:
        from mdssd.model import get_config, make_priors
    except ImportError:
        p = _local_priors(name)
        assert p.shape[0] == NUM_PRIORS[name], (name, p.shape)
        return p, "local table (mdssd.model not importable)"
    config = get_config(name)
    return make_priors(config.priors, config.image_size).float().contiguous(), "mdssd.model"


def small_boxes(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """xyxy boxes of small objects: centres uniform in the image, sides log-uniform in
    [0.01, 0.12] of the image (3 to 36 px at 300), aspect jitter up to 2:1, clipped to [0, 1]."""
    centre = torch.rand(*shape, 2, generator=gen) * 0.9 + 0.05
    side = torch.exp(torch.empty(*shape, 1).uniform_(math.log(0.01), math.log(0.12), generator=gen))
    aspect = torch.exp(torch.empty(*shape, 1).uniform_(-math.log(2) / 2, math.log(2) / 2, generator=gen))
    wh = torch.cat([side * aspect, side / aspect], dim=-1)
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=-1).clamp(0, 1)


def ground_truth(batch: int, max_gt: int, gen: torch.Generator, num_classes: int = 21):
    """A collated batch as ``mdssd.data.collate`` makes it: ``gt_boxes [B,G,4]``, ``gt_labels
    [B,G]``, ``gt_counts [B]``; image 0 has ``G`` objects, the others 1..G; rows past an image's
    count hold more random boxes (real padding content is never read)."""
    boxes = small_boxes((batch, max_gt), gen)
    labels = torch.randint(1, num_classes, (batch, max_gt), generator=gen)
    counts = torch.randint(1, max_gt + 1, (batch,), generator=gen)
    counts[0] = max_gt
    return boxes, labels, counts


def nms_candidates(n: int, gen: torch.Generator, num_classes: int = 20):
    """Detector-like NMS input: ``n // 8`` small objects, each seen by about 8 jittered boxes
    (shifts and size changes up to 15% of the object's size), distinct random scores, and the
    object's class as ``idxs``."""
    objects = max(1, n // 8)
    obj = small_boxes((objects,), gen)
    owner = torch.randint(0, objects, (n,), generator=gen)
    base = obj[owner]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    boxes = (base + (torch.rand(n, 4, generator=gen) - 0.5) * 0.3 * size).clamp(0, 1)
    # Keep every box valid (x2 > x1) after clipping: a detector emits positive-size boxes.
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1e-3)
    scores = torch.rand(n, generator=gen)
    classes = torch.randint(0, num_classes, (objects,), generator=gen)[owner]
    return boxes, scores, classes


def head_outputs(batch: int, num_priors: int, num_classes: int, gen: torch.Generator):
    """Raw head outputs like a trained detector's: offsets ~ N(0, 0.5); logits ~ N(0, 1) with the
    background raised by 7 (most priors are confidently background), and 2% of priors raised by 6
    on one random class (the objects). About 4% of priors then pass the 0.01 score threshold in
    each class (about 1,200 of 31,232), so the per-class top-400 binds and NMS does real work."""
    loc = torch.randn(batch, num_priors, 4, generator=gen) * 0.5
    conf = torch.randn(batch, num_priors, num_classes, generator=gen)
    conf[..., 0] += 7.0
    hit = torch.rand(batch, num_priors, generator=gen) < 0.02
    cls = torch.randint(1, num_classes, (batch, num_priors), generator=gen)
    conf.scatter_add_(2, cls[..., None], (hit.float() * 6.0)[..., None])
    return loc, conf


def fusion_maps(batch: int, channels: int, size: int, gen: torch.Generator, dtype: torch.dtype):
    """The two 256-channel branch outputs a Fusion Block merges: the shallow branch's conv output
    (signed) and the deep branch's conv + ReLU output (non-negative), and scales at their spec
    initial values (20 and 10) with 1% noise."""
    a = torch.randn(batch, channels, size, size, generator=gen)
    b = torch.randn(batch, channels, size, size, generator=gen).clamp_min(0) + 1e-3
    sa = 20 * (1 + 0.01 * torch.randn(channels, generator=gen))
    sb = 10 * (1 + 0.01 * torch.randn(channels, generator=gen))
    return a.to(dtype), b.to(dtype), sa, sb
