"""``python -m mdssd.ablation``: argument checks, aggregation over seeds, reports, resuming; and the
one-line ``--help`` of every training flag."""

import json
import math

import pytest

from mdssd import ablation
from mdssd import config as cfgmod


def _run(variant, seed, ap, bins=(0.1, 0.2, 0.3, 0.4)):
    return {"variant": variant, "seed": seed, "ap": ap, "ap50": 2 * ap, "ap_small": ap, "ap_medium": ap,
            "ar_small": ap, "voc07_map": ap, "train_wall_s": 10.0 + seed, "train_cpu_s": 9.0, "params": 100,
            "gflops": 1.5, "priors": 50, "threads": 1, "loadavg_after": "1.0 1.0 1.0",
            "size_bins": {n: {"AP": b, "AP50": b, "AR": b, "num_gt": 5} for n, b in zip(ablation.SIZE_BINS, bins)}}


def test_mean_std_and_paired_differences():
    runs = [_run("a", 0, 0.10), _run("a", 1, 0.20), _run("b", 0, 0.30), _run("b", 1, 0.60)]
    summary = ablation.summarize_runs(runs, ["a", "b"])
    ap = summary["b"]["metrics"]["ap"]
    assert ap["mean"] == pytest.approx(0.45) and ap["std"] == pytest.approx(math.sqrt(0.045)) and ap["n"] == 2
    diff = summary["b"]["minus_a"]["ap"]  # per seed: 0.2, 0.4
    assert diff["mean"] == pytest.approx(0.3) and diff["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["a"]["metrics"]["size:8-16px:AP"]["mean"] == pytest.approx(0.2)
    assert ablation.mean_std([0.5])["std"] is None and ablation.mean_std([float("nan")])["mean"] is None


def test_reports_are_written(tmp_path):
    runs = [_run("a", 0, 0.10), _run("a", 1, 0.20), _run("b", 0, 0.30), _run("b", 1, 0.60)]
    data = ablation.write_reports(tmp_path, runs, ["a", "b"], {"dataset": "synthetic", "seeds": 2})
    assert json.loads((tmp_path / "ablation.json").read_text())["summary"]["b"]["metrics"]["ap"]["mean"] == pytest.approx(0.45)
    text = (tmp_path / "ablation.md").read_text()
    assert "| `b` | 2 | 45.0 ± 21.2 |" in text and "`b` − `a`" in text and "30.0 ± 14.1" in text
    assert len(data["runs"]) == 4
    from PIL import Image

    assert Image.open(tmp_path / "ablation.png").size == (900, 520)


def test_per_layer_section_is_averaged_over_seeds(tmp_path):
    def layers(ap_first):
        bins = {n: {"AP": ap_first, "AP50": ap_first, "AR": 0.0, "num_gt": 5} for n in ablation.SIZE_BINS}
        return [{"layer": "module1", "map_size": 32, "priors": 4096, "ap": ap_first, "ap_small": ap_first,
                 "size_bins": bins},
                {"layer": "all", "map_size": None, "priors": 5620, "ap": 0.5, "ap_small": 0.5, "size_bins": bins}]

    runs = [dict(_run("a", 0, 0.1), per_layer=layers(0.2)), dict(_run("a", 1, 0.2), per_layer=layers(0.4)),
            _run("b", 0, 0.3)]
    data = ablation.write_reports(tmp_path, runs, ["a", "b"], {"dataset": "synthetic", "seeds": 2})
    first = data["per_layer"]["a"]["module1"]["metrics"]
    assert first["size:8-16px:AP"]["mean"] == pytest.approx(0.3) and first["ap"]["n"] == 2
    assert "b" not in data["per_layer"]  # runs without per-layer scores are left out, not zero
    assert "| `a` | module1 | 32x32 | 30.0 ± 14.1 |" in (tmp_path / "ablation.md").read_text()
    assert (tmp_path / "per-layer-a.png").exists() and not (tmp_path / "per-layer-b.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--seed", "3"], "--seed: set by the ablation"),  # no abbreviation of --seeds either
    (["--out-dir=x"], "--out-dir=x: set by the ablation"),
    (["--variants", "nope"], "unknown variants"),
    (["--variants", "ssd_tiny", "ssd_tiny"], "lists a preset twice"),
    (["--seeds", "0"], "--seeds must be >= 1"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args(argv)
    assert message in capsys.readouterr().err


def test_training_flags_pass_through_and_bad_ones_are_named(capsys):
    args, rest = ablation.parse_args(["--steps", "7", "--lr", "2e-3", "--variants", "ssd_tiny"])
    cfg = ablation.run_config(args, rest, "ssd_tiny", 2)
    assert (cfg.steps, cfg.lr, cfg.seed, cfg.preset, cfg.eval_interval) == (7, 2e-3, 2, "ssd_tiny", 0)
    assert cfg.out_dir.endswith("runs/ssd_tiny/seed2") and cfg.resume == "auto"
    assert ablation.main(["--steps", "-3", "--out", "/nonexistent/never"]) == 2
    assert "'steps' must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_end_to_end_and_resumes(tmp_path, monkeypatch):
    argv = ["--out", str(tmp_path), "--variants", "ssd_tiny", "ssd_tiny_s4", "--seeds", "1", "--steps", "2",
            "--synthetic-train-images", "8", "--synthetic-val-images", "4", "--batch-size", "4",
            "--warmup-steps", "1", "--workers", "0", "--no-tensorboard"]
    assert ablation.main(argv) == 0
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert [(r["variant"], r["seed"], r["steps"]) for r in data["runs"]] == [("ssd_tiny", 0, 2), ("ssd_tiny_s4", 0, 2)]
    run = data["runs"][1]
    assert run["priors"] == 5_620 and run["gflops"] > 0 and set(run["size_bins"]) == set(ablation.SIZE_BINS)
    assert run["voc07_map"] == pytest.approx(run["train_reported_voc07_map"])  # same val set, same weights
    assert (tmp_path / "ablation.png").exists() and (tmp_path / "ablation.md").exists()

    # Finished runs are not retrained; a changed schedule is refused, not mixed in.
    import mdssd.train

    monkeypatch.setattr(mdssd.train, "train", lambda cfg: pytest.fail("retrained a finished run"))
    assert ablation.main(argv) == 0
    # --per-layer scores the finished runs once per layer without retraining them.
    assert ablation.main(argv + ["--per-layer"]) == 0
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert [row["layer"] for row in data["runs"][1]["per_layer"]] == ["conv3_3", "conv4_3", "conv7", "conv8_2",
                                                                      "conv9_2", "conv10_2", "all"]
    assert data["runs"][1]["per_layer"][-1]["ap"] == pytest.approx(data["runs"][1]["ap"], nan_ok=True)
    assert (tmp_path / "per-layer-ssd_tiny_s4.png").exists()
    with pytest.raises(SystemExit, match="different config \\(steps\\)"):
        ablation.main([a if a != "2" else "3" for a in argv])


# ---------------------------------------------------------------------------------------------
# One-line help of every training flag


def test_every_training_flag_has_a_help_line():
    assert set(cfgmod.FIELD_HELP) <= set(cfgmod.field_names())  # no stale entries
    text = cfgmod.build_parser().format_help()
    assert " V " not in text and "metavar" not in text
    for name in cfgmod.field_names():
        help_line = cfgmod.field_help(name)
        assert help_line and help_line != name.replace("_", " "), name
        assert help_line.split(" (")[0][:20] in " ".join(text.split()), name
    assert "--steps N" in text and "--lr X" in text and "--amp {auto,off,bf16,fp16}" in text


def test_a_field_without_a_help_entry_gets_its_comment(monkeypatch):
    monkeypatch.delitem(cfgmod.FIELD_HELP, "threads")
    assert cfgmod.field_help("threads") == "torch.set_num_threads on CPU"


def test_prior_coverage_of_an_8px_object():
    from mdssd.data import Annotation
    from mdssd.model import get_config
    from mdssd.prior_coverage import format_coverage, prior_coverage

    class Source:  # one 8x8 object centred on a stride-4 cell (centre 6, 6) of a 128 px image
        def __len__(self):
            return 1

        def annotation(self, i):
            return Annotation(1, "a.png", 128, 128, [[2, 2, 10, 10]], [1])

    md = prior_coverage(get_config("mdssd_tiny", num_classes=2), Source())["8-16px"]
    assert md["objects"] == 1 and md["mean_best_iou"] == pytest.approx(1.0) and md["reach_threshold"] == 1.0
    assert md["best_layer"] == {"module1": 1.0} and md["mean_positives"] >= 1
    # SSD's smallest prior is 16 px: an 8 px box overlaps it by at most 64/256, so only the forced
    # best prior is positive.
    ssd = prior_coverage(get_config("ssd_tiny", num_classes=2), Source())["8-16px"]
    assert ssd["mean_best_iou"] <= 0.25 + 1e-9 and ssd["reach_threshold"] == 0 and ssd["mean_positives"] == 1
    assert "| `ssd_tiny` | 8-16px | 1 | 0% |" in format_coverage({"ssd_tiny": {"8-16px": ssd}})


@pytest.mark.slow
def test_jobs_share_the_runs_and_give_the_same_results(tmp_path, capsys):
    # Two worker processes on one --out take one run each (lock files); each run's result is the
    # same as when one process trains both at the same thread count.
    base = ["--variants", "ssd_tiny", "ssd_tiny_s4", "--seeds", "1", "--steps", "2",
            "--synthetic-train-images", "8", "--synthetic-val-images", "4", "--batch-size", "4",
            "--warmup-steps", "1", "--workers", "0", "--no-tensorboard"]
    assert ablation.main(["--out", str(tmp_path / "two"), "--jobs", "2", *base]) == 0
    assert "2 jobs, 1 intra-op thread(s) each" in capsys.readouterr().out
    assert ablation.main(["--out", str(tmp_path / "one"), "--jobs", "1", "--threads", "1", *base]) == 0
    two = json.loads((tmp_path / "two" / "ablation.json").read_text())["runs"]
    one = json.loads((tmp_path / "one" / "ablation.json").read_text())["runs"]
    assert [(r["variant"], r["threads"]) for r in two] == [("ssd_tiny", 1), ("ssd_tiny_s4", 1)]
    for a, b in zip(one, two):
        assert (a["ap"], a["voc07_map"], a["size_bins"]) == (b["ap"], b["voc07_map"], b["size_bins"])
    assert not list((tmp_path / "two").rglob("ablation.lock")) and not list((tmp_path / "two").glob(".*.tmp"))


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--jobs", "0"])
    assert "--jobs must be >= 1" in capsys.readouterr().err
