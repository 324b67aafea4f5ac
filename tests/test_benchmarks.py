"""Smoke tests of the benchmark suite: it runs on CPU at --quick sizes and writes its table and
files, so it keeps working as the ops and the model change. Speed is never asserted here."""

import json

import numpy as np
import pytest
import torch

from benchmarks import inputs, kernels
from mdssd import reference


def _run(tmp_path, capsys, *args):
    assert kernels.main(["--device", "cpu", "--quick", "--out", str(tmp_path), *args]) == 0
    stdout = capsys.readouterr().out
    (json_path,) = tmp_path.glob("cpu-*-quick.json")
    (md_path,) = tmp_path.glob("cpu-*-quick.md")
    return stdout, json.loads(json_path.read_text()), md_path.read_text()


def test_kernel_suite_quick_all_ops(tmp_path, capsys):
    stdout, data, md = _run(tmp_path, capsys)
    rows = data["rows"]
    assert {r["op"] for r in rows} == {"box_iou", "match_encode", "l2norm_sum fwd", "l2norm_sum bwd",
                                       "nms", "batched_nms", "ssd_postprocess"}
    for row in rows:
        cells = row["cells"]
        assert cells["ours"]["status"] == "ok" and cells["ours"]["median_ms"] > 0, row
        # Every contestant is either timed or says why not: nothing is dropped silently.
        for name in ("reference", "compiled", "torchvision"):
            cell = cells[name]
            assert cell["status"] in ("ok", "scaled", "skipped"), (name, row)
            if cell["status"] == "skipped":
                assert cell["reason"]
        assert "DIFF" not in row["check"] and "failed" not in row["check"], row
        if cells["reference"]["status"] != "skipped":
            assert row["check"].startswith("ref ok"), row
        assert row["floor_bytes"] > 0 and row["pct_of_floor"] > 0
        if row["op"] == "box_iou":  # --quick compiles this op only
            assert cells["compiled"]["status"] == "ok" and cells["compiled"]["compile_s"] > 0, row
            assert "compiled ok" in row["check"], row
    # The capped paths are exercised: a scaled reference (postprocess) and a skipped one (nms).
    assert any(r["cells"]["reference"]["status"] == "scaled" for r in rows)
    assert any(r["cells"]["reference"]["status"] == "skipped" for r in rows)
    assert data["device"]["threads"] == torch.get_num_threads()
    for text in (stdout, md):
        assert "compiled ref" in text and "torchvision" in text and "% floor" in text
        assert "box_iou" in text and "ssd_postprocess" in text


def test_torchvision_postprocess_has_the_reference_semantics(gen):
    # The torchvision contestant is the same function as ssd_postprocess; run it here with the
    # reference batched_nms in torchvision's place (random scores: no ties).
    pri, _ = inputs.priors("mdssd300")
    pri = pri[::8].contiguous()
    loc, conf = inputs.head_outputs(2, pri.shape[0], 5, gen)
    ours = kernels.torchvision_postprocess(loc, conf, pri, batched_nms=reference.batched_nms)
    ref = reference.ssd_postprocess(loc, conf, pri)
    assert torch.equal(ours[3], ref[3]) and torch.equal(ours[2], ref[2])
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1])


@pytest.mark.parametrize("name", ["mdssd300", "mdssd512"])
def test_local_prior_table(name):
    local = inputs._local_priors(name)
    assert local.shape == (inputs.NUM_PRIORS[name], 4)
    assert bool((local[:, 2:] > 0).all()) and bool((local >= 0).all()) and bool((local <= 1).all())
    model_priors, source = inputs.priors(name)
    if source == "mdssd.model" and name == "mdssd300":
        # Both follow SPEC.md's MDSSD300 table: the fallback must be the model's priors.
        torch.testing.assert_close(local, model_priors)


def test_contention_suite_quick(tmp_path, capsys):
    from benchmarks import contention

    if torch.get_num_threads() < 2:
        pytest.skip("the contention suite compares 1 thread with the default, which is 1 here")
    assert contention.main(["--quick", "--out", str(tmp_path), "--ops", "nms,batched_nms"]) == 0
    stdout = capsys.readouterr().out
    (json_path,) = tmp_path.glob("cpu-*-contention-quick.json")
    data = json.loads(json_path.read_text())
    assert {r["op"] for r in data["rows"]} == {"nms", "batched_nms"}
    for row in data["rows"]:
        for key in ("idle_1", "idle_n", "busy_1", "busy_n"):
            assert row[key] > 0, row
        assert row["busy_ratio"] == pytest.approx(row["busy_n"] / row["busy_1"])
    assert data["neighbour_cores_busy"] > 0  # the neighbour really ran during the busy phases
    assert data["load_start"] is not None and data["load_end"] is not None
    assert "busy 2 thr / 1 thr" in stdout or f"busy {data['default_threads']} thr / 1 thr" in stdout


