"""SSD's extra layers after conv7: pairs of a 1x1 reduction and a strided 3x3 (or 4x4) conv."""

from __future__ import annotations

from torch import Tensor, nn

from .config import ExtraConfig
from .vgg import init_conv


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Extras(nn.Module):
    """Returns ``{"<name>_2": map}`` for every configured pair, in order."""

    def __init__(self, configs: tuple[ExtraConfig, ...], in_channels: int):
        super().__init__()
        self.configs = configs
        blocks = []
        for c in configs:
            blocks.append(nn.Sequential(
                nn.Conv2d(in_channels, c.mid_channels, 1), nn.ReLU(inplace=True),
                nn.Conv2d(c.mid_channels, c.out_channels, c.kernel, c.stride, c.padding),
                nn.ReLU(inplace=True),
            ))
            in_channels = c.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.channels = {f"{c.name}_2": c.out_channels for c in configs}
        init_conv(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = {}
        for c, block in zip(self.configs, self.blocks):
            x = block(x)
            maps[f"{c.name}_2"] = x
        return maps

    def output_sizes(self, size: int) -> dict[str, int]:
        sizes = {}
        for c in self.configs:
            size = conv_output_size(size, c.kernel, c.stride, c.padding)
            if size < 1:
                raise ValueError(f"extra layer {c.name}_2 would have an empty output (input too small)")
            sizes[f"{c.name}_2"] = size
        return sizes
