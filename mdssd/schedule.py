"""Learning-rate schedule of SPEC.md: linear warm-up, then step decay at fixed fractions of training.

The schedule is a pure function of the optimizer step, so a resumed run only needs the step count
(kept by ``LambdaLR``'s state dict) to continue on exactly the same learning rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def decay_steps(total_steps: int, fractions: Sequence[float]) -> list[int]:
    """Optimizer steps at which the rate is multiplied by ``gamma`` (SPEC: 2/3 and 5/6 of training)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    steps = []
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"lr decay fractions must lie in (0, 1], got {fraction}")
        steps.append(int(round(fraction * total_steps)))
    return sorted(steps)


def lr_factor(
    step: int,
    warmup_steps: int,
    warmup_factor: float,
    milestones: Sequence[int],
    gamma: float,
) -> float:
    """Multiplier of the base rate for the update made at optimizer ``step`` (0-based).

    Warm-up ramps linearly from ``warmup_factor`` at step 0 to 1 at ``warmup_steps``; the decay is
    applied on top, so a milestone that falls inside the warm-up still counts.
    """
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        alpha = step / warmup_steps
        factor = warmup_factor + (1.0 - warmup_factor) * alpha
    for milestone in milestones:
        if step >= milestone:
            factor *= gamma
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float,
    decay_fractions: Sequence[float],
    gamma: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` implementing :func:`lr_factor`; call ``scheduler.step()`` after every update."""
    milestones = decay_steps(total_steps, decay_fractions)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup_steps, warmup_factor, milestones, gamma),
    )
