"""benchmarks.grad_norms: per-group gradient norms before clipping, on a tiny training run."""

import pytest

from benchmarks import grad_norms

TINY_RUN = ["--synthetic-train-images", "8", "--synthetic-val-images", "4", "--batch-size", "2", "--workers", "0"]


def test_groups_of_the_gated_block_and_the_clip_factor():
    rows, scales = grad_norms.measure("mdssd_tiny_gated", 2, TINY_RUN)
    assert len(rows) == 2
    first = rows[0]
    assert {"backbone", "extras", "head", "fusion0.merge", "fusion0.gate", "fusion2.skip_norm"} <= set(first)
    # At step 1 the gate is 0: nothing reaches the block's convs, everything reaches the backbone.
    assert first["fusion0.merge"] == 0 and first["fusion0.gate"] > 0 and first["backbone"] > 0
    total = sum(v * v for k, v in first.items() if k not in ("total", "clip factor")) ** 0.5
    assert first["total"] == pytest.approx(total)
    assert first["clip factor"] == pytest.approx(min(1.0, 10.0 / total))
    assert "fusion.0.gate" in scales
    text = grad_norms.markdown("mdssd_tiny_gated", rows, scales)
    assert "| fusion0.gate |" in text


def test_no_clipping_is_refused():
    with pytest.raises(SystemExit, match="no gradient clipping"):
        grad_norms.measure("ssd_tiny_s4", 1, TINY_RUN + ["--grad-clip", "null"])
