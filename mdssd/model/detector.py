"""The detector: backbone, extras, Fusion Blocks, heads and priors wired together."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backend import Backend, get_backend
from .config import ModelConfig, get_config
from .extras import Extras
from .fusion import FusionBlock, L2Norm
from .heads import Head
from .loss import check_finite, check_targets, ignore_priors, multibox_loss
from .postprocess import detect
from .priors import make_priors
from .resnet import ResNet
from .vgg import VGG16

# Background priors with at least this IoU with an ignore region (a crop-cut object) are left out
# of the loss: below the matching threshold (0.5), so near matches are not pushed to background.
IGNORE_IOU = 0.3


def build_backbone(config) -> nn.Module:
    """VGG16 (``arch="vgg16"``) or ResNet (``"resnet"``) from a :class:`BackboneConfig`."""
    if config.arch == "vgg16":
        return VGG16(config)
    if config.arch == "resnet":
        return ResNet(config)
    raise ValueError(f"unknown backbone arch {config.arch!r}; choose 'vgg16' or 'resnet'")


def load_pretrained_backbone(model: "Detector", source) -> list[str]:
    """A local torchvision ImageNet state dict (file or dict) into ``model.backbone``: ``vgg16`` /
    ``vgg16_bn`` for VGG presets, ``resnet101`` for the ResNet ones. Returns the keys loaded."""
    from .resnet import load_resnet_imagenet
    from .vgg import load_vgg16_imagenet

    if isinstance(model.backbone, ResNet):
        return load_resnet_imagenet(model.backbone, source)
    return load_vgg16_imagenet(model.backbone, source)


class Detector(nn.Module):
    """MDSSD (``config.fusion`` non-empty) or SSD (empty) on one backend (``"ext"`` or
    ``"reference"``); see ``docs/CONTRACTS.md`` for the API."""

    def __init__(self, config: ModelConfig, backend: "str | Backend" = "ext"):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        last = self.backbone.last  # the backbone map the extras continue from
        self.extras = Extras(config.extras, self.backbone.channels[last])
        channels = {**self.backbone.channels, **self.extras.channels}
        sizes = self.backbone.output_sizes(config.image_size)
        sizes.update(self.extras.output_sizes(sizes[last]))

        self.fusion = nn.ModuleList()
        for f in config.fusion:
            block = FusionBlock(f, channels[f.low], channels[f.high], config.fusion_channels,
                                config.fusion_scale_low, config.fusion_scale_high, config.l2norm_eps,
                                norm=config.fusion_norm, deconv_init=config.fusion_deconv_init,
                                conv_init=config.fusion_conv_init, skip=config.fusion_skip)
            landed = block.output_size(sizes[f.high])
            if landed != sizes[f.low]:
                raise ValueError(f"{config.name}: {f.name}'s deconvolutions {f.deconv_kernels} take "
                                 f"{f.high} ({sizes[f.high]}) to {landed}, not {f.low}'s {sizes[f.low]}")
            self.fusion.append(block)
            channels[f.name], sizes[f.name] = f.out_channels, sizes[f.low]
        # SSD normalises conv4_3 before predicting from it; MDSSD's Fusion Block normalises instead.
        # conv3_3 as a source (the *_s4 ablation presets) gets its own L2Norm the same way.
        self.conv4_3_norm = (L2Norm(channels["conv4_3"], config.ssd_l2norm_scale, config.l2norm_eps)
                             if "conv4_3" in config.sources else None)
        self.conv3_3_norm = (L2Norm(channels["conv3_3"], config.conv3_3_l2norm_scale, config.l2norm_eps)
                             if "conv3_3" in config.sources else None)

        unknown = [s for s in config.sources if s not in sizes]
        if unknown:
            raise ValueError(f"{config.name}: unknown sources {unknown}; available {sorted(sizes)}")
        self.source_sizes = tuple(sizes[s] for s in config.sources)
        if self.source_sizes != tuple(config.priors.feature_maps):
            raise ValueError(f"{config.name}: source maps are {self.source_sizes} but the prior "
                             f"config expects {tuple(config.priors.feature_maps)}")
        self.source_channels = tuple(channels[s] for s in config.sources)
        self.head = Head(list(self.source_channels), list(config.priors.priors_per_cell()), config.num_classes)
        self.register_buffer("priors", make_priors(config.priors, config.image_size), persistent=False)
        self.set_backend(backend)

    # -- backend -------------------------------------------------------------------------------
    def set_backend(self, backend: "str | Backend") -> "Detector":
        """Switch every op-calling module to ``backend``; weights are untouched."""
        self.backend = get_backend(backend)
        for block in self.fusion:
            block.backend = self.backend
        return self

    # -- network -------------------------------------------------------------------------------
    def check_images(self, images: Tensor) -> None:
        """Shape checks only (no host sync): ``[B, 3, S, S]`` floating point."""
        s = self.config.image_size
        if images.dim() != 4:
            raise ValueError(f"{self.config.name} expects images [B,3,{s},{s}], got shape {tuple(images.shape)}")
        if images.shape[1] != 3:
            raise ValueError(f"{self.config.name} expects 3-channel RGB images, got {images.shape[1]} "
                             f"channels (shape {tuple(images.shape)})")
        if tuple(images.shape[-2:]) != (s, s):
            raise ValueError(f"{self.config.name} expects {s}x{s} images, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalised), got {images.dtype}")

    def features(self, images: Tensor) -> list[Tensor]:
        """The source maps the heads predict from, in ``config.sources`` order."""
        self.check_images(images)
        maps = self.backbone(images)
        maps.update(self.extras(maps[self.backbone.last]))
        for f, block in zip(self.config.fusion, self.fusion):
            maps[f.name] = block(maps[f.low], maps[f.high])
        if self.conv4_3_norm is not None:
            maps["conv4_3"] = self.conv4_3_norm(maps["conv4_3"])
        if self.conv3_3_norm is not None:
            maps["conv3_3"] = self.conv3_3_norm(maps["conv3_3"])
        return [maps[s] for s in self.config.sources]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B,3,S,S]`` (ImageNet-normalised) -> raw ``loc [B,P,4]``, ``conf [B,P,K]``."""
        return self.head(self.features(images))

    # -- training and inference ------------------------------------------------------------------
    def loss(self, loc: Tensor, conf: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_counts: Tensor,
             check: bool = True, ignore_boxes: Tensor | None = None,
             ignore_counts: Tensor | None = None) -> dict[str, Tensor]:
        """MultiBox loss ``{"loc", "conf", "total"}`` of a padded ground-truth batch.

        With ``check`` (default; skipped inside ``torch.compile``) the targets are validated and a
        non-finite loss raises ``FloatingPointError``; both read values, i.e. synchronise the host.
        ``ignore_boxes [B,I,4]`` (xyxy in [0,1]) with ``ignore_counts [B]``: regions whose priors
        are neither trained as objects nor as background (:func:`~mdssd.model.loss.ignore_priors`).
        """
        checking = check and not torch.compiler.is_compiling()
        if checking:
            check_targets(gt_boxes, gt_labels, gt_counts, loc.shape[0], self.config.num_classes)
        with torch.no_grad():
            loc_target, label_target = self.backend.match_encode(
                self.priors, gt_boxes.to(self.priors.dtype), gt_labels.long(), gt_counts.long(),
                self.config.loss.iou_threshold, self.config.variance_xy, self.config.variance_wh)
            if ignore_boxes is not None:
                if checking and (ignore_boxes.dim() != 3 or ignore_boxes.shape[0] != loc.shape[0]
                                 or ignore_boxes.shape[-1] != 4 or ignore_counts is None
                                 or tuple(ignore_counts.shape) != (loc.shape[0],)):
                    raise ValueError(f"ignore_boxes must be [B={loc.shape[0]},I,4] with ignore_counts [B], got "
                                     f"{tuple(ignore_boxes.shape)} and "
                                     f"{None if ignore_counts is None else tuple(ignore_counts.shape)}")
                label_target = ignore_priors(self.priors_xyxy, label_target, ignore_boxes.to(self.priors.dtype),
                                             ignore_counts.long(), IGNORE_IOU, self.backend.box_iou)
        losses = multibox_loss(loc, conf, loc_target, label_target, self.config.loss)
        if checking:
            check_finite(losses)
        return losses

    @torch.no_grad()
    def postprocess(self, loc: Tensor, conf: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detections ``boxes [B,k,4]``, ``scores [B,k]``, ``labels [B,k]``, ``counts [B]``."""
        return detect(self.backend, loc, conf, self.priors, self.config)

    @property
    def priors_xyxy(self) -> Tensor:
        """The priors as ``[P,4]`` xyxy (normalised)."""
        centre, size = self.priors[:, :2], self.priors[:, 2:]
        return torch.cat([centre - size / 2, centre + size / 2], dim=1)

    @property
    def num_priors(self) -> int:
        return self.priors.shape[0]


def build_model(name: str, num_classes: int = 21, backend: "str | Backend" = "ext",
                batch_norm: bool = False, **overrides) -> Detector:
    """A preset (``mdssd300``, ``mdssd512``, ``ssd300``, ``ssd512``, ``mdssd_tiny``, ``ssd_tiny``,
    the ``*_s4`` ablation twins; see :mod:`mdssd.model.config`) with
    ``num_classes`` (background included), ``batch_norm`` in the backbone and any other
    :class:`ModelConfig` field overridden."""
    return Detector(get_config(name, num_classes=num_classes, batch_norm=batch_norm, **overrides), backend)
