"""Crop training and sliced evaluation end to end: `--crop` resumes bit-exactly, `--tile`
evaluates on tiles of the full images, and the flags reach the config."""

import pytest
import torch

from mdssd import checkpoint as ckpt
from mdssd import config as cfgmod
from mdssd import train as train_mod
from tests.test_train import TINY, losses

LARGE = ["--synthetic-min-size", "256", "--synthetic-max-size", "320", "--synthetic-object-sizes", "[6, 24]",
         "--synthetic-objects", "[2, 5]", "--crop", "--tile", "128", "--tile-overlap", "0.25"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_crop_and_tile_flags_reach_the_config():
    cfg = cfgmod.from_args(["--crop", "--crop-scale", "[0.9, 1.1]", "--tile", "512", "--tile-overlap", "0.2",
                            "--tile-merge", "ios", "--tile-full-image"])
    assert (cfg.crop, cfg.crop_scale, cfg.tile, cfg.tile_overlap, cfg.tile_merge, cfg.tile_full_image) == (
        True, [0.9, 1.1], 512, 0.2, "ios", True)
    spec = train_mod.tile_spec(cfg)
    assert (spec.size, spec.overlap, spec.merge, spec.full_image) == (512, 0.2, "ios", True)
    assert train_mod.tile_spec(cfgmod.from_args([])) is None
    for argv, message in [(["--tile-overlap", "1"], "tile_overlap"), (["--tile", "4"], "'tile'"),
                          (["--crop-scale", "[2, 1]"], "crop_scale"), (["--tile-merge", "wbf"], "tile_merge"),
                          (["--crop-min-visible", "0"], "crop_min_visible")]:
        with pytest.raises(cfgmod.ConfigError, match=message):
            cfgmod.from_args(argv)


@pytest.mark.slow
def test_crop_training_resumes_bitwise_and_evaluates_on_tiles(tmp_path):
    def run(out, *extra):
        return train_mod.train(cfgmod.from_args([*TINY, *LARGE, "--out-dir", str(out), "--steps", "6", *extra]))

    full = run(tmp_path / "full")
    assert full["metrics"]["images"] == 5
    run(tmp_path / "split", "--stop-at-step", "4")
    second = run(tmp_path / "split", "--resume", "auto", "--workers", "1")
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    a, b = ckpt.load(tmp_path / "full" / "last.pt"), ckpt.load(tmp_path / "split" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert full["metrics"]["detections"] == second["metrics"]["detections"]
    # The command-line tools slice the same way: mdssd.eval reproduces the run's tiled evaluation.
    import json

    from mdssd import detect, eval as eval_mod

    weights = str(tmp_path / "full" / "last.pt")
    report = tmp_path / "eval.json"
    assert eval_mod.main(["--weights", weights, "--tile", "128", "--tile-overlap", "0.25", "--no-coco",
                          "--device", "cpu", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["voc07_map_area"] == pytest.approx(full["metrics"]["mAP_area"], nan_ok=True)
    from mdssd.data import SyntheticSigns
    from PIL import Image

    Image.fromarray(SyntheticSigns("val", 1, min_size=300, max_size=300).image(0)).save(tmp_path / "big.png")
    assert detect.main([str(tmp_path / "big.png"), "--weights", weights, "--out", str(tmp_path / "det"),
                        "--tile", "128", "--tile-overlap", "0.2", "--device", "cpu"]) == 0
    assert (tmp_path / "det" / "big.png").is_file() and (tmp_path / "det" / "detections.json").is_file()
    # The crop options are part of the run: resuming with other ones is refused.
    with pytest.raises(RuntimeError, match="crop_min_visible"):
        run(tmp_path / "split", "--resume", "auto", "--crop-min-visible", "0.9", "--steps", "8")
