"""Training config (YAML + command-line precedence, type checks), LR schedule and atomic
checkpoints: the parts of mdssd.train that need no model."""

import subprocess
import sys
import textwrap

import pytest
import torch

from mdssd import checkpoint as ckpt
from mdssd import config as cfgmod
from mdssd.schedule import build_scheduler, decay_steps, lr_factor


def test_defaults_are_the_small_cpu_run():
    cfg = cfgmod.from_args([])
    assert cfg.preset == cfgmod.SMALL_PRESET
    assert cfg.dataset == "synthetic"
    assert (cfg.momentum, cfg.weight_decay) == (0.9, 5e-4)
    assert cfg.lr_decay_at == pytest.approx([2 / 3, 5 / 6])
    assert cfg.out_dir == f"runs/{cfgmod.SMALL_PRESET}"


@pytest.mark.parametrize("preset", cfgmod.PAPER_PRESETS)
def test_paper_presets_use_the_spec_schedule(preset):
    cfg = cfgmod.from_args(["--preset", preset])
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.9, 5e-4, 32)
    assert cfg.grad_clip is None and cfg.warmup_steps > 0
    assert cfg.lr_decay_at == pytest.approx([2 / 3, 5 / 6])
    assert cfg.out_dir == f"runs/{preset}"
    # The generator's own 300-1024 px images, not the small preset's reduced ones.
    assert cfg.synthetic_min_size is None and cfg.synthetic_max_size is None


def test_yaml_then_flags_then_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent("""
        preset: ssd300
        lr: 0.002
        batch_size: 8
        workers: 0
        lr_decay_at: [0.5, 0.75]
        out_dir: /tmp/x
    """))
    cfg = cfgmod.from_args(["--config", str(path), "--batch-size", "4", "--set", "lr=3e-3",
                            "--no-progress", "--set", "grad_clip=10", "--set", "amp=bf16"])
    assert cfg.preset == "ssd300"
    # The preset's defaults sit under the file: steps come from PRESET_DEFAULTS["ssd300"].
    assert cfg.steps == cfgmod.PRESET_DEFAULTS["ssd300"]["steps"]
    assert cfg.batch_size == 4  # flag beats file
    assert cfg.lr == 3e-3 and isinstance(cfg.lr, float)  # --set beats file; "3e-3" is a float
    assert cfg.lr_decay_at == [0.5, 0.75]
    assert cfg.grad_clip == 10.0 and isinstance(cfg.grad_clip, float)
    assert cfg.progress is False
    assert cfg.amp == "bf16"
    assert cfg.workers == 0
    # Optional booleans: null means "decide by device"; both flag forms set it.
    assert cfg.channels_last is None
    assert cfgmod.from_args(["--no-channels-last"]).channels_last is False
    assert cfgmod.from_args(["--set", "channels_last=true"]).channels_last is True


def test_preset_flag_beats_file_preset_and_its_defaults_apply(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: ssd300\n")
    cfg = cfgmod.from_args(["--config", str(path), "--preset", cfgmod.SMALL_PRESET])
    assert cfg.preset == cfgmod.SMALL_PRESET
    assert cfg.batch_size == cfgmod.TrainConfig().batch_size


def test_epochs_replace_default_steps_but_not_both():
    cfg = cfgmod.from_args(["--epochs", "3"])
    assert cfg.epochs == 3 and cfg.steps is None
    with pytest.raises(cfgmod.ConfigError, match="not both"):
        cfgmod.from_args(["--epochs", "3", "--steps", "10"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "learning_rate=1"], "unknown config key 'learning_rate'"),
        (["--batch-size", "many"], "'batch_size' expects an integer"),
        (["--set", "amp=fp32"], "'amp' must be one of"),
        (["--set", "lr=-1"], "'lr' must be > 0"),
        (["--set", "dataset=voc"], "needs 'data_root'"),
        (["--set", "batch_norm=maybe"], "'batch_norm' expects true/false"),
    ],
)
def test_bad_values_name_the_field(argv, message):
    with pytest.raises(cfgmod.ConfigError, match=message):
        cfgmod.from_args(argv)


def test_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(cfgmod.ConfigError, match="expected a mapping"):
        cfgmod.from_args(["--config", str(path)])


def test_dump_and_reload_round_trips(tmp_path):
    cfg = cfgmod.from_args(["--set", "lr=0.01", "--set", "grad_clip=5", "--set", "seed=7"])
    cfgmod.dump_yaml(cfg, tmp_path / "c.yaml")
    again = cfgmod.from_args(["--config", str(tmp_path / "c.yaml")])
    assert again == cfg


def test_schedule_warmup_and_decay():
    milestones = decay_steps(600, [2 / 3, 5 / 6])
    assert milestones == [400, 500]
    assert lr_factor(0, 100, 0.25, milestones, 0.1) == pytest.approx(0.25)
    assert lr_factor(50, 100, 0.25, milestones, 0.1) == pytest.approx(0.625)
    assert lr_factor(100, 100, 0.25, milestones, 0.1) == 1.0
    assert lr_factor(399, 100, 0.25, milestones, 0.1) == 1.0
    assert lr_factor(400, 100, 0.25, milestones, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 100, 0.25, milestones, 0.1) == pytest.approx(0.01)

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    sched = build_scheduler(opt, 600, 100, 0.25, [2 / 3, 5 / 6], 0.1)
    seen = []
    for _ in range(600):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(2.5e-4)
    assert seen[399] == pytest.approx(1e-3) and seen[400] == pytest.approx(1e-4)
    assert seen[499] == pytest.approx(1e-4) and seen[599] == pytest.approx(1e-5)
    # Optimizer + scheduler restored mid-warm-up continue on the same rates (what resume does).
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler(opt, 600, 100, 0.25, [2 / 3, 5 / 6], 0.1)
    for _ in range(37):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched2 = build_scheduler(opt2, 600, 100, 0.25, [2 / 3, 5 / 6], 0.1)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for _ in range(500):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_atomic_save_exception_mid_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": 1, "w": torch.arange(10)}, path)

    real_save = torch.save

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PARTIAL" * 100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="simulated"):
        ckpt.atomic_save({"step": 2, "w": torch.zeros(10)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = ckpt.load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file removed


def test_atomic_save_process_killed_mid_write_keeps_previous(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": 1}, path)
    # A child process dies (os._exit: no cleanup, no finally) halfway through writing step 2.
    script = textwrap.dedent(f"""
        import os, torch
        from mdssd import checkpoint as ckpt
        def dying_save(obj, handle, *a, **k):
            handle.write(b"x" * 4096)
            handle.flush()
            os._exit(9)
        torch.save = dying_save
        ckpt.atomic_save({{"step": 2}}, {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()
    assert ckpt.load(path)["step"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    # The killed writer leaves its temp file (hidden, never loaded), not a torn last.pt.
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")
    ckpt.atomic_save({"step": 3}, path)
    assert ckpt.load(path)["step"] == 3
