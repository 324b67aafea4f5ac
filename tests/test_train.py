"""End-to-end training on the small preset with tiny synthetic splits: outputs, exact resume,
NaN stop and a two-process DDP (gloo) run. Sized to run in about a minute on 2 CPU cores."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdssd import checkpoint as ckpt
from mdssd import config as cfgmod
from mdssd import train as train_mod
from mdssd.runlog import read_csv

REPO = Path(__file__).resolve().parents[1]

# 12 train images at batch 4: 3 steps per epoch, so 6 steps cross an epoch boundary.
TINY = [
    "--synthetic-train-images", "12", "--synthetic-val-images", "5",
    "--synthetic-min-size", "128", "--synthetic-max-size", "160",
    "--batch-size", "4", "--workers", "0", "--log-interval", "1", "--eval-interval", "0",
    "--checkpoint-interval", "0", "--warmup-steps", "2", "--lr", "0.01", "--no-progress",
    "--no-tensorboard", "--threads", "1",
]


@pytest.fixture(autouse=True)
def _restore_threads():
    # The runs set torch's intra-op threads to 1 (bitwise-reproducible CPU kernels).
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(out_dir, *extra):
    return cfgmod.from_args([*TINY, "--out-dir", str(out_dir), *extra])


def losses(out_dir):
    return [(int(r["step"]), r["loss"], r["loc"], r["conf"]) for r in read_csv(Path(out_dir) / "train_log.csv")]


def test_default_run_is_the_small_synthetic_one():
    cfg = cfgmod.from_args([])
    assert cfg.preset == cfgmod.SMALL_PRESET and cfg.dataset == "synthetic"
    assert cfg.resume is None and cfg.stop_at_step is None
    # Sized for the 15-minute CPU budget measured in the README: a few thousand images seen.
    assert 2_000 <= cfg.steps * cfg.batch_size <= 20_000


@pytest.mark.slow
def test_resume_continues_bitwise(tmp_path):
    full = train_mod.train(tiny(tmp_path / "full", "--steps", "6"))
    assert full["steps"] == 6 and not full["stopped_early"]
    # Outputs of a finished run.
    out = tmp_path / "full"
    for name in ("last.pt", "best.pt", "config.yaml", "train_log.csv", "eval_log.csv"):
        assert (out / name).is_file(), name
    assert set(full["metrics"]) >= {"mAP", "mAP_area", "images", "detections", "table"}
    assert full["metrics"]["images"] == 5
    state = ckpt.load(out / "last.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 2, 0)
    assert cfgmod.from_args(["--config", str(out / "config.yaml")]) == tiny(out, "--steps", "6")

    # Interrupted after step 4 (epoch 1, one batch into it), then resumed with a data worker.
    split = tmp_path / "split"
    first = train_mod.train(tiny(split, "--steps", "6", "--stop-at-step", "4"))
    assert first["stopped_early"] and first["steps"] == 4
    state = ckpt.load(split / "last.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 1)
    second = train_mod.train(tiny(split, "--steps", "6", "--resume", "auto", "--workers", "1"))
    assert second["steps"] == 6

    a, b = losses(out), losses(split)
    assert [row[0] for row in b] == [1, 2, 3, 4, 5, 6]  # each step logged once
    assert a == b  # bitwise: floats were logged with repr
    final_a, final_b = ckpt.load(out / "last.pt"), ckpt.load(split / "last.pt")
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    for key, value in final_a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], final_b["optimizer"]["state"][key]["momentum_buffer"])
    assert final_a["scheduler"] == final_b["scheduler"]
    assert torch.equal(final_a["rng"][0]["torch"], final_b["rng"][0]["torch"])
    assert full["metrics"]["mAP_area"] == second["metrics"]["mAP_area"] or (
        math.isnan(full["metrics"]["mAP_area"]) and math.isnan(second["metrics"]["mAP_area"]))
    assert full["metrics"]["detections"] == second["metrics"]["detections"]


def test_resume_refuses_a_different_run(tmp_path):
    train_mod.train(tiny(tmp_path, "--steps", "2", "--stop-at-step", "1"))
    with pytest.raises(RuntimeError, match="batch_size"):
        train_mod.train(tiny(tmp_path, "--steps", "2", "--resume", "auto", "--batch-size", "2"))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_build = train_mod.build_model
    calls = {"n": 0}

    def build_poisoned(*args, **kwargs):
        model = real_build(*args, **kwargs)

        def poison(module, inputs, output):
            # Training forwards only (evaluation runs under no_grad): the 3rd step goes NaN.
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == 3:
                    return output[0] * float("nan"), output[1]
            return output

        model.register_forward_hook(poison)
        return model

    monkeypatch.setattr(train_mod, "build_model", build_poisoned)
    code = train_mod.main([*TINY, "--out-dir", str(tmp_path), "--steps", "5",
                           "--checkpoint-interval", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 3" in err and "step 2" in err
    state = ckpt.load(tmp_path / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The CSV holds the good steps only.
    assert [row[0] for row in losses(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    single = train_mod.train(tiny(tmp_path / "single", "--steps", "3"))
    # PYTHONFAULTHANDLER: a rank that dies on a signal prints every thread's Python stack.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mdssd.train", *TINY, "--steps", "3", "--out-dir", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on 2 x cpu" in result.stdout and "done: 3 steps" in result.stdout

    ddp_state = ckpt.load(tmp_path / "ddp" / "last.pt")
    single_state = ckpt.load(tmp_path / "single" / "last.pt")
    assert set(ddp_state) == set(single_state)
    assert ddp_state["world_size"] == 2 and len(ddp_state["rng"]) == 2
    assert ddp_state["model"].keys() == single_state["model"].keys()
    assert (ddp_state["step"], ddp_state["epoch"], ddp_state["batch_in_epoch"]) == (3, 1, 0)
    # One log row per step, written by rank 0 only.
    assert [row[0] for row in losses(tmp_path / "ddp")] == [1, 2, 3]
    ddp_eval = read_csv(tmp_path / "ddp" / "eval_log.csv")
    single_eval = read_csv(tmp_path / "single" / "eval_log.csv")
    assert ddp_eval[0].keys() == single_eval[0].keys()
    # 5 val images over 2 ranks: the sampler pads to 6, the gather counts each image once.
    assert ddp_eval[-1]["images"] == 5 == single["metrics"]["images"]


def test_param_groups_give_deconvolutions_and_l2norm_scales_their_own_rate():
    from mdssd.model.fusion import FusionBlock

    model = train_mod.build_model("mdssd_tiny", 5, "reference", False)
    one = train_mod.param_groups(model, tiny("/tmp/unused"))
    assert len(one) == 1 and len(one[0]["params"]) == len(list(model.parameters()))

    cfg = tiny("/tmp/unused", "--deconv-lr-mult", "10", "--l2norm-scale-lr-mult", "100")
    rest, deconv, scales = train_mod.param_groups(model, cfg)
    blocks = [m for m in model.modules() if isinstance(m, FusionBlock)]
    transposed = [m for b in blocks for m in b.upper if isinstance(m, torch.nn.ConvTranspose2d)]
    assert {id(p) for p in deconv["params"]} == {id(p) for m in transposed for p in m.parameters()}
    assert len(deconv["params"]) == 2 * 3 * len(blocks)  # weight + bias of three deconvolutions each
    # Every L2Norm scale: the blocks' two, and the gated block's skip L2Norm (the default block).
    skips = [b.skip_norm.weight for b in blocks if b.skip_norm is not None]
    assert len(skips) == len(blocks)
    assert {id(p) for p in scales["params"]} == {id(p) for b in blocks for p in (b.scale_low, b.scale_high)} | {
        id(p) for p in skips}
    assert (deconv["lr"], scales["lr"]) == (pytest.approx(10 * cfg.lr), pytest.approx(100 * cfg.lr))
    counted = len(rest["params"]) + len(deconv["params"]) + len(scales["params"])
    assert counted == len(list(model.parameters()))  # every parameter in exactly one group

    # SSD's own L2Norms are scales too; a model without Fusion Blocks has no deconvolution group.
    ssd = train_mod.build_model("ssd_tiny_s4", 5, "reference", False)
    groups = train_mod.param_groups(ssd, cfg)
    assert len(groups) == 2 and len(groups[1]["params"]) == 2  # conv3_3's and conv4_3's L2Norm


@pytest.mark.slow
def test_lr_multipliers_follow_the_schedule_and_resume(tmp_path):
    flags = ("--steps", "4", "--deconv-lr-mult", "10", "--preset", "mdssd_tiny")
    full = train_mod.train(tiny(tmp_path / "full", *flags))
    state = ckpt.load(tmp_path / "full" / "last.pt")
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert lrs[1] == pytest.approx(10 * lrs[0])  # the decay scales both alike
    train_mod.train(tiny(tmp_path / "split", *flags, "--stop-at-step", "2"))
    train_mod.train(tiny(tmp_path / "split", *flags, "--resume", "auto"))
    assert losses(tmp_path / "full") == losses(tmp_path / "split") and full["steps"] == 4
    with pytest.raises(cfgmod.ConfigError, match="deconv_lr_mult"):
        tiny(tmp_path, "--deconv-lr-mult", "0")
