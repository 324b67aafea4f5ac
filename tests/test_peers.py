"""benchmarks.peers: budget arithmetic, YOLO predictions -> Detections, the real-imagery converters
and the report, without ultralytics (the YOLO side runs only in the peers venv)."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.peers import budgets
from benchmarks.peers.report import markdown, summarize
from benchmarks.peers.runs import yolo_detections


def test_schedule_takes_whole_epochs_or_one_epoch_of_a_subset():
    assert budgets.schedule_for(8000, 2000) == (4, 2000)
    assert budgets.schedule_for(8900, 2000) == (4, 2000)    # 4.45 epochs -> 4
    assert budgets.schedule_for(9100, 2000) == (5, 2000)
    assert budgets.schedule_for(8000, 20000) == (1, 8000)   # less than an epoch: a subset
    assert budgets.schedule_for(0.2, 50) == (1, 1)
    with pytest.raises(ValueError, match="empty"):
        budgets.schedule_for(10, 0)


def test_equal_time_schedule_scales_by_measured_throughput():
    # YOLO trained 8000 images in 100 s; mdssd took 300 s: YOLO gets 24000 images.
    assert budgets.equal_time_schedule(300.0, 8000, 100.0, 2000) == (12, 2000)
    assert budgets.equal_time_schedule(30.0, 8000, 100.0, 20000) == (1, 2400)
    with pytest.raises(ValueError, match="no time"):
        budgets.equal_time_schedule(300.0, 8000, 0.0, 2000)


def test_equal_gflops_size_is_the_closest_with_ties_to_the_larger():
    table = {128: 0.35, 224: 1.07, 256: 1.39}
    assert budgets.equal_gflops_size(1.23, table) == 256     # |0.16| vs |0.16|: tie -> larger
    assert budgets.equal_gflops_size(1.0, table) == 224
    assert budgets.equal_gflops_size(0.1, table) == 128
    with pytest.raises(ValueError):
        budgets.equal_gflops_size(1.0, {128: 0.0})


class _Source:
    class_names = ("a", "b")

    def __init__(self, names):
        self.names = names

    def __len__(self):
        return len(self.names)

    def annotation(self, index):
        return type("A", (), {"file_name": f"sub/{self.names[index]}"})()


def test_yolo_rows_become_detections_in_source_order_with_labels_shifted():
    source = _Source(["b.png", "a.png"])
    rows = {"a.png": [[1, 2, 3, 4, 0.9, 0]], "b.png": [[5, 6, 7, 8, 0.5, 1], [0, 0, 1, 1, 0.2, 0]]}
    first, second = yolo_detections(source, rows)
    np.testing.assert_array_equal(first.labels, [2, 1])       # YOLO class k is label k + 1
    np.testing.assert_array_equal(first.boxes[0], [5, 6, 7, 8])
    np.testing.assert_array_equal(second.scores, [0.9])
    empty = yolo_detections(_Source(["a.png"]), {"a.png": []})[0]
    assert empty.boxes.shape == (0, 4)
    with pytest.raises(KeyError, match="c.png"):
        yolo_detections(_Source(["c.png"]), rows)


def test_nuclei_tiles_from_an_instance_mask(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from benchmarks.nuclei_tiles import mask_boxes, to_uint8, write_tiles
    from mdssd.data import build_source

    mask = np.zeros((256, 256), np.uint16)
    mask[10:30, 20:45] = 1          # whole in the top-left tile
    mask[120:136, 60:70] = 2        # 8 of 16 rows above the tile edge at 128: cut, kept in neither whole
    mask[200:220, 200:230] = 3      # whole in the bottom-right (val) tile
    np.testing.assert_array_equal(mask_boxes(mask), [[20, 10, 45, 30], [60, 120, 70, 136], [200, 200, 230, 220]])
    image = (np.arange(256 * 256).reshape(256, 256) % 4000).astype(np.uint16)
    grey = to_uint8(image)
    assert grey.shape == (256, 256, 3) and grey.dtype == np.uint8 and grey.max() == 255 and grey.min() == 0
    tifffile.imwrite(tmp_path / "img2d.tif", image)
    tifffile.imwrite(tmp_path / "mask2d.tif", mask)
    counts = write_tiles(tmp_path, tmp_path / "coco", tile=128, val_fraction=0.5)
    assert counts["train2017"] == 2 and counts["val2017"] == 2
    train, val = build_source("coco", tmp_path / "coco", "train"), build_source("coco", tmp_path / "coco", "val")
    assert train.class_names == ("nucleus",)
    first = train.annotation(0)
    np.testing.assert_array_equal(first.boxes[~first.crowd], [[20, 10, 45, 30]])
    assert sum(int(val.annotation(i).crowd.sum()) for i in range(len(val))) == 1   # the cut nucleus
    with pytest.raises(FileNotFoundError, match="img2d"):
        write_tiles(tmp_path / "missing", tmp_path / "out")


def test_report_means_over_seeds_and_prints_every_contestant():
    bins = {"2-8px": {"AP": 0.1}, "8-16px": {"AP": 0.2}, "16-32px": {"AP": 0.3}, "32-64px": {"AP": None}}

    def run(contestant, budget, seed, ap_small):
        return {"contestant": contestant, "budget": budget, "seed": seed, "ap": 0.5, "ap50": 0.7,
                "ap_small": ap_small, "ar_small": 0.6, "size_bins": bins, "images_seen": 8000,
                "train_s": 100.0, "infer_ms_per_image": 5.0, "input": 128, "train_load": 1.5 + seed}

    runs = [run("mdssd_tiny", "reference", 0, 0.60), run("mdssd_tiny", "reference", 1, 0.70),
            run("yolov8n", "images", 0, 0.10)]
    summary = summarize(runs)
    assert [(r["contestant"], r["budget"]) for r in summary] == [("mdssd_tiny", "reference"), ("yolov8n", "images")]
    assert summary[0]["stats"]["ap_small"]["mean"] == pytest.approx(0.65)
    assert summary[0]["stats"]["train_images_per_s"]["mean"] == pytest.approx(80.0)
    assert summary[1]["stats"]["ap_small"]["std"] is None
    text = markdown("synthetic", summary, {"machine": "cpu", "threads": 2, "seeds": 2, "score_floor": 0.01,
                                           "max_detections": 200, "command": ["x"]})
    assert "| `mdssd_tiny` | reference | 128 | 8,000 | 100 | 80.0 | 50.0 ± 0.0 | 70.0 ± 0.0 | 65.0 ± 7.1" in text
    assert "| `yolov8n` | images |" in text and json.dumps(["x"]) in text
    assert "| 5.0 | - | 2.0 ± 0.7 | 0,1 |" in text and "load (train)" in text   # the load each side trained under
    assert "| 1.5 | 0 |" in text                                  # each row names the seeds it is over


def test_the_peers_python_is_peers_python_else_this_checkouts_venv(monkeypatch):
    from pathlib import Path

    from benchmarks.peers import default_python

    monkeypatch.setenv("PEERS_PYTHON", "/somewhere/bin/python")
    assert default_python() == "/somewhere/bin/python"
    monkeypatch.delenv("PEERS_PYTHON")
    repo = Path(__file__).resolve().parents[1]
    assert default_python() == str(repo / "build" / "peers-venv" / "bin" / "python")


def test_the_load_sampler_averages_what_it_read_while_open(monkeypatch):
    import time

    from benchmarks.peers import load

    readings = iter(["3.0 1.0 1.0", "5.0 1.0 1.0"] + ["1.0 1.0 1.0"] * 1000)
    monkeypatch.setattr(load, "loadavg", lambda: next(readings))
    with load.LoadSampler(every=0.01) as sampler:
        while len(sampler.samples) < 2:
            time.sleep(0.01)
    summary = sampler.summary()
    assert sampler.samples[:2] == [3.0, 5.0] and summary["train_load_max"] == 5.0
    assert summary["train_load"] == sum(sampler.samples) / len(sampler.samples)
    assert load.LoadSampler().summary() == {"train_load": None, "train_load_max": None}   # never opened


def test_large_kind_trains_with_crop_only_and_detects_tiled(tmp_path, monkeypatch):
    """--tile is the scored detection's, never mdssd.train's (there it would only slice the final
    evaluation, minutes of unused work); YOLO trains on what the slicer returns."""
    from benchmarks.peers import data
    from mdssd.data import SyntheticSigns
    from mdssd.data.export import export_coco

    def tiny(coco, wheels):
        for split, coco_split in (("train", "train2017"), ("val", "val2017")):
            export_coco(SyntheticSigns(split, num_images=2, seed=0, min_size=64, max_size=64), coco,
                        split=coco_split, image_format="png")

    monkeypatch.setitem(data.WRITERS, "large", tiny)
    with pytest.raises(ValueError, match="slicer"):
        data.prepare("large", tmp_path, tmp_path / "wheels")
    sliced = []

    def slicer(coco, out):  # stands in for SAHI's slice_coco: the train split as it is
        sliced.append(coco)
        return coco

    prep = data.prepare("large", tmp_path, tmp_path / "wheels", slicer, tile=96, tile_overlap=0.5)
    assert prep.sliced and prep.mdssd_flags == ("--crop",)
    assert prep.detect_flags == ("--tile", "96", "--tile-overlap", "0.5")
    assert sliced == [tmp_path / "large" / "coco"] and prep.yolo_train_images == 2
    again = data.prepare("large", tmp_path, tmp_path / "wheels", slicer, tile=96, tile_overlap=0.5)
    assert again == prep and len(sliced) == 1              # written once, then reused
