"""VGG16 backbone as in SSD, and loading torchvision-format ImageNet weights into it.

The layers live in one ``nn.Sequential`` built in torchvision's order (conv, [BatchNorm], ReLU,
pools), so up to conv5_3 our ``features.<i>`` *is* torchvision's ``features.<i>`` for ``vgg16``
and ``vgg16_bn`` alike; SSD's changes come after it: pool5 3x3/1 instead of 2x2/2, pool3 with
``ceil_mode``, and conv6 (3x3, dilation 6) / conv7 (1x1) in place of the classifier.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import BackboneConfig

TAPS = ("conv3_3", "conv4_3", "conv7")


def init_conv(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every (transposed) convolution in ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class VGG16(nn.Module):
    """Returns ``{"conv3_3", "conv4_3", "conv7"}``: the post-ReLU maps the detector taps."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        self.tap_index: dict[str, int] = {}  # tap name -> index of the ReLU that produces it
        self.conv_index: dict[str, int] = {}  # conv name -> index in `features`
        in_channels, stage, conv_in_stage = 3, 1, 1

        def conv_block(name: str, conv: nn.Conv2d) -> None:
            self.conv_index[name] = len(layers)
            layers.append(conv)
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(conv.out_channels))
            layers.append(nn.ReLU(inplace=True))
            if name in TAPS:
                self.tap_index[name] = len(layers) - 1

        for item in config.layout:
            if item in ("M", "C"):
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=item == "C"))
                stage, conv_in_stage = stage + 1, 1
                continue
            conv_block(f"conv{stage}_{conv_in_stage}", nn.Conv2d(in_channels, item, 3, padding=1))
            in_channels, conv_in_stage = item, conv_in_stage + 1
        self.pool5_index = len(layers)
        layers.append(nn.MaxPool2d(3, 1, 1))
        fc = config.fc_channels
        conv_block("conv6", nn.Conv2d(in_channels, fc, 3, padding=6, dilation=6))
        conv_block("conv7", nn.Conv2d(fc, fc, 1))
        missing = set(TAPS) - set(self.tap_index)
        if missing:
            raise ValueError(f"backbone layout has no {sorted(missing)} (needs 5 stages of 3x3 convs)")
        self.features = nn.Sequential(*layers)
        self.last = "conv7"  # the map the extras continue from
        self.channels = {
            "conv3_3": self.features[self.conv_index["conv3_3"]].out_channels,
            "conv4_3": self.features[self.conv_index["conv4_3"]].out_channels,
            "conv7": fc,
        }
        init_conv(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        taps = {}
        by_index = {i: name for name, i in self.tap_index.items()}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in by_index:
                taps[by_index[i]] = x
        return taps

    def output_sizes(self, image_size: int) -> dict[str, int]:
        """Spatial size of each tap for a square input (the pools are the only resizing layers)."""
        sizes, size, stage = {}, image_size, 1
        for item in self.config.layout:
            if item in ("M", "C"):
                if stage == 3:
                    sizes["conv3_3"] = size
                if stage == 4:
                    sizes["conv4_3"] = size
                size = math.ceil(size / 2) if item == "C" else size // 2
                stage += 1
        sizes["conv7"] = size  # pool5 3x3/1/1, conv6 and conv7 keep the size
        return sizes


# ---------------------------------------------------------------------------------------------
# torchvision-format ImageNet weights


def decimate_fc(fc6_weight: Tensor, fc6_bias: Tensor, fc7_weight: Tensor, fc7_bias: Tensor,
                in_channels: int, fc_channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SSD's fc -> conv conversion (SSD paper, section 3): keep every ``s``-th unit of fc6/fc7
    (``s = 4096 / fc_channels``) and every 3rd tap of fc6's 7x7 kernel, which the dilation-6 3x3
    conv6 then spans. Returns conv6 weight/bias and conv7 weight/bias."""
    step = fc6_weight.shape[0] // fc_channels
    w6 = fc6_weight.reshape(fc6_weight.shape[0], in_channels, 7, 7)[::step, :, ::3, ::3]
    w7 = fc7_weight.reshape(*fc7_weight.shape, 1, 1)[::step, ::step]
    return w6.contiguous(), fc6_bias[::step].contiguous(), w7.contiguous(), fc7_bias[::step].contiguous()


def load_vgg16_imagenet(backbone: VGG16, source: "str | Path | dict[str, Tensor]", fc: bool = True) -> list[str]:
    """Load a torchvision ``vgg16`` (or ``vgg16_bn`` into a ``batch_norm`` backbone) state dict.

    ``source`` is a local file (``torch.save`` of the state dict; never downloaded) or the dict.
    ``features.<i>.*`` map one to one onto ``backbone.features.<i>.*`` up to conv5_3. With ``fc``
    and when present, ``classifier.0``/``classifier.3`` (fc6/fc7) are decimated into conv6/conv7 as
    in SSD; otherwise conv6/conv7 keep their initialisation. ``classifier.6`` (the ImageNet
    classifier) is ignored. Returns the names of the backbone tensors that were loaded.

    Raises ``ValueError`` naming the key for a missing backbone tensor, a shape mismatch (e.g. a
    plain vgg16 file into a ``batch_norm`` backbone, or a narrower preset) or a key that is not
    torchvision's.
    """
    if isinstance(source, (str, Path)):
        state = torch.load(source, map_location="cpu", weights_only=True)
    else:
        state = source
    ours = backbone.state_dict()
    foreign = [k for k in state if not (k.startswith("features.") or k.startswith("classifier."))]
    if foreign:
        raise ValueError(f"not a torchvision vgg16 state dict: unexpected keys {foreign[:5]}")
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            if index >= backbone.pool5_index:
                raise ValueError(f"{key}: torchvision's VGG16 has no parameters past conv5_3's block")
            if key not in ours:
                raise ValueError(f"{key} has no counterpart in the backbone (batch_norm="
                                 f"{backbone.config.batch_norm}; vgg16_bn needs batch_norm=True and vice versa)")
            mapped[key] = value
    pool5 = backbone.pool5_index
    conv_keys = [k for k in ours if int(k.split(".")[1]) < pool5]
    missing = [k for k in conv_keys if k not in mapped]
    if missing:
        raise ValueError(f"VGG16 state dict lacks {missing[:5]} (batch_norm={backbone.config.batch_norm})")
    if fc and "classifier.0.weight" in state and "classifier.3.weight" in state:
        fc_channels = backbone.config.fc_channels
        conv6, conv7 = backbone.conv_index["conv6"], backbone.conv_index["conv7"]
        w6, b6, w7, b7 = decimate_fc(
            state["classifier.0.weight"], state["classifier.0.bias"], state["classifier.3.weight"],
            state["classifier.3.bias"], backbone.features[conv6].in_channels, fc_channels)
        mapped.update({f"features.{conv6}.weight": w6, f"features.{conv6}.bias": b6,
                       f"features.{conv7}.weight": w7, f"features.{conv7}.bias": b7})
    for key, value in mapped.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"{key}: file has shape {tuple(value.shape)}, backbone expects "
                             f"{tuple(ours[key].shape)} (is this preset's backbone full-width VGG16?)")
    backbone.load_state_dict(mapped, strict=False)
    return sorted(mapped)
