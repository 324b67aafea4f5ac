"""The Fusion Block (MDSSD's contribution) and SSD's single-input L2Norm.

Fusion Block (SPEC "Fusion Blocks"): the deep map goes through three stride-2 deconvolutions,
each followed by a 3x3 conv and ReLU, landing exactly on the shallow map's size; the shallow map
goes through a 3x3 conv. Both are L2-normalised over channels with learned per-channel scales
(init 10 upper, 20 lower), summed (one fused kernel, ``backend.l2norm_sum``), then a 3x3 conv to
the module's channels and ReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backend import Backend, get_backend
from .config import FusionConfig
from .vgg import init_conv


def deconv_output_size(size: int, kernel: int) -> int:
    """Stride-2 ConvTranspose2d with kernel 2 pad 0 (2n) or kernel 3 pad 1 (2n - 1)."""
    if kernel not in (2, 3):
        raise ValueError(f"Fusion Block deconvolution kernel must be 2 or 3, got {kernel}")
    return 2 * size if kernel == 2 else 2 * size - 1


class FusionBlock(nn.Module):
    def __init__(self, config: FusionConfig, low_channels: int, high_channels: int, width: int,
                 scale_low: float, scale_high: float, eps: float, backend: "str | Backend" = "ext"):
        super().__init__()
        self.config = config
        self.eps = eps
        self.backend = get_backend(backend)
        upper: list[nn.Module] = []
        channels = high_channels
        for kernel in config.deconv_kernels:
            deconv_output_size(1, kernel)  # validates the kernel
            # padding = kernel - 2 gives pad 0 for k2 and pad 1 for k3 (see deconv_output_size).
            upper += [nn.ConvTranspose2d(channels, width, kernel, stride=2, padding=kernel - 2),
                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.upper = nn.Sequential(*upper)
        self.lower = nn.Conv2d(low_channels, width, 3, padding=1)
        self.scale_high = nn.Parameter(torch.full((width,), float(scale_high)))
        self.scale_low = nn.Parameter(torch.full((width,), float(scale_low)))
        self.merge = nn.Sequential(nn.Conv2d(width, config.out_channels, 3, padding=1), nn.ReLU(inplace=True))
        init_conv(self)

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
