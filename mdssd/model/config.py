"""Model configuration as data: frozen dataclasses and the named presets.

Numbers follow ``SPEC.md``; where the paper gives none (marked "assumed" there) the value here is
our default and every one of them is a field that can be overridden.

Presets:

* ``mdssd300`` / ``mdssd512``: the paper's model, VGG16 + extras + three Fusion Blocks, the
  blocks gated residuals on the shallow map (``fusion_skip="gated"``, the default of every
  ``mdssd_*`` preset since it beat the s4 twin over 3 seeds); ``<preset>_paper`` is the same model
  with the paper's block exactly.
* ``ssd300`` / ``ssd512``: the baselines, the same code with the Fusion Modules off (sources
  conv4_3 with SSD's L2Norm, conv7 and the extras).
* ``mdssd_tiny``: our small preset for tests and CPU training (not in the paper). 128x128 input,
  every VGG/extra/fusion width divided by 4, three extra pairs (conv8_2 4, conv9_2 2, conv10_2 1),
  so each Fusion Block doubles exactly three times like MDSSD512 (32<-4, 16<-2, 8<-1).
  Six sources 32, 16, 8, 4, 2, 1 and 5,620 priors; about 1/60 of MDSSD300's compute.
* ``ssd_tiny``: the SSD twin of ``mdssd_tiny`` (same backbone and extras, no Fusion Blocks), with
  SSD's sources conv4_3 (16), conv7 (8) and the extras, and MDSSD's priors on those maps (the
  stride-4 ones dropped, as SSD300 is MDSSD300 without its 75x75 layer): 1,524 priors.
* ``ssd_tiny_s4`` / ``ssd300_s4`` / ``ssd512_s4``: SSD plus the shallow stride-4 source conv3_3
  (with its own L2Norm, as conv4_3 has in SSD) and MDSSD's priors, no Fusion Blocks. They have
  MDSSD's prediction layers and priors exactly, so against MDSSD they isolate the Fusion Block;
  against SSD, the extra high-resolution layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# VGG16's configuration "D": channel counts, "M" a 2x2/2 max-pool, "C" the same with
# ceil_mode=True (SSD's pool3, so that 75 -> 38 at 300 input).
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)


@dataclass(frozen=True)
class BackboneConfig:
    """VGG16 as in SSD: ``layout`` up to conv5_3, then pool5 3x3/1, conv6 (3x3, dilation 6) and
    conv7 (1x1), both ``fc_channels`` wide. ``batch_norm`` puts a BatchNorm after every conv
    (conv6 and conv7 included), for training from scratch."""

    layout: tuple = VGG16_LAYOUT
    fc_channels: int = 1024
    batch_norm: bool = False
    # "vgg16" (the fields above) or "resnet" (mdssd.model.resnet: torchvision's Bottleneck ResNet,
    # ``resnet_blocks`` per stage, stage widths resnet_width x 1, 2, 4, 8; always BatchNorm, so
    # ``batch_norm`` does not apply). (3, 4, 23, 3) at width 64 is ResNet-101.
    arch: str = "vgg16"
    resnet_blocks: tuple = (3, 4, 23, 3)
    resnet_width: int = 64


@dataclass(frozen=True)
class ExtraConfig:
    """One extra pair ``<name>_1`` (1x1, ``mid_channels``) then ``<name>_2`` (``kernel``/
    ``stride``/``padding``, ``out_channels``), each followed by ReLU; the source is ``<name>_2``."""

    name: str
    mid_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class FusionConfig:
    """One Fusion Block: the deep map ``high`` is upsampled three times (stride-2 deconvolutions of
    ``deconv_kernels``: 2 means kernel 2 pad 0 (size 2n), 3 means kernel 3 pad 1 (size 2n-1)) onto
    the shallow map ``low``; the merged map is named ``name`` and has ``out_channels``."""

    name: str
    low: str
    high: str
    out_channels: int
    deconv_kernels: tuple


@dataclass(frozen=True)
class PriorConfig:
    """SSD default boxes per source: per cell a square of ``min_size``, a square of
    ``sqrt(min_size * max_size)``, and for every aspect ratio ``a`` the pair ``a`` and ``1/a``;
    sizes and steps in input pixels. ``clip`` clamps the cxcywh priors to [0, 1]."""

    feature_maps: tuple
    steps: tuple
    min_sizes: tuple
    max_sizes: tuple
    aspect_ratios: tuple
    clip: bool = True

    def priors_per_cell(self) -> tuple:
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    def num_priors(self) -> int:
        return sum(f * f * n for f, n in zip(self.feature_maps, self.priors_per_cell()))


@dataclass(frozen=True)
class LossConfig:
    """MultiBox loss: matching IoU threshold, hard negatives per positive, Smooth L1 ``beta`` and the
    weight of the localisation term (total = conf + loc_weight * loc)."""

    iou_threshold: float = 0.5
    neg_pos_ratio: float = 3.0
    smooth_l1_beta: float = 1.0
    loc_weight: float = 1.0


@dataclass(frozen=True)
class PostprocessConfig:
    """Detection output (see ``mdssd.ops.ssd_postprocess``)."""

    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    top_k_per_class: int = 400
    keep_top_k: int = 200


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a detector. ``sources`` names the maps the heads predict from, in
    prior order; names are ``conv3_3``, ``conv4_3``, ``conv7``, the extras' ``<name>_2`` and the
    Fusion Blocks' ``name``. ``fusion`` empty means SSD. ``ssd_l2norm_scale`` is the initial scale
    of SSD's L2Norm on conv4_3, applied only when ``conv4_3`` itself is a source (the baselines);
    ``conv3_3_l2norm_scale`` the same for conv3_3 as a source (the ``*_s4`` presets)."""

    name: str
    image_size: int
    sources: tuple
    priors: PriorConfig
    num_classes: int = 21
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    extras: tuple = ()
    fusion: tuple = ()
    fusion_channels: int = 256  # width of both Fusion Block branches (SPEC: 256)
    fusion_scale_high: float = 10.0  # L2Norm scale init, upper (deep) branch (assumed)
    fusion_scale_low: float = 20.0  # L2Norm scale init, lower (shallow) branch
    # Fusion Block options (mdssd.model.fusion): "none" | "batch" (BatchNorm after every conv and
    # deconvolution of both branches, as DSSD); deconvolution init "xavier" | "upsample".
    fusion_norm: str = "none"
    fusion_deconv_init: str = "xavier"
    fusion_conv_init: str = "xavier"  # "xavier" | "identity" (the block's 3x3 convs start as identity)
    # "none" (the paper) | "gated": L2Norm(shallow map) + gate * block, gate starting at 0.
    fusion_skip: str = "none"
    l2norm_eps: float = 1e-10  # lower bound of the L2 norms (mdssd.ops.l2norm_sum's eps)
    ssd_l2norm_scale: float = 20.0
    # conv3_3 as a source (the *_s4 presets): 20 like conv4_3 in SSD and like the Fusion Block's
    # lower (shallow) branch, which normalises the same map in MDSSD.
    conv3_3_l2norm_scale: float = 20.0
    variance_xy: float = 0.1
    variance_wh: float = 0.2
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict (str, int, float, bool, tuple, dict) for checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["priors"] = PriorConfig(**_tuples(data["priors"]))
        data["backbone"] = BackboneConfig(**_tuples(data["backbone"]))
        data["extras"] = tuple(ExtraConfig(**e) for e in data["extras"])
        data["fusion"] = tuple(FusionConfig(**_tuples(f)) for f in data["fusion"])
        data["loss"] = LossConfig(**data["loss"])
        data["postprocess"] = PostprocessConfig(**data["postprocess"])
        data["sources"] = tuple(data["sources"])
        return cls(**data)