def test_deepforest_tiles_keep_boxes_mostly_inside_and_mark_the_rest_crowd():
    from benchmarks.deepforest_tiles import tile_annotations

    boxes = np.array([[10, 10, 30, 30],      # inside tile (0, 0)
                      [120, 0, 140, 20],     # 40% inside: a crowd region there, a target in the next tile
                      [100, 50, 130, 60],    # 28 of 30 px inside: a target, clipped
                      [300, 300, 310, 310]], dtype=float)  # elsewhere
    targets, crowd = tile_annotations(boxes, 0, 0, 128)
    assert targets == [[10.0, 10.0, 20.0, 20.0], [100.0, 50.0, 28.0, 10.0]]
    assert crowd == [[120.0, 0.0, 8.0, 20.0]]
    targets, crowd = tile_annotations(boxes, 128, 0, 128)
    assert targets == [[0.0, 0.0, 12.0, 20.0]] and crowd == [[0.0, 50.0, 2.0, 10.0]]
    assert tile_annotations(np.zeros((0, 4)), 0, 0, 128) == ([], [])


def test_data_formats_benchmark_smoke(tmp_path, capsys):
    from benchmarks import data_formats

    assert data_formats.main(["--images", "12", "--size", "64x48", "--work", str(tmp_path / "w"), "--out",
                              str(tmp_path / "r"), "--ultralytics-python", str(tmp_path / "none")]) == 0
    (md,) = tmp_path.glob("r/data-formats-cpu-*.md")
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["images"] == 12 and data["labels"] > 0 and len(data["index_s"]) == 3 and data["ultralytics"] is None
    assert "index per image" in md.read_text() and "load" in md.read_text().lower()


def _peers_python() -> str:
    from benchmarks.peers import default_python

    return default_python()


# CI does not build the peers venv (.ci/run): there this test skips.
@pytest.mark.skipif(not __import__("pathlib").Path(_peers_python()).is_file(),
                    reason="needs the peers venv with ultralytics ($PEERS_PYTHON or build/peers-venv, "
                    "made by benchmarks/peers_venv.sh)")
def test_ultralytics_parity(tmp_path):
    from benchmarks import ultralytics_parity

    assert ultralytics_parity.main(["--out", str(tmp_path)]) == 0
    assert "| cases | 10 | 12 |" in (tmp_path / "ultralytics-yolo-parity.md").read_text()


def test_gigapixel_geotiff_is_written_tile_by_tile_with_its_ground_truth(tmp_path):
    from benchmarks import gigapixel
    from mdssd.inference.step1_read import open_raster

    truth = gigapixel.make_geotiff(tmp_path / "g.tif", 1100)
    with open_raster(tmp_path / "g.tif") as raster:
        assert (raster.width, raster.height) == (1100, 1100) and raster.geo.crs == "EPSG:32633"
        assert raster.geo.transform == (400000.0, 0.3, 0.0, 5000000.0, 0.0, -0.3)
        assert (raster.seg_w, raster.seg_h) == (512, 512)
        images, _ = gigapixel._pool()
        first, _ = raster.read(0, 0, 512, 512)
        assert any(np.array_equal(first, image) for image in images)
    assert len(truth["boxes"]) == len(truth["labels"]) > 9 and (truth["boxes"][:, 2:] <= 1100).all()
    ours = [{"bbox": list(map(float, b)), "score": 0.9, "label": int(l)} for b, l in zip(truth["boxes"], truth["labels"])]
    assert gigapixel.agreement(ours, ours) == (1.0, 1.0)
    assert gigapixel.voc_map(ours, truth, 1100) == pytest.approx(1.0)


def test_end_to_end_quick_train_and_infer(tmp_path, capsys):
    from benchmarks import end_to_end

    # --compile-modes '': the compiled rows take a compile of their own (tests/test_compile.py
    # covers torch.compile of the detector).
    assert end_to_end.main(["--device", "cpu", "--quick", "--sections", "train,infer",
                            "--compile-modes", "", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("cpu-*-end-to-end-quick.json")
    results = json.loads(json_path.read_text())["results"]
    assert {(r["section"], r["mode"]) for r in results} >= {("train", "eager"), ("infer", "eager")}
    for r in results:
        if r["backend"] != "torchvision":
            assert r["status"] == "ok" and r["images_per_s"] > 0, r
