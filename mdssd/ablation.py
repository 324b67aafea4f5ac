"""``python -m mdssd.ablation``: MDSSD against its SSD twins on small objects, trained alike.

Every variant (a model preset) is trained with the same data, schedule and seeds through
:func:`mdssd.train.train`, then its final weights are scored on the val split with
:func:`mdssd.eval.evaluate`: VOC07 mAP, the COCO metrics and AP/AR per tiny-object size bin
(:data:`mdssd.metrics.SIZE_BINS`, pycocotools' own area ranges). Writes, under ``--out``:

* ``runs/<variant>/seed<k>/``: the training run (checkpoints, log) and ``result.json``;
* ``ablation.json``: every run's metrics, train time, parameters and GFLOPs, plus mean and
  standard deviation over seeds per variant;
* ``ablation.md``: the tables (mean ± std over seeds; paired differences to the first variant);
* ``ablation.png``: AP by object size bin per variant (error bars: std over seeds).

Resumable: a run whose ``result.json`` exists (with the same training config) is not retrained,
an interrupted one continues from its ``last.pt``. ``--jobs N`` trains N runs at a time, each in
its own process (one intra-op thread each on a 2-core machine; a run's result does not depend on
``--jobs``, only on its thread count). Any other flag is a training flag
(``python -m mdssd.train --help``) and applies to every run, e.g. ``--steps 1000`` or
``--lr 2e-3``. The default (synthetic set, the three tiny variants, 3 seeds) is sized for a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import config as config_mod
from .metrics import SIZE_BINS

DEFAULT_VARIANTS = ("mdssd_tiny", "ssd_tiny", "ssd_tiny_s4")
# Applied to every run before the pass-through flags (which win): evaluate once, at the end
# (the ablation scores the final weights itself), and keep logs quiet for a background job.
RUN_DEFAULTS = ("--eval-interval", "0", "--no-progress")
# Set by the ablation per run; as pass-through flags they would make the runs differ.
_OWNED_FLAGS = ("--preset", "--seed", "--out-dir", "--resume", "--dataset", "--data-root")
# Metrics per run, in table order: (key in result.json, column title).
METRICS = (
    ("ap", "AP"), ("ap50", "AP50"), ("ap_small", "AP_small"), ("ap_medium", "AP_medium"),
    ("ar_small", "AR_small"), ("voc07_map", "VOC07 mAP"),
)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mdssd.ablation", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other flag is passed to every training run (see python -m mdssd.train --help).")
    from .data.dataset import DATASETS

    parser.add_argument("--dataset", default="synthetic", choices=DATASETS,
                        help="data set of every run (default: synthetic)")
    parser.add_argument("--data-root", default=None, help="data set folder (not needed for synthetic)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="PRESET",
                        help="model presets to compare; the first is the reference of the paired "
                        f"differences (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per variant (default: 3)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/ablation-<dataset>)")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="images per batch when scoring (default: 8)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="training runs at a time, each in its own process with cores/N intra-op "
                        "threads less its data workers, at least 1 (default: the cores, at most the number of runs)")
    # A process started by --jobs: trains what no other process holds, leaves the final report
    # to its parent.
    parser.add_argument("--job-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--per-layer", action="store_true",
                        help="also score every run once per prediction layer (mdssd.per_layer): a "
                        "per-layer table in ablation.md and per-layer-<variant>.png")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild ablation.json/.md/.png from the finished runs; train nothing")
    return parser


def parse_args(argv: Sequence[str] | None):
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    owned = [a for a in passthrough if a.split("=", 1)[0] in _OWNED_FLAGS]
    if owned:
        parser.error(f"{', '.join(owned)}: set by the ablation for each run (use --variants, --seeds, "
                     "--out, --dataset, --data-root)")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    from .model.config import PRESETS

    unknown = [v for v in args.variants if v not in PRESETS]
    if unknown:
        parser.error(f"unknown variants {unknown}; presets are {sorted(PRESETS)}")
    if len(set(args.variants)) != len(args.variants):
        parser.error(f"--variants lists a preset twice: {args.variants}")
    if args.out is None:
        args.out = f"runs/ablation-{args.dataset}"
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    return args, list(passthrough)


def run_config(args, passthrough: list[str], variant: str, seed: int) -> config_mod.TrainConfig:
    """The training config of one run: ablation defaults < pass-through flags < per-run fields."""
    argv = [*RUN_DEFAULTS, *passthrough, "--preset", variant, "--seed", str(seed),
            "--dataset", args.dataset, "--out-dir", str(run_dir(args.out, variant, seed)), "--resume", "auto"]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    return config_mod.from_args(argv)


def run_dir(out: str | Path, variant: str, seed: int) -> Path:
    return Path(out) / "runs" / variant / f"seed{seed}"


# Config fields that do not change what a run computes (where it logs, how it resumes).
_NOT_COMPARED = ("resume", "progress", "tensorboard", "log_interval", "checkpoint_interval", "workers")


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_COMPARED}


# ---------------------------------------------------------------------------------------------
# One run: train (or reuse), then score


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data workers), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train_and_score(cfg: config_mod.TrainConfig, variant: str, seed: int, eval_batch_size: int) -> dict[str, Any]:
    """Train one run (continuing its ``last.pt`` when interrupted) and score its final weights."""
    import torch

    from . import train as train_mod

    resumed = (Path(cfg.out_dir) / "last.pt").exists()
    wall0, cpu0 = time.time(), _cpu_seconds()
    summary = train_mod.train(cfg)
    train_wall, train_cpu = time.time() - wall0, _cpu_seconds() - cpu0
    if summary["stopped_early"] or summary["steps"] != summary["total_steps"]:
        raise RuntimeError(f"{variant} seed {seed}: training stopped at step {summary['steps']} of "
                           f"{summary['total_steps']}; rerun the ablation to continue it")
    threads = torch.get_num_threads()
    result = score_run(cfg, Path(cfg.out_dir) / "last.pt", eval_batch_size)
    result.update({
        "variant": variant, "seed": seed, "steps": summary["steps"],
        # One final VOC evaluation inside training is included (the same for every variant).
        "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
        "train_resumed": resumed,  # times then cover only the part after the interruption
        "train_reported_voc07_map": summary["metrics"]["mAP"] if summary["metrics"] else None,
        "threads": threads, "loadavg_after": _loadavg(),
        "train_config": config_mod.to_dict(cfg),
    })
    return result


def score_run(cfg: config_mod.TrainConfig, weights: Path, eval_batch_size: int) -> dict[str, Any]:
    """Metrics of a run's weights on its val split (the synthetic set as the run built it), sliced
    into tiles when the run was trained with ``--tile`` (as training's own evaluation is)."""
    from .eval import evaluate
    from .model.summary import summarize
    from .train import tile_spec

    model, source = _model_and_val_source(cfg, weights)
    t0 = time.time()
    report = evaluate(model, source, batch_size=eval_batch_size, coco=True, size_bins=True,
                      tile=tile_spec(cfg))
    eval_wall = time.time() - t0
    _, totals = summarize(model.config)
    stats = report.coco.stats
    return {
        "ap": stats["AP"], "ap50": stats["AP50"], "ap75": stats["AP75"], "ap_small": stats["AP_small"],
        "ap_medium": stats["AP_medium"], "ap_large": stats["AP_large"], "ar_small": stats["AR_small"],
        "ar100": stats["AR100"], "voc07_map": report.voc.map_11, "voc07_map_area": report.voc.map_area,
        "size_bins": {name: dict(row) for name, row in report.coco.size_bins.items()},
        "val_images": len(source), "eval_wall_s": round(eval_wall, 1),
        "params": totals["params"], "gflops": 2 * totals["macs"] / 1e9, "priors": totals["priors"],
    }


def _model_and_val_source(cfg: config_mod.TrainConfig, weights: Path):
    """A run's model (CPU, eval mode) and its val split, the synthetic set as the run built it."""
    from .data import build_source
    from .inference import load_model, read_checkpoint, synthetic_val_options

    checkpoint = read_checkpoint(weights)
    options = synthetic_val_options(checkpoint) if cfg.dataset == "synthetic" else {}
    source = build_source(cfg.dataset, cfg.data_root, cfg.val_split or "val", **options)
    model, _ = load_model(checkpoint, backend=cfg.backend, device="cpu")
    return model, source


def add_per_layer(cfg: config_mod.TrainConfig, result: dict[str, Any], eval_batch_size: int) -> dict[str, Any]:
    """``result`` with ``per_layer`` (:func:`mdssd.per_layer.evaluate_per_layer` of the run's final
    weights) added and stored in its ``result.json``; a result that has it is returned as is."""
    if result.get("per_layer"):
        return result
    from .per_layer import evaluate_per_layer
    from .train import tile_spec

    model, source = _model_and_val_source(cfg, Path(cfg.out_dir) / "last.pt")
    result = dict(result, per_layer=evaluate_per_layer(model, source, eval_batch_size, tile=tile_spec(cfg)))
    _write_atomic(Path(cfg.out_dir) / "result.json", json.dumps(_clean(result), indent=1, default=_json_default) + "\n")
    return result


def per_layer_summary(runs: list[dict], variants: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per variant, per layer: mean ± std over seeds of AP, AP_small and AP per size bin (the
    shape :func:`plot_size_bins` draws), from runs that have ``per_layer``."""
    out: dict[str, dict[str, dict]] = {}
    for v in variants:
        rows = [r["per_layer"] for r in runs if r["variant"] == v and r.get("per_layer")]
        if not rows:
            continue
        out[v] = {}
        for k, layer in enumerate(row["layer"] for row in rows[0]):
            picked = [seed_rows[k] for seed_rows in rows]
            metrics = {key: mean_std([_none_nan(p[key]) for p in picked]) for key in ("ap", "ap_small")}
            for b in SIZE_BINS:
                metrics[f"size:{b}:AP"] = mean_std([_none_nan(p["size_bins"][b]["AP"]) for p in picked])
            out[v][layer] = {"map_size": picked[0]["map_size"], "metrics": metrics}
    return out


def format_per_layer_summary(per_layer: dict[str, dict[str, dict]]) -> str:
    head = ["variant", "layer", "map", "AP", "AP_small"] + [f"AP {b}" for b in SIZE_BINS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, layers in per_layer.items():
        for layer, entry in layers.items():
            m, size = entry["metrics"], entry["map_size"]
            lines.append(f"| `{v}` | {layer} | {'-' if size is None else f'{size}x{size}'} | {_pct(m['ap'])} | "
                         f"{_pct(m['ap_small'])} | " + " | ".join(_pct(m[f'size:{b}:AP']) for b in SIZE_BINS) + " |")
    return "\n".join(lines)


def _loadavg() -> str | None:
    """The 1/5/15-minute load averages (timings on a shared machine need them), or None."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value):
    """NaN -> None, recursively, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def finished_result(cfg: config_mod.TrainConfig) -> dict[str, Any] | None:
    """The stored result of this run, when it finished under the same training config."""
    path = Path(cfg.out_dir) / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    stored, wanted = _comparable(result.get("train_config", {})), _comparable(config_mod.to_dict(cfg))
    if stored != wanted:
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise SystemExit(f"mdssd.ablation: {path} was trained with a different config ({', '.join(changed)}); "
                         "use another --out or delete that run")
    return result


# ---------------------------------------------------------------------------------------------
# Aggregation and reports


def _metric_values(runs: list[dict], key: str) -> list[float]:
    """One metric of the runs; ``size:<bin>:<AP|AP50|AR>`` reads a size bin. pycocotools' -1 (no
    ground truth in that area range, e.g. AP_medium of a set of small objects) counts as missing."""
    values = []
    for run in runs:
        if key.startswith("size:"):
            _, name, field = key.split(":")
            value = run["size_bins"].get(name, {}).get(field)
        else:
            value = run.get(key)
        values.append(float("nan") if value is None or float(value) < 0 else float(value))
    return values


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (ddof 1; None with one value) of the finite values."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def summary_keys() -> list[str]:
    keys = [k for k, _ in METRICS]
    for name in SIZE_BINS:
        keys += [f"size:{name}:AP", f"size:{name}:AP50", f"size:{name}:AR"]
    return keys + ["train_wall_s", "train_cpu_s", "params", "gflops", "priors"]


def summarize_runs(runs: list[dict], variants: Sequence[str]) -> dict[str, dict]:
    """Per variant: mean/std over seeds of every metric; paired differences to the first variant
    (same seeds, so the same data order and augmentation draws)."""
    out: dict[str, dict] = {}
    by_variant = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in variants}
    reference = by_variant[variants[0]]
    for variant, rows in by_variant.items():
        entry = {"seeds": [r["seed"] for r in rows],
                 "metrics": {k: mean_std(_metric_values(rows, k)) for k in summary_keys()}}
        if variant != variants[0]:
            ref = {r["seed"]: r for r in reference}
            paired = [(r, ref[r["seed"]]) for r in rows if r["seed"] in ref]
            entry["minus_" + variants[0]] = {
                k: mean_std([a - b for a, b in zip(_metric_values([p for p, _ in paired], k),
                                                   _metric_values([q for _, q in paired], k))])
                for k in [m for m, _ in METRICS] + [f"size:{n}:AP" for n in SIZE_BINS]}
        out[variant] = entry
    return out


def _pct(stat: dict, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{round(100 * stat['mean'], digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0"
    return text + (f" ± {100 * stat['std']:.{digits}f}" if stat["std"] is not None else "")


def _run_pct(value) -> str:
    """One run's metric in percent; "-" for none and for pycocotools' -1 (no ground truth there)."""
    return _pct({"mean": None if value is None or value < 0 else value, "std": None})


def _plain(stat: dict, fmt: str) -> str:
    if stat["mean"] is None:
        return "-"
    text = format(stat["mean"], fmt)
    return text + (f" ± {format(stat['std'], fmt)}" if stat["std"] is not None else "")


def markdown_report(summary: dict, runs: list[dict], settings: dict) -> str:
    variants = list(summary)
    lines = [f"# Ablation: {', '.join(variants)} on {settings['dataset']}", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items() if k != "dataset"]
    lines += ["", "Metrics in percent on the val split, mean ± sample standard deviation over seeds; "
              "COCO AP is AP@[.5:.95]; sizes are box sides in pixels of the stored images.", ""]
    head = ["variant", "seeds"] + [title for _, title in METRICS] + ["train s (wall)", "train s (CPU)",
                                                                     "params", "GFLOPs"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, entry in summary.items():
        m = entry["metrics"]
        row = [f"`{v}`", str(len(entry["seeds"]))] + [_pct(m[k]) for k, _ in METRICS]
        row += [_plain(m["train_wall_s"], ".0f"), _plain(m["train_cpu_s"], ".0f"),
                f"{m['params']['mean']:,.0f}", f"{m['gflops']['mean']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "AP@[.5:.95] / AP50 by object side (AI-TOD's bins), mean ± std over seeds; ground "
              "truth per bin in the header:", ""]
    counts = runs[0]["size_bins"] if runs else {}
    head = ["variant"] + [f"{n} (AP, {counts.get(n, {}).get('num_gt', '?')} gt)" for n in SIZE_BINS] + \
           [f"{n} AP50" for n in SIZE_BINS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, entry in summary.items():
        m = entry["metrics"]
        row = [f"`{v}`"] + [_pct(m[f"size:{n}:AP"]) for n in SIZE_BINS] + [_pct(m[f"size:{n}:AP50"]) for n in SIZE_BINS]
        lines.append("| " + " | ".join(row) + " |")

    if len(variants) > 1:
        ref = variants[0]
        keys = [k for k, _ in METRICS] + [f"size:{n}:AP" for n in SIZE_BINS]
        titles = [t for _, t in METRICS] + [f"AP {n}" for n in SIZE_BINS]
        lines += ["", f"Paired differences to `{ref}` (same seed: same data order and augmentation), "
                  "points of percent, mean ± std over seeds (positive: the variant is better):", ""]
        lines += ["| variant | " + " | ".join(titles) + " |", "|" + "---|" * (len(titles) + 1)]
        for v in variants[1:]:
            diff = summary[v]["minus_" + ref]
            lines.append(f"| `{v}` − `{ref}` | " + " | ".join(_pct(diff[k]) for k in keys) + " |")

    lines += ["", "Per run:", "", "| variant | seed | AP | AP50 | AP_small | VOC07 mAP | "
              + " | ".join(f"AP {n}" for n in SIZE_BINS) + " | train s (wall) | threads | load after |",
              "|" + "---|" * (9 + len(SIZE_BINS))]
    for r in sorted(runs, key=lambda r: (variants.index(r["variant"]), r["seed"])):
        bins = " | ".join(_run_pct(r["size_bins"][n]["AP"]) for n in SIZE_BINS)
        lines.append(f"| `{r['variant']}` | {r['seed']} | {_run_pct(r['ap'])} | "
                     f"{_run_pct(r['ap50'])} | {_run_pct(r['ap_small'])} | "
                     f"{_run_pct(r['voc07_map'])} | {bins} | {r['train_wall_s']:.0f} | "
                     f"{r['threads']} | {r.get('loadavg_after') or '-'} |")
    return "\n".join(lines) + "\n"


def _none_nan(value):
    return float("nan") if value is None else value


def plot_size_bins(summary: dict, path: Path, title: str) -> None:
    """Grouped bars (PIL, no plotting library needed): AP@[.5:.95] per size bin and variant, with
    whiskers of one standard deviation over seeds."""
    from PIL import Image, ImageDraw, ImageFont

    bins = list(SIZE_BINS) + ["all"]
    variants = list(summary)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34)]
    width, height = 900, 520
    left, right, top, bottom = 70, 20, 60, 90
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()

    def value(v: str, b: str, field: str):
        stat = summary[v]["metrics"]["ap" if b == "all" else f"size:{b}:AP"]
        return _none_nan(stat[field])

    peak = max([value(v, b, "mean") + (value(v, b, "std") if not math.isnan(value(v, b, "std")) else 0)
                for v in variants for b in bins if not math.isnan(value(v, b, "mean"))] + [0.05])
    ymax = min(1.0, math.ceil(peak * 10 + 0.5) / 10)
    plot_h, plot_w = height - top - bottom, width - left - right

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v / ymax)

    for k in range(6):  # grid and y labels
        v = ymax * k / 5
        y = y_of(v)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{100 * v:.0f}", fill="black", font=font, anchor="rm")
    draw.text((15, top + plot_h / 2), "AP %", fill="black", font=font, anchor="lm")
    group_w = plot_w / len(bins)
    bar_w = group_w * 0.8 / len(variants)
    for g, b in enumerate(bins):
        x0 = left + g * group_w + group_w * 0.1
        for i, v in enumerate(variants):
            mean, std = value(v, b, "mean"), value(v, b, "std")
            if math.isnan(mean):
                continue
            xa, xb = x0 + i * bar_w, x0 + (i + 1) * bar_w - 2
            draw.rectangle([xa, y_of(mean), xb, y_of(0)], fill=colours[i % len(colours)])
            if not math.isnan(std):
                xc = (xa + xb) / 2
                draw.line([(xc, y_of(max(0.0, mean - std))), (xc, y_of(min(ymax, mean + std)))], fill="black", width=2)
                for yv in (max(0.0, mean - std), min(ymax, mean + std)):
                    draw.line([(xc - 4, y_of(yv)), (xc + 4, y_of(yv))], fill="black", width=2)
        draw.text((left + (g + 0.5) * group_w, y_of(0) + 8), b if b == "all" else f"{b} side",
                  fill="black", font=font, anchor="mt")
    draw.line([(left, y_of(0)), (width - right, y_of(0))], fill="black")
    draw.text((width / 2, 20), title, fill="black", font=font, anchor="mm")
    x = left
    for i, v in enumerate(variants):  # legend
        draw.rectangle([x, height - 35, x + 14, height - 21], fill=colours[i % len(colours)])
        draw.text((x + 20, height - 28), v, fill="black", font=font, anchor="lm")
        x += 40 + draw.textlength(v, font=font)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def _write_atomic(path: Path, text: str) -> None:
    """Write-then-rename: processes of one ``--jobs`` ablation rewrite the reports after each of
    their runs, and a reader must never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_reports(out: Path, runs: list[dict], variants: Sequence[str], settings: dict,
                  coverage: dict | None = None) -> dict:
    """``ablation.json``, ``.md`` and ``.png``; ``coverage``: :func:`mdssd.prior_coverage.prior_coverage`
    per variant (optional)."""
    summary = summarize_runs(runs, variants)
    data = {"settings": settings, "summary": summary,
            "runs": sorted(runs, key=lambda r: (list(variants).index(r["variant"]), r["seed"]))}
    if coverage:
        data["prior_coverage"] = coverage
    _write_atomic(out / "ablation.json", json.dumps(_clean(data), indent=1, default=_json_default) + "\n")
    text = markdown_report(summary, runs, settings)
    if coverage:
        from .prior_coverage import format_coverage

        text += ("\nPrior coverage of the val objects (no training: the training matcher's positives per "
                 "object, by object side in input pixels):\n\n" + format_coverage(coverage) + "\n")
    per_layer = per_layer_summary(runs, variants)
    if per_layer:
        data["per_layer"] = per_layer
        text += ("\nPer prediction layer (`--per-layer`: each run scored once per layer with only that layer's "
                 "priors kept, everything else equal; the row `all` is the model itself), mean ± std over "
                 "seeds:\n\n" + format_per_layer_summary(per_layer) + "\n")
        _write_atomic(out / "ablation.json", json.dumps(_clean(data), indent=1, default=_json_default) + "\n")
    _write_atomic(out / "ablation.md", text)
    seeds = sorted({r["seed"] for r in runs})
    for v, layers in per_layer.items():
        plot_size_bins(layers, out / f"per-layer-{v}.png",
                       f"{v}: AP@[.5:.95] by object size per prediction layer, {len(seeds)} seed(s)")
    plot_size_bins(summary, out / "ablation.png",
                   f"AP@[.5:.95] by object size, {settings['dataset']}, {len(seeds)} seed(s), mean ± std")
    return data


def _settings(args, argv: list[str], passthrough: list[str], first: config_mod.TrainConfig) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "dataset": args.dataset if not args.data_root else f"{args.dataset} ({args.data_root})",
        "variants": " ".join(args.variants),
        "seeds": args.seeds,
        # --report-only rebuilds the same results: the command that trains them is the one shown.
        "command": " ".join(["python -m mdssd.ablation", *(a for a in argv if a != "--report-only")]),
        "training flags passed through": " ".join(passthrough) or "(none)",
        "schedule": f"{first.steps or first.epochs} {'steps' if first.steps else 'epochs'} of batch {first.batch_size}, "
                    f"lr {first.lr}, warm-up {first.warmup_steps}, decay x{first.lr_gamma} at {first.lr_decay_at}",
        "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}",
    }


