"""ResNet backbone (the paper's MDSSD320* / MDSSD512*) with torchvision's parameter names, and
loading a local torchvision ``resnet101`` state dict into it.

The layers carry torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer4`` of Bottleneck
blocks with ``conv1/bn1``, ``conv2/bn2`` (the strided 3x3, "ResNet v1.5"), ``conv3/bn3`` and
``downsample.0/1``), so ``resnet101``'s ``state_dict()`` loads one to one, without torchvision
being installed. The detector taps the four stages (strides 4, 8, 16, 32; 256, 512, 1024, 2048
channels at width 64); ``fc`` is not built.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import BackboneConfig

TAPS = ("layer1", "layer2", "layer3", "layer4")
EXPANSION = 4  # Bottleneck: out channels = 4 x the block's width


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """``config.resnet_blocks`` Bottlenecks per stage (``(3, 4, 23, 3)`` is ResNet-101), stage
    widths ``config.resnet_width * (1, 2, 4, 8)``. Returns ``{"layer1", ..., "layer4"}``."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        if len(config.resnet_blocks) != 4 or min(config.resnet_blocks) < 1:
            raise ValueError(f"resnet_blocks must be 4 positive block counts, got {config.resnet_blocks}")
        self.config = config
        base = config.resnet_width
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels, self.channels = base, {}
        for stage, blocks in enumerate(config.resnet_blocks):
            width, stride = base * 2 ** stage, 1 if stage == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(in_channels, width, stride if b == 0 else 1))
                in_channels = width * EXPANSION
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            self.channels[f"layer{stage + 1}"] = in_channels
        self.last = "layer4"  # the map the extras continue from
        self._init()

    def _init(self) -> None:
        # torchvision's initialisation: He (fan-out) convolutions, BatchNorm weight 1 and bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = {}
        for name in TAPS:
            x = getattr(self, name)(x)
            taps[name] = x
        return taps

    def output_sizes(self, image_size: int) -> dict[str, int]:
        """Every resizing layer (conv1 7x7/2 pad 3, max-pool 3x3/2 pad 1, the first 3x3/2 pad 1 of
        layer2..4) maps ``n`` to ``ceil(n / 2)``."""
        size = math.ceil(math.ceil(image_size / 2) / 2)
        sizes = {"layer1": size}
        for name in TAPS[1:]:
            size = math.ceil(size / 2)
            sizes[name] = size
        return sizes


def load_resnet_imagenet(backbone: ResNet, source: "str | Path | dict[str, Tensor]") -> list[str]:
    """Load a torchvision ``resnet101`` (or any torchvision Bottleneck ResNet matching the
    backbone's blocks and width) state dict from a local file (``torch.save`` of the state dict;
    never downloaded) or the dict itself. Every backbone tensor (BatchNorm running statistics
    included) must be in it with the same shape; ``fc.*`` (the ImageNet classifier) is ignored.
    Returns the names loaded. Raises ``ValueError`` naming the first missing, unexpected or
    mis-shaped key."""
    if isinstance(source, (str, Path)):
        state = torch.load(source, map_location="cpu", weights_only=True)
    else:
        state = source
    if not isinstance(state, dict):
        raise ValueError(f"not a state dict: {type(state).__name__}")
    ours = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    foreign = [k for k in state if k not in ours]
    if foreign:
        raise ValueError(f"not a torchvision ResNet state dict for this backbone (blocks "
                         f"{backbone.config.resnet_blocks}): unexpected keys {foreign[:5]}")
    missing = [k for k in ours if k not in state]
    if missing:
        raise ValueError(f"ResNet state dict lacks {missing[:5]} (backbone blocks {backbone.config.resnet_blocks})")
    for key, value in state.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"{key}: file has shape {tuple(value.shape)}, backbone expects {tuple(ours[key].shape)} "
                             f"(backbone width {backbone.config.resnet_width})")
    backbone.load_state_dict(state)
    return sorted(state)
