"""The Python API (``mdssd.load`` -> Detector), the detect CLI over it, and ``torchrun`` sharding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import mdssd
from mdssd.inference.sharding import assign
from mdssd.inference.step2_tiles import TileSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mdssd.model import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(build_model("mdssd_tiny", num_classes=3), path)
    return path


def test_load_and_predict_arrays_paths_and_pil(checkpoint, tmp_path):
    from PIL import Image

    from mdssd.inference import predict_images, predict_tiled

    detector = mdssd.load(checkpoint, device="cpu", class_names=("car", "tree"))
    image = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    whole = detector.predict(image)
    reference = predict_images(detector.model, [image])[0]
    np.testing.assert_array_equal(whole.boxes, reference.boxes)
    assert whole.class_names == ("car", "tree") and set(whole.names) <= {"car", "tree"}
    assert whole.geo is None and whole.map_polygons is None and (whole.width, whole.height) == (200, 150)
    tiled = detector.predict(image, tile=96, overlap=0.2, max_detections=50)
    expected = predict_tiled(detector.model, [image], TileSpec(96, 0.2, max_detections=50))[0]
    np.testing.assert_array_equal(tiled.boxes, expected.boxes)
    np.testing.assert_array_equal(tiled.scores, expected.scores)
    Image.fromarray(image).save(tmp_path / "x.png")
    from_file = detector.predict(tmp_path / "x.png", tile=96, overlap=0.2, max_detections=50)
    np.testing.assert_array_equal(from_file.boxes, expected.boxes)
    assert from_file.path == str(tmp_path / "x.png")
    np.testing.assert_array_equal(detector.predict(Image.fromarray(image)).boxes, reference.boxes)
    assert len(detector.predict(image[..., 0])) > 0  # grey arrays are copied to RGB
    with pytest.raises(ValueError, match="uint8"):
        detector.predict(image.astype(np.float32))
    with pytest.raises(ValueError, match="not georeferenced"):
        whole.to_geojson()
    with pytest.raises(ValueError, match="3 class names for a model with 2"):
        mdssd.load(checkpoint, device="cpu", class_names=("a", "b", "c"))


def test_pixel_limit_says_to_tile_and_overview_is_small(checkpoint, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from mdssd import detect

    image = (np.random.default_rng(1).random((300, 500, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    assert detect.main([str(tmp_path / "big.png"), "--weights", str(checkpoint), "--out", str(tmp_path / "a"),
                        "--device", "cpu"]) == 2
    assert "pass --tile N" in capsys.readouterr().err
    assert detect.main([str(tmp_path / "big.png"), "--weights", str(checkpoint), "--out", str(tmp_path / "b"),
                        "--device", "cpu", "--tile", "256", "--overview-size", "128"]) == 0
    assert Image.open(tmp_path / "b" / "big.png").size == (125, 75)  # every 4th pixel
    assert Image.MAX_IMAGE_PIXELS == 100_000  # restored


def test_folder_with_a_bad_file_skips_it_and_names_it(checkpoint, tmp_path, capsys):
    from mdssd import detect

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "good.tif", np.full((100, 120, 3), 128, np.uint8), photometric="rgb")
    (tmp_path / "in" / "bad.tif").write_bytes(b"not a tiff at all")
    assert detect.main([str(tmp_path / "in"), "--weights", str(checkpoint), "--out", str(tmp_path / "out"),
                        "--device", "cpu", "--tile", "64"]) == 1
    assert "bad.tif: not a readable TIFF" in capsys.readouterr().err
    assert [i["file_name"] for i in json.loads((tmp_path / "out" / "images.json").read_text())] == \
        [str(tmp_path / "in" / "good.tif")]


def test_assign_splits_big_images_by_rows_and_deals_small_ones():
    spec = TileSpec(100, 0.0)
    jobs = assign([(1000, 1000), (50, 50), None, (80, 80)], spec, 2)
    assert jobs[0] == [(0, (0, 5)), (1, None), (2, None)]
    assert jobs[1] == [(0, (5, 10)), (3, None)]
    assert assign([(1000, 1000)], None, 2) == [[(0, None)], []]


@pytest.mark.slow
def test_torchrun_two_processes_give_the_single_process_outputs(checkpoint, tmp_path):
    # One GeoTIFF split by tile rows over both ranks, two small images dealt out.
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    keys = [1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32631]
    tifffile.imwrite(folder / "a.tif", (rng.random((520, 300, 3)) * 255).astype(np.uint8), tile=(64, 64),
                     photometric="rgb", extratags=[(33550, 12, 3, (2.0, 2.0, 0.0)),
                                                   (33922, 12, 6, (0, 0, 0, 300000.0, 5000000.0, 0)),
                                                   (34735, 3, len(keys), keys)])
    for name in ("b.tif", "c.tif"):
        tifffile.imwrite(folder / name, (rng.random((90, 110, 3)) * 255).astype(np.uint8), photometric="rgb",
                         extratags=[(33550, 12, 3, (2.0, 2.0, 0.0)), (33922, 12, 6, (0, 0, 0, 1.0, 2.0, 0)),
                                    (34735, 3, len(keys), keys)])
    args = [str(folder), "--weights", str(checkpoint), "--device", "cpu", "--tile", "128", "--tile-overlap", "0.25",
            "--tile-batch", "4", "--max-detections", "300", "--threshold", "0.0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
    single = subprocess.run([sys.executable, "-m", "mdssd.detect", *args, "--out", str(tmp_path / "one")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mdssd.detect", *args, "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("detections.json", "detections.geojson", "images.json", "categories.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text(), name
    assert len(json.loads((tmp_path / "one" / "detections.json").read_text())) > 300
    for name in ("a.png", "b.png", "c.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_a_graph_runner_gives_the_tiled_detections_of_the_model(checkpoint):
    """The runner that ``detect --cuda-graphs`` plugs in (static buffers, padded last batch; on the
    CPU without the capture itself) gives the model's own tiled detections."""
    from mdssd.cuda_graphs import CudaGraphRunner

    image = (np.random.default_rng(1).random((150, 200, 3)) * 255).astype(np.uint8)
    plain = mdssd.load(checkpoint, device="cpu").predict(image, tile=96, overlap=0.2, batch_size=4)
    detector = mdssd.load(checkpoint, device="cpu")
    detector.runner = runner = CudaGraphRunner(detector.model, batch_size=4, capture=False)
    graphed = detector.predict(image, tile=96, overlap=0.2, batch_size=4)
    np.testing.assert_array_equal(graphed.boxes, plain.boxes)
    np.testing.assert_array_equal(graphed.scores, plain.scores)
    assert runner.fallbacks == 0


def test_detect_refuses_compile_and_graphs_it_cannot_use(checkpoint, tmp_path, capsys):
    from mdssd.detect import main

    image = tmp_path / "x.png"
    __import__("PIL.Image").Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    assert main([str(image), "--weights", str(checkpoint), "--out", str(tmp_path / "o"), "--compile",
                 "--device", "cpu"]) == 2
    assert "pass --tile N" in capsys.readouterr().err
    assert main([str(image), "--weights", str(checkpoint), "--out", str(tmp_path / "o"), "--tile", "32",
                 "--cuda-graphs", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
