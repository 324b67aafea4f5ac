"""Model summary: layers, map sizes, priors, parameters and multiply-accumulates per image.

MACs are counted with forward hooks on a meta-device copy (no memory, no compute): a convolution
costs ``out_pixels * out_channels * in_channels/groups * kh * kw``, a transposed convolution
``in_pixels * in_channels * out_channels/groups * kh * kw``, a linear layer ``in * out``. Norms,
activations, pools and the Fusion merge are not counted (memory-bound, < 1% of the MACs).
GFLOPs are reported as 2 x GMACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .detector import Detector


@dataclass
class LayerInfo:
    name: str
    kind: str
    output: tuple
    params: int
    macs: int


def _macs(module: nn.Module, inputs, output) -> int:
    x = inputs[0]
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return x[0].numel() * module.out_channels // module.groups * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output[0].numel() * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def _describe(module: nn.Module) -> str:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s, p, d = module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
        extra = f" d{d}" if d != 1 else ""
        kind = "Deconv" if isinstance(module, nn.ConvTranspose2d) else "Conv"
        return f"{kind} {module.in_channels}->{module.out_channels} k{k} s{s} p{p}{extra}"
    return type(module).__name__


def summarize(config: ModelConfig) -> tuple[list[LayerInfo], dict]:
    """Per-layer rows for one image and totals (``params``, ``macs``, ``priors``, ``sources``)."""
    with torch.device("meta"):
        model = Detector(config)
    rows: list[LayerInfo] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.MaxPool2d)):
            def hook(m, inputs, output, name=name):
                rows.append(LayerInfo(name, _describe(m), tuple(output.shape[1:]),
                                      sum(p.numel() for p in m.parameters()), _macs(m, inputs, output)))
            hooks.append(module.register_forward_hook(hook))
    size = config.image_size
    with torch.no_grad():
        sources = model.features(torch.empty(1, 3, size, size, device="meta"))
        model.head(sources)
    for h in hooks:
        h.remove()
    per_cell = config.priors.priors_per_cell()
    source_rows = [
        {"name": name, "channels": x.shape[1], "size": x.shape[-1], "priors_per_cell": n,
         "priors": x.shape[-1] * x.shape[-2] * n}
        for name, x, n in zip(config.sources, sources, per_cell)
    ]
    totals = {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(r.macs for r in rows),
        "priors": sum(s["priors"] for s in source_rows),
        "sources": source_rows,
    }
    return rows, totals


def format_summary(config: ModelConfig) -> str:
    rows, totals = summarize(config)
    backbone = (f"backbone ResNet, blocks {config.backbone.resnet_blocks}, width {config.backbone.resnet_width}"
                if config.backbone.arch == "resnet" else f"backbone VGG16, batch_norm={config.backbone.batch_norm}")
    lines = [f"{config.name}: {config.image_size}x{config.image_size} input, {config.num_classes} classes, {backbone}", ""]
    lines.append(f"{'layer':<28} {'type':<34} {'output (C,H,W)':<18} {'params':>11} {'GMACs':>8}")
    for r in rows:
        out = "x".join(str(v) for v in r.output)
        lines.append(f"{r.name:<28} {r.kind:<34} {out:<18} {r.params:>11,} {r.macs / 1e9:>8.3f}")
    lines += ["", f"{'source':<10} {'channels':>8} {'map':>5} {'priors/cell':>12} {'priors':>8}"]
    for s in totals["sources"]:
        lines.append(f"{s['name']:<10} {s['channels']:>8} {s['size']:>5} {s['priors_per_cell']:>12} "
                     f"{s['priors']:>8,}")
    lines += [
        "",
        f"priors: {totals['priors']:,}",
        f"parameters: {totals['params']:,}",
        f"per image: {totals['macs'] / 1e9:.2f} GMACs = {2 * totals['macs'] / 1e9:.2f} GFLOPs "
        "(convolutions, deconvolutions and linear layers)",
    ]
    return "\n".join(lines)
