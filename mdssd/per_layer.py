"""The paper's pilot study: how well each prediction layer detects on its own.

``python -m mdssd.eval --weights CKPT --per-layer [--per-layer-out PREFIX]`` scores a checkpoint
once per source layer with only that layer's priors kept: the network, its weights, the
post-processing settings (score threshold, NMS, top-k) and the data are the same in every pass,
only the priors of the other layers are left out before detection output. It prints AP, AP50,
AP_small and AP per AI-TOD size bin for every layer (and for all layers together, the model as it
is), and writes ``PREFIX.json``, ``PREFIX.md`` and ``PREFIX.png`` (AP by object size, one bar per
layer). ``python -m mdssd.ablation --per-layer`` does the same for every run of an ablation.

Leaving a layer's priors out is exact: :class:`LayerSubset` slices the head's ``loc``/``conf`` and
the priors to one layer's contiguous block (the head and :func:`mdssd.model.priors.make_priors`
order priors layer by layer), which gives the same detections as setting every other prior's
class scores to zero (``tests/test_per_layer.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .metrics import SIZE_BINS
from .model.postprocess import detect

__all__ = ["layer_prior_ranges", "LayerSubset", "evaluate_per_layer", "format_per_layer", "write_per_layer"]

ALL_LAYERS = "all"


def layer_prior_ranges(config) -> list[tuple[str, int, int]]:
    """``(source name, first prior, end)`` per prediction layer of a :class:`ModelConfig`, in prior
    order; the ranges tile ``[0, num_priors)``."""
    ranges, start = [], 0
    for name, size, per_cell in zip(config.sources, config.priors.feature_maps, config.priors.priors_per_cell()):
        end = start + size * size * per_cell
        ranges.append((name, start, end))
        start = end
    return ranges


class LayerSubset(nn.Module):
    """``model`` with only the priors ``[start, end)`` (one layer's) kept: the same ``forward`` /
    ``postprocess`` API (docs/CONTRACTS.md), so any evaluation path (whole images or tiles) runs
    on it unchanged."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        if not 0 <= start < end <= model.num_priors:
            raise ValueError(f"prior range [{start}, {end}) is not inside the model's {model.num_priors} priors")
        self.model, self.start, self.end = model, start, end

    @property
    def config(self):
        return self.model.config

    @property
    def priors(self) -> Tensor:
        return self.model.priors[self.start:self.end]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.model(images)
        return loc[:, self.start:self.end], conf[:, self.start:self.end]

    @torch.no_grad()
    def postprocess(self, loc: Tensor, conf: Tensor):
        return detect(self.model.backend, loc, conf, self.priors, self.model.config)


def _row(report, layer: str, size: int | None, priors: int) -> dict[str, Any]:
    stats = report.coco.stats
    return {"layer": layer, "map_size": size, "priors": priors,
            "ap": stats["AP"], "ap50": stats["AP50"], "ap_small": stats["AP_small"],
            "ap_medium": stats["AP_medium"], "ar_small": stats["AR_small"], "voc07_map": report.voc.map_11,
            "size_bins": {name: dict(row) for name, row in report.coco.size_bins.items()}}


def evaluate_per_layer(model, source, batch_size: int = 8, num_workers: int = 0, tile=None) -> list[dict]:
    """One row per source layer (``layer``, ``map_size``, ``priors``, ``ap``, ``ap50``, ``ap_small``,
    ``ap_medium``, ``ar_small``, ``voc07_map``, ``size_bins``), then the row ``"all"`` (every prior
    kept: the model's own score). Fractions in [0, 1], NaN where pycocotools has no value."""
    from .eval import evaluate

    rows = []
    for (name, start, end), size in zip(layer_prior_ranges(model.config), model.config.priors.feature_maps):
        report = evaluate(LayerSubset(model, start, end), source, batch_size, num_workers, coco=True,
                          tile=tile, size_bins=True)
        rows.append(_row(report, name, size, end - start))
    report = evaluate(model, source, batch_size, num_workers, coco=True, tile=tile, size_bins=True)
    rows.append(_row(report, ALL_LAYERS, None, model.num_priors))
    return rows


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_per_layer(rows: list[dict]) -> str:
    """Markdown table: one row per layer, AP/AP50/AP_small/VOC07 and AP per size bin (percent)."""
    bins = list(SIZE_BINS)
    gt = rows[0]["size_bins"] if rows else {}
    head = ("| layer | map | priors | AP | AP50 | AP_small | VOC07 mAP | "
            + " | ".join(f"AP {b} ({gt.get(b, {}).get('num_gt', '?')} gt)" for b in bins)
            + " | " + " | ".join(f"AP50 {b}" for b in bins) + " |")
    lines = [head, "|" + "---|" * (7 + 2 * len(bins))]
    for r in rows:
        size = "-" if r["map_size"] is None else f"{r['map_size']}x{r['map_size']}"
        lines.append(f"| {r['layer']} | {size} | {r['priors']:,} | {_pct(r['ap'])} | {_pct(r['ap50'])} | "
                     f"{_pct(r['ap_small'])} | {_pct(r['voc07_map'])} | "
                     + " | ".join(_pct(r["size_bins"][b]["AP"]) for b in bins) + " | "
                     + " | ".join(_pct(r["size_bins"][b]["AP50"]) for b in bins) + " |")
    return "\n".join(lines)


def best_layer_per_bin(rows: list[dict]) -> dict[str, str]:
    """The single layer with the highest AP per size bin (the "all" row excluded)."""
    layers = [r for r in rows if r["layer"] != ALL_LAYERS]
    out = {}
    for b in SIZE_BINS:
        scored = [(r["size_bins"][b]["AP"], r["layer"]) for r in layers
                  if r["size_bins"][b]["AP"] is not None and not math.isnan(r["size_bins"][b]["AP"])]
        if scored:
            out[b] = max(scored)[1]
    return out


def _plot_summary(rows: list[dict]) -> dict:
    """Rows in the shape :func:`mdssd.ablation.plot_size_bins` draws (one "variant" per layer)."""
    nan = float("nan")
    summary = {}
    for r in rows:
        metrics = {"ap": {"mean": r["ap"], "std": nan}}
        for b in SIZE_BINS:
            metrics[f"size:{b}:AP"] = {"mean": r["size_bins"][b]["AP"], "std": nan}
        summary[r["layer"]] = {"metrics": metrics}
    return summary


def write_per_layer(prefix: str | Path, rows: list[dict], title: str, meta: dict | None = None) -> list[Path]:
    """``PREFIX.json`` (rows and ``meta``), ``PREFIX.md`` (the table) and ``PREFIX.png`` (AP by size
    bin, one bar per layer); returns the paths."""
    from .ablation import _clean, _json_default, _write_atomic, plot_size_bins

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".json", ".md", ".png")]
    data = {"meta": meta or {}, "layers": rows, "best_layer_per_bin": best_layer_per_bin(rows)}
    _write_atomic(paths[0], json.dumps(_clean(data), indent=1, default=_json_default) + "\n")
    _write_atomic(paths[1], f"# {title}\n\n{format_per_layer(rows)}\n")
    plot_size_bins(_plot_summary(rows), paths[2], title)
    return paths
