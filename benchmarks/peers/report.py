"""Tables (markdown), JSON and a plot of the runs of one data kind: mean ± std over seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from mdssd.ablation import mean_std
from mdssd.metrics import SIZE_BINS

METRICS = (("ap", "AP"), ("ap50", "AP50"), ("ap_small", "AP_small"), ("ar_small", "AR_small"))


def _value(run: dict, key: str) -> float:
    if key.startswith("size:"):
        _, name, field = key.split(":")
        value = run["size_bins"].get(name, {}).get(field)
    else:
        value = run.get(key)
    return float("nan") if value is None else float(value)


def row_key(run: dict) -> tuple[str, str]:
    return run["contestant"], run["budget"]


def summarize(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per (contestant, budget), in the order first seen: mean/std over its seeds."""
    keys = [k for k, _ in METRICS] + [f"size:{name}:AP" for name in SIZE_BINS] + [
        "images_seen", "train_s", "infer_ms_per_image", "sliced_mp_per_s", "input", "train_load"]
    rows: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        rows.setdefault(row_key(run), []).append(run)
    out = []
    for (contestant, budget), group in rows.items():
        stats = {k: mean_std([_value(r, k) for r in group]) for k in keys}
        ips = [r["images_seen"] / r["train_s"] for r in group if r["train_s"] > 0]
        stats["train_images_per_s"] = mean_std(ips)
        out.append({"contestant": contestant, "budget": budget, "seeds": sorted(r["seed"] for r in group),
                    "stats": stats})
    return out


def _pct(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['std']:.1f}" if stat["std"] is not None else "")


def _num(stat: dict, fmt: str) -> str:
    """Counts and times: the mean, with the spread only where the seeds differ."""
    if stat["mean"] is None:
        return "-"
    return format(stat["mean"], fmt) + (f" ± {format(stat['std'], fmt)}" if stat["std"] else "")


def markdown(kind: str, summary: list[dict], settings: dict) -> str:
    bins = list(SIZE_BINS)
    head = ["contestant", "budget", "input", "images seen", "train s", "train img/s"] + [t for _, t in METRICS] + [
        f"AP {b}" for b in bins] + ["infer ms/img", "sliced MP/s", "load (train)", "seeds"]
    lines = [f"# mdssd vs YOLO: {kind}", "",
             f"{settings['machine']}, {settings['threads']} threads, load before/after "
             f"{settings.get('load_before', '?')} / {settings.get('load_after', '?')}; seeds "
             f"{settings['seeds']}; mean ± std over seeds (percent for metrics); pycocotools on the same "
             f"ground truth for every contestant, predictions at score >= {settings['score_floor']} and "
             f"at most {settings['max_detections']} per image. \"load (train)\": the 1-minute load average "
             "sampled every 10 s during the training loop (it stretches \"train s\" and, through YOLO's "
             "images/s, the equal-time budget). \"seeds\": the seeds a row's mean and std are over.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        s = row["stats"]
        cells = [f"`{row['contestant']}`", row["budget"], _num(s["input"], ".0f"), _num(s["images_seen"], ",.0f"),
                 _num(s["train_s"], ".0f"), _num(s["train_images_per_s"], ".1f")]
        cells += [_pct(s[k]) for k, _ in METRICS] + [_pct(s[f"size:{b}:AP"]) for b in bins]
        cells += [_num(s["infer_ms_per_image"], ".1f"), _num(s["sliced_mp_per_s"], ".2f"), _num(s["train_load"], ".1f"),
                  ",".join(str(k) for k in row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Settings: `" + json.dumps(settings["command"]) + "`", ""]
    return "\n".join(lines)


def plot(kind: str, summary: list[dict], path: Path) -> None:
    """AP per size bin and contestant (the ablation's bar chart, PIL only)."""
    from mdssd.ablation import plot_size_bins

    bars = {f"{row['contestant']} ({row['budget']})": {"metrics": row["stats"]} for row in summary}
    plot_size_bins(bars, path, f"mdssd vs YOLO, {kind}: AP by object side (mean ± std over seeds)")
