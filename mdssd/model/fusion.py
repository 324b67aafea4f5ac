"""The Fusion Block (MDSSD's contribution) and SSD's single-input L2Norm.

Fusion Block (SPEC "Fusion Blocks"): the deep map goes through three stride-2 deconvolutions,
each followed by a 3x3 conv and ReLU, landing exactly on the shallow map's size; the shallow map
goes through a 3x3 conv. Both are L2-normalised over channels with learned per-channel scales
(init 10 upper, 20 lower), summed (one fused kernel, ``backend.l2norm_sum``), then a 3x3 conv to
the module's channels and ReLU.

Two options (``ModelConfig.fusion_norm`` / ``fusion_deconv_init``; the paper's block is
``"none"`` / ``"xavier"``, see docs/model.md for what each was measured to do):

* ``fusion_norm="batch"``: a BatchNorm after every deconvolution and conv of the upper branch and
  after the lower branch's conv, as DSSD's deconvolution module has (the merge conv has none: its
  input is already L2-normalised).
* ``fusion_deconv_init="upsample"``: every deconvolution starts as a per-channel upsampling of its
  input (:func:`init_deconv_upsample`) instead of Xavier noise, so at step 0 the upper branch
  already carries the deep map's signal up to the shallow map's size.
* ``fusion_conv_init="identity"``: every 3x3 conv of the block (upper, lower, merge) starts as
  the identity (:func:`init_conv_identity`). With upsampling deconvolutions the block then starts
  as ``ReLU(20 * shallow / ||shallow|| + 10 * up(deep) / ||up(deep)||)``: the normalised
  shallow map that the SSD twin with the same layer predicts from, plus the deep context, instead
  of two untrained convolutions between the backbone and the head.
* ``fusion_skip="gated"``: the block's output is added, through a learned scalar gate that
  starts at 0 (ReZero), to the shallow map L2-normalised as the SSD twin's source is
  (:class:`L2Norm`, scale ``scale_low``): ``L2Norm(low) + gate * block(low, high)``. At step 0
  the module *is* the twin's prediction layer (no untrained conv between backbone and head, the
  backbone gets the twin's gradient), and the deep context enters only as far as the loss pulls
  the gate open. Needs the module's ``out_channels`` equal to the shallow map's channels (true of
  every preset: the paper's module widths are those of conv3_3, conv4_3 and conv7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backend import Backend, get_backend
from .config import FusionConfig
from .vgg import init_conv

FUSION_NORMS = ("none", "batch")
FUSION_DECONV_INITS = ("xavier", "upsample")
FUSION_CONV_INITS = ("xavier", "identity")
FUSION_SKIPS = ("none", "gated")


def deconv_output_size(size: int, kernel: int) -> int:
    """Stride-2 ConvTranspose2d with kernel 2 pad 0 (2n) or kernel 3 pad 1 (2n - 1)."""
    if kernel not in (2, 3):
        raise ValueError(f"Fusion Block deconvolution kernel must be 2 or 3, got {kernel}")
    return 2 * size if kernel == 2 else 2 * size - 1


def upsample_kernel(kernel: int) -> Tensor:
    """The ``kernel x kernel`` taps of a stride-2 deconvolution that upsamples one channel:
    kernel 3 (pad 1, size 2n - 1) is bilinear interpolation (taps 0.5, 1, 0.5 per axis: every
    input pixel kept, every new pixel the mean of its neighbours); kernel 2 (pad 0, size 2n) has
    no overlap between neighbours, so the best it can be is nearest-neighbour (all taps 1)."""
    if kernel == 3:
        taps = torch.tensor([0.5, 1.0, 0.5])
    elif kernel == 2:
        taps = torch.ones(2)
    else:
        deconv_output_size(1, kernel)  # raises the error naming the kernel
    return taps[:, None] * taps[None, :]


def channel_fold(cin: int, cout: int) -> Tensor:
    """``[cin, cout]`` mixing matrix that passes channels through: input ``i`` feeds output
    ``i mod cout`` (``i mod cin`` the other way round when widening) and each output averages the
    inputs it gets, so a constant map keeps its value and no input channel is dropped."""
    fold = torch.zeros(cin, cout)
    for i in range(max(cin, cout)):
        fold[i % cin, i % cout] += 1
    return fold / fold.sum(0, keepdim=True)


@torch.no_grad()
def init_deconv_upsample(deconv: nn.ConvTranspose2d) -> None:
    """Initialise ``deconv`` as channel-wise upsampling (:func:`upsample_kernel`, channels through
    :func:`channel_fold`), bias zero."""
    taps = upsample_kernel(deconv.kernel_size[0])
    fold = channel_fold(deconv.in_channels, deconv.out_channels)  # [in, out], as the weight
    deconv.weight.copy_(fold[:, :, None, None] * taps)
    if deconv.bias is not None:
        deconv.bias.zero_()


@torch.no_grad()
def init_conv_identity(conv: nn.Conv2d) -> None:
    """Initialise an odd-kernel ``conv`` as the identity (the centre tap only, channels through
    :func:`channel_fold`), bias zero: the layer starts by passing its input on."""
    k = conv.kernel_size[0]
    weight = torch.zeros_like(conv.weight)  # [out, in, k, k]
    weight[:, :, k // 2, k // 2] = channel_fold(conv.in_channels, conv.out_channels).t()
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.zero_()


class FusionBlock(nn.Module):
    def __init__(self, config: FusionConfig, low_channels: int, high_channels: int, width: int,
                 scale_low: float, scale_high: float, eps: float, backend: "str | Backend" = "ext",
                 norm: str = "none", deconv_init: str = "xavier", conv_init: str = "xavier",
                 skip: str = "none"):
        super().__init__()
        if norm not in FUSION_NORMS:
            raise ValueError(f"Fusion Block norm must be one of {FUSION_NORMS}, got {norm!r}")
        if deconv_init not in FUSION_DECONV_INITS:
            raise ValueError(f"Fusion Block deconv_init must be one of {FUSION_DECONV_INITS}, got {deconv_init!r}")
        if conv_init not in FUSION_CONV_INITS:
            raise ValueError(f"Fusion Block conv_init must be one of {FUSION_CONV_INITS}, got {conv_init!r}")
        if skip not in FUSION_SKIPS:
            raise ValueError(f"Fusion Block skip must be one of {FUSION_SKIPS}, got {skip!r}")
        if skip == "gated" and config.out_channels != low_channels:
            raise ValueError(f"{config.name}: a gated skip adds {config.low} ({low_channels} channels) to the "
                             f"block's output, which has {config.out_channels}; they must be equal")
        self.config = config
        self.eps = eps
        self.backend = get_backend(backend)

        def normed(conv: nn.Module) -> list[nn.Module]:
            return [conv, nn.BatchNorm2d(width)] if norm == "batch" else [conv]

        upper: list[nn.Module] = []
        channels = high_channels
        for kernel in config.deconv_kernels:
            deconv_output_size(1, kernel)  # validates the kernel
            # padding = kernel - 2 gives pad 0 for k2 and pad 1 for k3 (see deconv_output_size).
            upper += normed(nn.ConvTranspose2d(channels, width, kernel, stride=2, padding=kernel - 2))
            upper += normed(nn.Conv2d(width, width, 3, padding=1)) + [nn.ReLU(inplace=True)]
            channels = width
        self.upper = nn.Sequential(*upper)
        lower = normed(nn.Conv2d(low_channels, width, 3, padding=1))
        # A lone conv stays a bare module, so the paper block's state-dict keys do not change.
        self.lower = lower[0] if len(lower) == 1 else nn.Sequential(*lower)
        self.scale_high = nn.Parameter(torch.full((width,), float(scale_high)))
        self.scale_low = nn.Parameter(torch.full((width,), float(scale_low)))
        self.merge = nn.Sequential(nn.Conv2d(width, config.out_channels, 3, padding=1), nn.ReLU(inplace=True))
        init_conv(self)
        if deconv_init == "upsample":
            for m in self.upper.modules():
                if isinstance(m, nn.ConvTranspose2d):
                    init_deconv_upsample(m)
        if conv_init == "identity":
            for m in self.modules():
                if type(m) is nn.Conv2d:
                    init_conv_identity(m)
        # The paper's block has neither (its state-dict keys stay as they were).
        if skip == "gated":
            self.skip_norm = L2Norm(low_channels, scale_low, eps)
            self.gate = nn.Parameter(torch.zeros(()))
        else:
            self.skip_norm = None

    def output_size(self, high_size: int) -> int:
        for kernel in self.config.deconv_kernels:
            high_size = deconv_output_size(high_size, kernel)
        return high_size

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        up = self.upper(high)
        down = self.lower(low)
        if up.shape[-2:] != down.shape[-2:]:
            raise ValueError(
                f"{self.config.name}: upsampled {self.config.high} is {tuple(up.shape[-2:])} but "
                f"{self.config.low} is {tuple(down.shape[-2:])}; the deconvolutions must land exactly")
        fused = self.backend.l2norm_sum(down, up, self.scale_low, self.scale_high, self.eps)
        out = self.merge(fused)
        if self.skip_norm is not None:
            out = self.skip_norm(low) + self.gate * out
        return out


class L2Norm(nn.Module):
    """SSD's conv4_3 normalisation ``scale_c * x_c / max(||x||, eps)`` (baselines only); computed in
    float32 like ``l2norm_sum``, result in the input's dtype."""

    def __init__(self, channels: int, scale: float, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        norm = torch.linalg.vector_norm(x32, dim=1, keepdim=True).clamp_min(self.eps)
        return (self.weight.float().view(1, -1, 1, 1) * x32 / norm).to(x.dtype)
