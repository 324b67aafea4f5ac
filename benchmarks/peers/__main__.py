"""``python -m benchmarks.peers [--data KIND ...] [--seeds N] [--steps N] ...`` (see the package docstring).

Resumable: every finished run leaves ``<work>/<kind>/runs/<contestant>/<budget>/seed<k>/result.json``
and is not run again with the same settings; an interrupted run starts again from scratch (its
wall time is one of the budgets). ``--report-only`` rewrites the reports from the finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import budgets as budget_mod
from . import default_python
from .data import KINDS, prepare
from .report import markdown, plot, summarize
from .runs import MAX_DETECTIONS, SCORE_FLOOR, loadavg, run_mdssd, run_yolo, run_yolo_job, sahi_slicer, write_json

DEFAULT_MDSSD = ("mdssd_tiny", "ssd_tiny_s4")
DEFAULT_YOLO = ("yolov8n", "yolo11n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=list(KINDS), choices=KINDS, help="data kinds (default: all)")
    parser.add_argument("--mdssd", nargs="*", default=list(DEFAULT_MDSSD), metavar="PRESET",
                        help="mdssd presets; the first is the reference of YOLO's budgets (default: %(default)s)")
    parser.add_argument("--yolo", nargs="*", default=list(DEFAULT_YOLO), metavar="ARCH",
                        help="ultralytics architectures, built from <arch>.yaml (default: %(default)s)")
    parser.add_argument("--budgets", nargs="+", default=list(budget_mod.BUDGETS), choices=budget_mod.BUDGETS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    parser.add_argument("--steps", type=int, default=1000, help="mdssd training steps (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch, both sides (default: 8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of every contestant (default: the cores)")
    parser.add_argument("--work", default="runs/peers", help="data and runs (default: runs/peers)")
    parser.add_argument("--wheels", default="build/peers-data",
                        help="unpacked data of the deepforest and stardist wheels (default: build/peers-data)")
    parser.add_argument("--peers-python", default=default_python(),
                        help="python of the venv with ultralytics and SAHI (default: $PEERS_PYTHON or "
                        "build/peers-venv/bin/python, made by benchmarks/peers_venv.sh)")
    parser.add_argument("--results", default="benchmarks/results", help="where the reports go")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the reports from finished runs")
    return parser


def _cached(path: Path, settings: dict, make) -> dict:
    """The run's result: reused when it exists with the same settings, else made and saved."""
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            return old
    result = {**make(), "settings": settings}
    write_json(path, result)
    return result


def _finished(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def gflops_table(python: str, archs: list[str], work: Path, threads: int) -> dict[str, dict[int, float]]:
    path = work / "yolo-gflops.json"
    if not path.is_file():
        out = run_yolo_job(python, {"job": "gflops", "archs": archs, "sizes": list(budget_mod.CANDIDATE_SIZES)},
                           work / "gflops-job.json", threads)
        write_json(path, out)
    table = json.loads(path.read_text())
    missing = [a for a in archs if a not in table]
    if missing:
        path.unlink()
        return gflops_table(python, archs, work, threads)
    return {arch: {int(k): v for k, v in table[arch].items()} for arch in archs}


def run_kind(kind: str, args, python: str, work: Path) -> list[dict]:
    prep = prepare(kind, work, Path(args.wheels), sahi_slicer(python, args.threads))
    gflops = gflops_table(python, args.yolo, work, args.threads) if "gflops" in args.budgets and args.yolo else {}
    runs = []
    for seed in range(args.seeds):
        reference = None
        for preset in args.mdssd:
            settings = {"steps": args.steps, "batch": args.batch_size, "threads": args.threads}
            run_dir = work / kind / "runs" / preset / "reference" / f"seed{seed}"
            result = _cached(run_dir / "result.json", settings,
                             lambda: run_mdssd(prep, preset, seed, args.steps, args.batch_size, args.threads,
                                               run_dir / "train"))
            runs.append({**result, "budget": "reference"})
            reference = reference or result
        for arch in args.yolo:
            def yolo(budget: str, schedule: tuple[int, int], imgsz: int) -> dict:
                run_dir = work / kind / "runs" / arch / budget / f"seed{seed}"
                settings = {"schedule": list(schedule), "imgsz": imgsz, "batch": args.batch_size,
                            "threads": args.threads}
                result = _cached(run_dir / "result.json", settings,
                                 lambda: run_yolo(python, prep, arch, seed, schedule, imgsz, args.batch_size,
                                                  args.threads, run_dir))
                return {**result, "budget": budget}

            # Every budget needs the reference run; the equal-time one also YOLO's equal-images run.
            schedule = budget_mod.schedule_for(args.steps * args.batch_size, prep.yolo_train_images)
            by_images = yolo("images", schedule, reference["input"])
            if "images" in args.budgets:
                runs.append(by_images)
            if "time" in args.budgets:
                runs.append(yolo("time", budget_mod.equal_time_schedule(
                    reference["train_s"], by_images["images_seen"], by_images["train_s"],
                    prep.yolo_train_images), reference["input"]))
            if "gflops" in args.budgets:
                runs.append(yolo("gflops", schedule, budget_mod.equal_gflops_size(reference["gflops"], gflops[arch])))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1 or args.steps < 1 or args.batch_size < 1 or args.threads < 1:
        print("benchmarks.peers: --seeds, --steps, --batch-size and --threads must be >= 1", file=sys.stderr)
        return 2
    if not args.mdssd:
        print("benchmarks.peers: the budgets need at least one mdssd preset (--mdssd)", file=sys.stderr)
        return 2
    python = args.peers_python
    if args.yolo and not args.report_only and not Path(python).is_file():
        print(f"benchmarks.peers: no peers venv at {python}: run benchmarks/peers_venv.sh", file=sys.stderr)
        return 2
    import torch

    from benchmarks.harness import cpu_model

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    machine = cpu_model()
    words = [w for w in machine.lower().replace("(r)", "").replace("(tm)", "").split() if w != "processor"]
    slug = "cpu-" + "-".join(words[:3]) + f"-{args.threads}thread" + ("s" if args.threads > 1 else "")
    for kind in args.data:
        load_before = loadavg()
        if args.report_only:
            runs = [json.loads(p.read_text()) | {"budget": p.parent.parent.name}
                    for p in sorted((work / kind / "runs").glob("*/*/seed*/result.json"))]
        else:
            runs = run_kind(kind, args, python, work)
        settings = {"machine": machine, "threads": args.threads, "seeds": args.seeds, "steps": args.steps,
                    "batch": args.batch_size, "score_floor": SCORE_FLOOR, "max_detections": MAX_DETECTIONS,
                    "load_before": load_before, "load_after": loadavg(),
                    "command": ["python", "-m", "benchmarks.peers", *(argv if argv is not None else sys.argv[1:])]}
        summary = summarize(runs)
        out = Path(args.results)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"peers-{kind}-{slug}"
        write_json(stem.with_suffix(".json"), {"settings": settings, "summary": summary, "runs": runs})
        stem.with_suffix(".md").write_text(markdown(kind, summary, settings))
        plot(kind, summary, stem.with_suffix(".png"))
        print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
