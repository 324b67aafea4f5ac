"""``python -m benchmarks.grad_norms --preset P --measure-steps N [training flags]``: the gradient norm
of each part of a detector (backbone, extras, every Fusion Block's branches, merge, L2Norm scales
and gate, SSD's L2Norms, the heads) on the first N steps of a training run, measured before
gradient clipping, with the clip factor that the global clip then applies to all of them.

It answers "does the global clip (``--grad-clip``, 10 in the small presets) starve one part of
the network?" without training to the end: the run is ``mdssd.train`` itself (same data, seed,
schedule, clipping), stopped after N steps (``--stop-at-step``) in a scratch folder. Prints a
markdown table: per group the first step's norm, the median over all steps and over the second
half (after warm-up's largest steps), and the final values of the L2Norm scales and gates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict

import torch


def group_of(name: str) -> str:
    """The part of the detector a parameter belongs to, from its state-dict name."""
    parts = name.split(".")
    if parts[0] == "fusion":
        # fusion.<i>.upper.* / lower / merge / scale_low / scale_high / gate / skip_norm.*
        return f"fusion{parts[1]}.{parts[2]}"
    return parts[0]  # backbone, extras, head, conv3_3_norm, conv4_3_norm


def group_norms(model: torch.nn.Module) -> dict[str, float]:
    """L2 norm of the current gradients per :func:`group_of` group."""
    squares: dict[str, float] = defaultdict(float)
    for name, param in model.named_parameters():
        if param.grad is not None:
            squares[group_of(name)] += param.grad.detach().float().pow(2).sum().item()
    return {group: value ** 0.5 for group, value in squares.items()}


def measure(preset: str, steps: int, train_flags: list[str]) -> tuple[list[dict], dict[str, float]]:
    """Per-step norms (before clipping) of ``steps`` training steps, and the final scale values."""
    from mdssd import config as config_mod
    from mdssd import train as train_mod

    rows: list[dict] = []
    held: dict = {}
    clip = torch.nn.utils.clip_grad_norm_
    setup = train_mod.setup_run

    def recording_clip(parameters, max_norm, *args, **kwargs):
        norms = group_norms(held["model"])
        total = sum(v * v for v in norms.values()) ** 0.5
        rows.append({"total": total, "clip factor": min(1.0, max_norm / max(total, 1e-12)), **norms})
        return clip(parameters, max_norm, *args, **kwargs)

    def recording_setup(cfg, info):
        run = setup(cfg, info)
        held["model"] = run.core
        return run

    with tempfile.TemporaryDirectory() as out:
        cfg = config_mod.from_args(["--preset", preset, "--stop-at-step", str(steps), "--eval-interval", "0",
                                    "--no-progress", "--no-tensorboard", "--out-dir", out, *train_flags])
        if cfg.grad_clip is None:
            raise SystemExit("grad_norms: the run has no gradient clipping (--grad-clip null); nothing to measure")
        torch.nn.utils.clip_grad_norm_ = recording_clip
        train_mod.setup_run = recording_setup
        try:
            train_mod.train(cfg)
        finally:
            torch.nn.utils.clip_grad_norm_ = clip
            train_mod.setup_run = setup
    scales = {name: param.detach().float().mean().item() for name, param in held["model"].named_parameters()
              if name.endswith(("gate", "scale_low", "scale_high", "norm.weight"))}
    return rows, scales


def markdown(preset: str, rows: list[dict], scales: dict[str, float]) -> str:
    late = rows[len(rows) // 2:]
    lines = [f"`{preset}`, {len(rows)} steps: gradient L2 norm per group before clipping",
             "", "| group | step 1 | median | median, 2nd half |", "|---|---|---|---|"]
    for key in rows[0]:
        values = [r.get(key, 0.0) for r in rows]
        lines.append(f"| {key} | {values[0]:.3f} | {statistics.median(values):.3f} | "
                     f"{statistics.median(r.get(key, 0.0) for r in late):.3f} |")
    if scales:
        lines += ["", "Values after the last step (mean over channels): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in scales.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grad_norms", description=__doc__.split("\n\n")[0],
                                     epilog="Other flags go to the training run (python -m mdssd.train --help).")
    parser.add_argument("--preset", required=True, help="model preset, e.g. mdssd_tiny or ssd_tiny_s4")
    parser.add_argument("--measure-steps", type=int, default=200,
                        help="training steps to measure, of the run's own schedule (default 200)")
    args, train_flags = parser.parse_known_args(argv)
    if args.measure_steps < 1:
        parser.error(f"--measure-steps must be >= 1, got {args.measure_steps}")
    rows, scales = measure(args.preset, args.measure_steps, train_flags)
    print(markdown(args.preset, rows, scales))
    return 0


if __name__ == "__main__":
    sys.exit(main())