def coverage_of(configs: dict, variants: Sequence[str], runs: list[dict]) -> dict[str, dict]:
    """Prior coverage of the val split's objects for each variant (its class count from a run)."""
    from .data import build_source
    from .inference import synthetic_val_options
    from .model.config import get_config
    from .prior_coverage import prior_coverage

    cfg = configs[variants[0], 0]
    options = synthetic_val_options({"config": config_mod.to_dict(cfg)}) if cfg.dataset == "synthetic" else {}
    source = build_source(cfg.dataset, cfg.data_root, cfg.val_split or "val", **options)
    classes = len(source.class_names) + 1
    return {v: prior_coverage(get_config(v, num_classes=classes), source) for v in variants}


def _run_or_reuse(cfg: config_mod.TrainConfig, variant: str, seed: int, args) -> dict[str, Any] | None:
    """A run's result: stored, or trained now; None when another ablation process holds the run
    (two processes on one ``--out`` share the work) or with ``--report-only``."""
    result = finished_result(cfg)
    if result is not None:
        print(f"mdssd.ablation: {variant} seed {seed}: finished earlier, not retrained", flush=True)
        return result
    if args.report_only:
        return None
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with _RunLock(Path(cfg.out_dir) / "ablation.lock") as held:
        if not held:
            print(f"mdssd.ablation: {variant} seed {seed}: being trained by another process, skipped", flush=True)
            return None
        result = finished_result(cfg)  # finished while we waited for the lock
        if result is not None:
            return result
        print(f"mdssd.ablation: training {variant} seed {seed} -> {cfg.out_dir}", flush=True)
        result = train_and_score(cfg, variant, seed, args.eval_batch_size)
        path = Path(cfg.out_dir) / "result.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_clean(result), indent=1, default=_json_default) + "\n")
        tmp.replace(path)  # atomic: a half-written result never counts as finished
    return result


