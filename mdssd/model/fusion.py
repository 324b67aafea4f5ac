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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backend import Backend, get_backend
from .config import FusionConfig
from .vgg import init_conv

FUSION_NORMS = ("none", "batch")
FUSION_DECONV_INITS = ("xavier", "upsample")


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


@torch.no_grad()
def init_deconv_upsample(deconv: nn.ConvTranspose2d) -> None:
    """Initialise ``deconv`` as channel-wise upsampling (:func:`upsample_kernel`), bias zero.
    Input channel ``i`` feeds output channel ``i mod out`` (``i mod in`` the other way round when
    the deconvolution widens); each output averages the inputs it gets, so a constant map stays
    the same constant and no channel of the input is dropped."""
    cin, cout = deconv.in_channels, deconv.out_channels
    taps = upsample_kernel(deconv.kernel_size[0])
    weight = torch.zeros_like(deconv.weight)  # [in, out, k, k]
    fan = torch.zeros(cout)
    for i in range(max(cin, cout)):
        weight[i % cin, i % cout] += taps
        fan[i % cout] += 1
    deconv.weight.copy_(weight / fan.view(1, -1, 1, 1))
    if deconv.bias is not None:
        deconv.bias.zero_()


class FusionBlock(nn.Module):
    def __init__(self, config: FusionConfig, low_channels: int, high_channels: int, width: int,
                 scale_low: float, scale_high: float, eps: float, backend: "str | Backend" = "ext",
                 norm: str = "none", deconv_init: str = "xavier"):
        super().__init__()
        if norm not in FUSION_NORMS:
            raise ValueError(f"Fusion Block norm must be one of {FUSION_NORMS}, got {norm!r}")
        if deconv_init not in FUSION_DECONV_INITS:
            raise ValueError(f"Fusion Block deconv_init must be one of {FUSION_DECONV_INITS}, got {deconv_init!r}")
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
        return self.merge(fused)


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