def _tuples(data: dict) -> dict:
    """Lists back to tuples (nested one level: aspect ratios), so configs compare equal."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, (list, tuple)) else v
            for k, v in data.items()}


# ---------------------------------------------------------------------------------------------
# Extras (SPEC "Extras")

EXTRAS_300 = (
    ExtraConfig("conv8", 256, 512, 3, 2, 1),
    ExtraConfig("conv9", 128, 256, 3, 2, 1),
    ExtraConfig("conv10", 128, 256, 3, 1, 0),
    ExtraConfig("conv11", 128, 256, 3, 1, 0),
)
EXTRAS_512 = (
    ExtraConfig("conv8", 256, 512, 3, 2, 1),
    ExtraConfig("conv9", 128, 256, 3, 2, 1),
    ExtraConfig("conv10", 128, 256, 3, 2, 1),
    ExtraConfig("conv11", 128, 256, 3, 2, 1),
    ExtraConfig("conv12", 128, 256, 4, 1, 1),
)

# Fusion Blocks (SPEC "Fusion Blocks"): module 1..3 pair conv3_3/conv8_2, conv4_3/conv9_2,
# conv7/conv10_2; out channels are the shallow map's.
FUSION_300 = (
    FusionConfig("module1", "conv3_3", "conv8_2", 256, (3, 2, 3)),  # 10 -> 19 -> 38 -> 75
    FusionConfig("module2", "conv4_3", "conv9_2", 512, (2, 3, 2)),  # 5 -> 10 -> 19 -> 38
    FusionConfig("module3", "conv7", "conv10_2", 1024, (3, 2, 3)),  # 3 -> 5 -> 10 -> 19
)
FUSION_512 = (
    FusionConfig("module1", "conv3_3", "conv8_2", 256, (2, 2, 2)),  # 16 -> 128
    FusionConfig("module2", "conv4_3", "conv9_2", 512, (2, 2, 2)),  # 8 -> 64
    FusionConfig("module3", "conv7", "conv10_2", 1024, (2, 2, 2)),  # 4 -> 32
)

# Priors (SPEC "Prediction layers and priors").
PRIORS_MDSSD300 = PriorConfig(
    feature_maps=(75, 38, 19, 10, 5, 3, 1),
    steps=(4, 8, 16, 32, 64, 100, 300),
    min_sizes=(20, 30, 60, 111, 162, 213, 264),
    max_sizes=(30, 60, 111, 162, 213, 264, 315),
    aspect_ratios=((2,), (2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)
PRIORS_SSD300 = PriorConfig(
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(30, 60, 111, 162, 213, 264),
    max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)
PRIORS_SSD512 = PriorConfig(
    feature_maps=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)
# MDSSD512 (assumed): Module 1 (128, step 4) gets 0.04 * 512 = 20.48 .. 35.84, Module 2 and 3 take
# SSD512's conv4_3 and conv7 boxes; 4, 4, 6, 6, 6, 6, 4, 4 per cell.
PRIORS_MDSSD512 = PriorConfig(
    feature_maps=(128, 64, 32, 16, 8, 4, 2, 1),
    steps=(4, 8, 16, 32, 64, 128, 256, 512),
    min_sizes=(20.48, 35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
    aspect_ratios=((2,), (2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)

_TINY_LAYOUT = tuple(c // 4 if isinstance(c, int) else c for c in VGG16_LAYOUT)
EXTRAS_TINY = (
    ExtraConfig("conv8", 64, 128, 3, 2, 1),  # 8 -> 4
    ExtraConfig("conv9", 32, 64, 3, 2, 1),  # 4 -> 2
    ExtraConfig("conv10", 32, 64, 3, 2, 1),  # 2 -> 1
)
PRIORS_MDSSD_TINY = PriorConfig(
    feature_maps=(32, 16, 8, 4, 2, 1),
    steps=(4, 8, 16, 32, 64, 128),
    min_sizes=(8, 16, 32, 56, 80, 104),
    max_sizes=(16, 32, 56, 80, 104, 128),
    aspect_ratios=((2,), (2,), (2, 3), (2, 3), (2,), (2,)),
)

PRESETS: dict[str, ModelConfig] = {
    "mdssd300": ModelConfig(
        name="mdssd300", image_size=300, extras=EXTRAS_300, fusion=FUSION_300,
        sources=("module1", "module2", "module3", "conv8_2", "conv9_2", "conv10_2", "conv11_2"),
        priors=PRIORS_MDSSD300,
    ),
    "mdssd512": ModelConfig(
        name="mdssd512", image_size=512, extras=EXTRAS_512, fusion=FUSION_512,
        sources=("module1", "module2", "module3", "conv8_2", "conv9_2", "conv10_2", "conv11_2",
                 "conv12_2"),
        priors=PRIORS_MDSSD512,
    ),
    "ssd300": ModelConfig(
        name="ssd300", image_size=300, extras=EXTRAS_300,
        sources=("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"),
        priors=PRIORS_SSD300,
    ),
    "ssd512": ModelConfig(
        name="ssd512", image_size=512, extras=EXTRAS_512,
        sources=("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2", "conv12_2"),
        priors=PRIORS_SSD512,
    ),
    "mdssd_tiny": ModelConfig(
        name="mdssd_tiny", image_size=128,
        backbone=BackboneConfig(layout=_TINY_LAYOUT, fc_channels=256),
        extras=EXTRAS_TINY,
        fusion=(
            FusionConfig("module1", "conv3_3", "conv8_2", 64, (2, 2, 2)),  # 4 -> 32
            FusionConfig("module2", "conv4_3", "conv9_2", 128, (2, 2, 2)),  # 2 -> 16
            FusionConfig("module3", "conv7", "conv10_2", 256, (2, 2, 2)),  # 1 -> 8
        ),
        fusion_channels=64,
        sources=("module1", "module2", "module3", "conv8_2", "conv9_2", "conv10_2"),
        priors=PRIORS_MDSSD_TINY,
    ),
}


def _without_first_map(priors: PriorConfig) -> PriorConfig:
    """The prior config minus its first (stride-4) map: SSD's layers under MDSSD's boxes."""
    return PriorConfig(*(getattr(priors, f.name)[1:] for f in dataclasses.fields(PriorConfig)
                         if f.name != "clip"), clip=priors.clip)


# SSD twins of the small preset and the stride-4 ablation presets (module docstring).
PRESETS["ssd_tiny"] = PRESETS["mdssd_tiny"].replace(
    name="ssd_tiny", fusion=(), sources=("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2"),
    priors=_without_first_map(PRIORS_MDSSD_TINY))
PRESETS["ssd_tiny_s4"] = PRESETS["ssd_tiny"].replace(
    name="ssd_tiny_s4", sources=("conv3_3",) + PRESETS["ssd_tiny"].sources, priors=PRIORS_MDSSD_TINY)
PRESETS["ssd300_s4"] = PRESETS["ssd300"].replace(
    name="ssd300_s4", sources=("conv3_3",) + PRESETS["ssd300"].sources, priors=PRIORS_MDSSD300)
PRESETS["ssd512_s4"] = PRESETS["ssd512"].replace(
    name="ssd512_s4", sources=("conv3_3",) + PRESETS["ssd512"].sources, priors=PRIORS_MDSSD512)

# ---------------------------------------------------------------------------------------------
# ResNet-101 MDSSD (the paper's MDSSD320* / MDSSD512*) and its SSD baselines; docs/model.md
# derives the pairing. The stages tap layer1..layer4 at strides 4, 8, 16, 32 with 256, 512,
# 1024, 2048 channels: the shallow maps layer1/2/3 have the channels of VGG's conv3_3/conv4_3/
# conv7 (the paper's module widths 256, 512, 1024) and the deep maps layer4/extra1_2/extra2_2 are
# 8x coarser, so every Fusion Block doubles three times, as in VGG MDSSD.
RESNET101 = BackboneConfig(arch="resnet", resnet_blocks=(3, 4, 23, 3), resnet_width=64, batch_norm=True)
EXTRAS_RESNET_320 = (
    ExtraConfig("extra1", 256, 512, 3, 2, 1),  # 10 -> 5
    ExtraConfig("extra2", 128, 256, 3, 2, 1),  # 5 -> 3
    ExtraConfig("extra3", 128, 256, 3, 1, 0),  # 3 -> 1
)
EXTRAS_RESNET_512 = (
    ExtraConfig("extra1", 256, 512, 3, 2, 1),  # 16 -> 8
    ExtraConfig("extra2", 128, 256, 3, 2, 1),  # 8 -> 4
    ExtraConfig("extra3", 128, 256, 3, 2, 1),  # 4 -> 2
    ExtraConfig("extra4", 128, 256, 4, 1, 1),  # 2 -> 1
)
FUSION_RESNET_320 = (
    FusionConfig("module1", "layer1", "layer4", 256, (2, 2, 2)),  # 10 -> 20 -> 40 -> 80
    FusionConfig("module2", "layer2", "extra1_2", 512, (2, 2, 2)),  # 5 -> 40
    FusionConfig("module3", "layer3", "extra2_2", 1024, (3, 2, 2)),  # 3 -> 5 -> 10 -> 20
)
FUSION_RESNET_512 = (
    FusionConfig("module1", "layer1", "layer4", 256, (2, 2, 2)),  # 16 -> 128
    FusionConfig("module2", "layer2", "extra1_2", 512, (2, 2, 2)),  # 8 -> 64
    FusionConfig("module3", "layer3", "extra2_2", 1024, (2, 2, 2)),  # 4 -> 32
)
# MDSSD320* (assumed): MDSSD300's boxes scaled by 320/300 on the 80, 40, 20, 10, 5, 3, 1 maps.
PRIORS_MDSSD320 = PriorConfig(
    feature_maps=(80, 40, 20, 10, 5, 3, 1),
    steps=(4, 8, 16, 32, 64, 320 / 3, 320),
    min_sizes=tuple(round(s * 320 / 300, 2) for s in PRIORS_MDSSD300.min_sizes),
    max_sizes=tuple(round(s * 320 / 300, 2) for s in PRIORS_MDSSD300.max_sizes),
    aspect_ratios=PRIORS_MDSSD300.aspect_ratios,
)
PRESETS["mdssd320_resnet101"] = ModelConfig(
    name="mdssd320_resnet101", image_size=320, backbone=RESNET101, extras=EXTRAS_RESNET_320,
    fusion=FUSION_RESNET_320, priors=PRIORS_MDSSD320,
    sources=("module1", "module2", "module3", "layer4", "extra1_2", "extra2_2", "extra3_2"),
)
PRESETS["mdssd512_resnet101"] = ModelConfig(
    name="mdssd512_resnet101", image_size=512, backbone=RESNET101, extras=EXTRAS_RESNET_512,
    fusion=FUSION_RESNET_512, priors=PRIORS_MDSSD512,
    sources=("module1", "module2", "module3", "layer4", "extra1_2", "extra2_2", "extra3_2", "extra4_2"),
)
# The SSD baselines: the same network without Fusion Blocks and without the stride-4 layer (as
# SSD300 is MDSSD300 without its 75x75 layer): sources layer2, layer3, layer4 and the extras.
PRESETS["ssd320_resnet101"] = PRESETS["mdssd320_resnet101"].replace(
    name="ssd320_resnet101", fusion=(), sources=("layer2", "layer3") + PRESETS["mdssd320_resnet101"].sources[3:],
    priors=_without_first_map(PRIORS_MDSSD320))
PRESETS["ssd512_resnet101"] = PRESETS["mdssd512_resnet101"].replace(
    name="ssd512_resnet101", fusion=(), sources=("layer2", "layer3") + PRESETS["mdssd512_resnet101"].sources[3:],
    priors=_without_first_map(PRIORS_MDSSD512))
# The small ResNet preset (ours, trains on a CPU): one Bottleneck per stage at width 16 (stages
# 64, 128, 256, 512 channels), 128 px input, maps 32, 16, 8, 4, 2, 1 as mdssd_tiny, and its priors.
PRESETS["mdssd_resnet_tiny"] = ModelConfig(
    name="mdssd_resnet_tiny", image_size=128,
    backbone=BackboneConfig(arch="resnet", resnet_blocks=(1, 1, 1, 1), resnet_width=16, batch_norm=True),
    extras=(ExtraConfig("extra1", 64, 128, 3, 2, 1), ExtraConfig("extra2", 32, 64, 3, 2, 1)),  # 4 -> 2 -> 1
    fusion=(
        FusionConfig("module1", "layer1", "layer4", 64, (2, 2, 2)),  # 4 -> 32
        FusionConfig("module2", "layer2", "extra1_2", 128, (2, 2, 2)),  # 2 -> 16
        FusionConfig("module3", "layer3", "extra2_2", 256, (2, 2, 2)),  # 1 -> 8
    ),
    fusion_channels=64, priors=PRIORS_MDSSD_TINY,
    sources=("module1", "module2", "module3", "layer4", "extra1_2", "extra2_2"),
)
PRESETS["ssd_resnet_tiny"] = PRESETS["mdssd_resnet_tiny"].replace(
    name="ssd_resnet_tiny", fusion=(), sources=("layer2", "layer3", "layer4", "extra1_2", "extra2_2"),
    priors=_without_first_map(PRIORS_MDSSD_TINY))

# Fusion Block candidates (mdssd.model.fusion; docs/model.md "MDSSD vs SSD"): the tiny preset with
# BatchNorm in the block, upsampling-initialised deconvolutions, and both.
PRESETS["mdssd_tiny_bn"] = PRESETS["mdssd_tiny"].replace(name="mdssd_tiny_bn", fusion_norm="batch")
PRESETS["mdssd_tiny_up"] = PRESETS["mdssd_tiny"].replace(name="mdssd_tiny_up", fusion_deconv_init="upsample")
PRESETS["mdssd_tiny_bn_up"] = PRESETS["mdssd_tiny"].replace(
    name="mdssd_tiny_bn_up", fusion_norm="batch", fusion_deconv_init="upsample")
PRESETS["mdssd_tiny_id"] = PRESETS["mdssd_tiny"].replace(
    name="mdssd_tiny_id", fusion_deconv_init="upsample", fusion_conv_init="identity")
# The block as a gated residual on the twin's normalised shallow map (starts as ssd_tiny_s4).
PRESETS["mdssd_tiny_gated"] = PRESETS["mdssd_tiny"].replace(name="mdssd_tiny_gated", fusion_skip="gated")

# The default Fusion Block of every MDSSD preset is the gated one (mean of 3 seeds at or above the
# s4 twin on AP_small and 8-16 px; benchmarks/results/ablation-synthetic-fusion-gated-*.md); the
# paper's block stays as ``<preset>_paper``. Set last, so the twins and candidates above keep the
# paper's block they were measured with.
MDSSD_PRESETS = ("mdssd300", "mdssd512", "mdssd_tiny", "mdssd320_resnet101", "mdssd512_resnet101",
                 "mdssd_resnet_tiny")
for _name in MDSSD_PRESETS:
    PRESETS[f"{_name}_paper"] = PRESETS[_name].replace(name=f"{_name}_paper")
    PRESETS[_name] = PRESETS[_name].replace(fusion_skip="gated")


def get_config(name: str, **overrides) -> ModelConfig:
    """A preset by name with fields replaced, e.g. ``get_config("ssd300", num_classes=5)``.
    ``batch_norm`` is accepted as a shortcut for ``backbone.batch_norm``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]
    if "batch_norm" in overrides:
        backbone = dataclasses.replace(config.backbone, batch_norm=bool(overrides.pop("batch_norm")))
        overrides["backbone"] = backbone
    config = config.replace(**overrides)
    if config.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {config.num_classes}")
    return config