class _RunLock:
    """An exclusive lock file holding the owner's pid; a lock whose process is gone is taken over."""

    def __init__(self, path: Path):
        self.path, self.held = path, False

    def __enter__(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if _pid_alive(self.path):
                    return False
                self.path.unlink(missing_ok=True)  # stale: its process died
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return True
        return False

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)


def _pid_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_jobs(runs: int) -> int:
    return max(1, min(runs, os.cpu_count() or 1))


def _without_jobs_flag(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--jobs":
            skip = True
        elif not a.startswith("--jobs="):
            kept.append(a)
    return kept


def run_jobs(args, argv: list[str], first: config_mod.TrainConfig) -> int:
    """Start ``args.jobs`` worker processes of this ablation on one ``--out``; they share the runs
    through the per-run lock files. Each gets ``OMP_NUM_THREADS`` (cores / jobs less its data
    workers, at least 1) unless the caller chose threads itself."""
    env = dict(os.environ)
    threads = None
    if first.threads is None and "OMP_NUM_THREADS" not in env:
        threads = max(1, (os.cpu_count() or 1) // args.jobs - first.workers)
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "mdssd.ablation", *_without_jobs_flag(argv), "--jobs", "1", "--job-worker"]
    print(f"mdssd.ablation: {args.jobs} jobs, {threads or first.threads or env.get('OMP_NUM_THREADS')} "
          "intra-op thread(s) each", flush=True)
    workers = [subprocess.Popen(command, env=env) for _ in range(args.jobs)]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:  # the workers got the same SIGINT: let them save and stop
        for w in workers:
            w.wait()
        raise
    failed = [c for c in codes if c != 0]
    if failed:
        print(f"mdssd.ablation: {len(failed)} of {args.jobs} job(s) failed (exit {failed}); rerun to continue",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, passthrough = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        configs = {(v, s): run_config(args, passthrough, v, s) for v in args.variants for s in range(args.seeds)}
    except config_mod.ConfigError as error:
        print(f"mdssd.ablation: {error}", file=sys.stderr)
        return 2
    if args.jobs is None:
        args.jobs = default_jobs(len(configs))
    pending = [key for key, cfg in configs.items() if finished_result(cfg) is None]
    if args.jobs > 1 and not args.job_worker and not args.report_only and len(pending) > 1:
        failed = run_jobs(args, argv, configs[args.variants[0], 0])
    else:
        failed = run_here(args, argv, passthrough, configs, out)
    if args.job_worker:
        return failed
    # Once more from every stored result: other processes on this --out may have finished runs
    # this one skipped.
    runs = [r for r in (finished_result(configs[v, s]) for s in range(args.seeds) for v in args.variants) if r]
    if args.per_layer:
        runs = [add_per_layer(configs[r["variant"], r["seed"]], r, args.eval_batch_size) for r in runs]
    if not runs:
        print("mdssd.ablation: no finished runs to report", file=sys.stderr)
        return 1
    done = [v for v in args.variants if any(r["variant"] == v for r in runs)]
    coverage = coverage_of(configs, done, runs)
    write_reports(out, runs, done, _settings(args, argv, passthrough, configs[done[0], 0]), coverage)
    print((out / "ablation.md").read_text())
    print(f"mdssd.ablation: wrote {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'ablation.png'}")
    return failed


def run_here(args, argv: list[str], passthrough: list[str], configs: dict, out: Path) -> int:
    """Train (or reuse) every run in this process, seed-major: a stopped ablation has whole seeds
    of every variant, not all seeds of some."""
    runs = []
    for seed in range(args.seeds):
        for variant in args.variants:
            result = _run_or_reuse(configs[variant, seed], variant, seed, args)
            if result is None:
                continue
            runs.append(result)
            print(f"mdssd.ablation: {variant} seed {seed}: AP {100 * _none_nan(result['ap']):.1f} "
                  f"AP_small {100 * _none_nan(result['ap_small']):.1f} VOC07 mAP "
                  f"{100 * _none_nan(result['voc07_map']):.1f}", flush=True)
            # Reports after every run, so a long ablation can be read (and plotted) as it goes.
            finished = [r for r in (finished_result(configs[v, s]) for s in range(args.seeds)
                                    for v in args.variants) if r]
            done = [v for v in args.variants if any(r["variant"] == v for r in finished)]
            write_reports(out, finished, done, _settings(args, argv, passthrough, configs[variant, seed]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
