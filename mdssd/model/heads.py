"""Prediction heads: one 3x3 conv for box offsets and one for class logits per source map."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .vgg import init_conv


class Head(nn.Module):
    """Returns ``loc [B,P,4]`` and ``conf [B,P,K]``, priors ordered by source, then row, column and
    box within the cell (the order of :func:`mdssd.model.priors.make_priors`)."""

    def __init__(self, channels: list[int], priors_per_cell: list[int], num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.loc = nn.ModuleList(nn.Conv2d(c, n * 4, 3, padding=1) for c, n in zip(channels, priors_per_cell))
        self.conf = nn.ModuleList(nn.Conv2d(c, n * num_classes, 3, padding=1)
                                  for c, n in zip(channels, priors_per_cell))
        init_conv(self)

    def forward(self, sources: list[Tensor]) -> tuple[Tensor, Tensor]:
        batch = sources[0].shape[0]
        locs, confs = [], []
        for x, loc, conf in zip(sources, self.loc, self.conf):
            # NCHW -> NHWC so that the channels of one cell (its boxes) are adjacent.
            locs.append(loc(x).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            confs.append(conf(x).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes))
        return torch.cat(locs, 1), torch.cat(confs, 1)
