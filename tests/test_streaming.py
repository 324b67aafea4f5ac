"""Streaming sliced detection (mdssd.inference): equal to the in-memory path, from arrays and
from TIFF files read tile by tile, in one process or in parts over tile rows."""

import numpy as np
import pytest
import tifffile
import torch

from mdssd.inference.in_memory import predict_tiled
from mdssd.inference.step1_read import ArrayRaster, TiffRaster
from mdssd.inference.step2_tiles import TileGrid, TileSpec
from mdssd.inference.stream import detect_raster, merge_parts
from mdssd.inference.step5_merge import touching_components
from test_tiling import BlobFinder, blob_image


def assert_same(a, b):
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)


def in_parts(model, raster, spec, cuts):
    grid = TileGrid(raster.width, raster.height, spec)
    bounds = [0, *cuts, grid.ny]
    parts = [detect_raster(model, raster, spec, rows=(a, b), full_image_pass=a == 0)
             for a, b in zip(bounds, bounds[1:])]
    return merge_parts(parts, spec).detections


@pytest.fixture(scope="module")
def tiny():
    from mdssd.model import build_model

    torch.manual_seed(0)
    return build_model("mdssd_tiny", num_classes=3).eval()


BLOBS = [(85, 30, 110, 60), (350, 250, 380, 290), (110, 115, 135, 140), (100, 180, 225, 210), (20, 250, 60, 262)]


@pytest.mark.parametrize("merge", ["nms", "ios"])
def test_blobs_cut_and_merged_exactly_as_in_memory(merge):
    # Objects in overlap bands (cut views dropped), one larger than the overlap (pieces), in
    # batches that end mid-row; also split into parts over tile rows.
    image = blob_image(400, 300, BLOBS)
    spec = TileSpec(128, 0.25, merge=merge, batch_size=3)
    reference = predict_tiled(BlobFinder(128), [image], spec)[0]
    model = BlobFinder(128)
    streamed = detect_raster(model, ArrayRaster(image), spec, prefetch=2)
    assert_same(streamed.detections, reference)
    assert set(model.input_shapes) == {(3, 3, 128, 128)}  # fixed-shape batches, last one padded
    assert_same(in_parts(BlobFinder(128), ArrayRaster(image), spec, [1]), reference)


@pytest.mark.parametrize("spec", [TileSpec(96, 0.25, batch_size=4, max_detections=300),
                                  TileSpec(128, 0.3, batch_size=5, merge="ios", max_detections=150),
                                  TileSpec(160, 0.2, batch_size=2, full_image=True)], ids=["96", "128-ios", "160-full"])
def test_real_model_streamed_equals_in_memory(tiny, spec):
    # An untrained model: 200 overlapping detections per tile, the hardest case for the merge.
    image = (np.random.default_rng(1).random((250, 210, 3)) * 255).astype(np.uint8)
    reference = predict_tiled(tiny, [image], spec)[0]
    assert len(reference.scores) > 100  # many overlapping boxes to merge
    assert_same(detect_raster(tiny, ArrayRaster(image), spec).detections, reference)
    assert_same(in_parts(tiny, ArrayRaster(image), spec, [1, 2]), reference)


@pytest.mark.parametrize("layout", ["tiled", "strips", "planar"])
def test_tiff_read_in_windows_equals_the_decoded_image(tmp_path, layout):
    image = (np.random.default_rng(2).random((301, 333, 3)) * 255).astype(np.uint8)
    path = tmp_path / "x.tif"
    if layout == "tiled":
        tifffile.imwrite(path, image, tile=(64, 48), compression="zlib", photometric="rgb")
    elif layout == "strips":
        tifffile.imwrite(path, image, rowsperstrip=7, compression="lzma", photometric="rgb")
    else:
        tifffile.imwrite(path, np.moveaxis(image, 2, 0), tile=(32, 32), photometric="rgb", planarconfig="separate")
    with TiffRaster(path) as raster:
        assert (raster.width, raster.height) == (333, 301) and raster.geo is None
        spec = TileSpec(100, 0.25, batch_size=4)
        model = BlobFinder(128)
        grid = TileGrid(333, 301, spec)
        for t in range(len(grid)):
            x1, y1, x2, y2 = grid.window(t)
            pixels, valid = raster.read(x1, y1, min(x2, 333), min(y2, 301))
            np.testing.assert_array_equal(pixels, image[y1:y2, x1:x2])
            assert valid is None
    blobs = blob_image(333, 301, BLOBS[:3])
    tifffile.imwrite(path, blobs, tile=(64, 64), photometric="rgb")
    with TiffRaster(path) as raster:
        assert_same(detect_raster(model, raster, spec).detections, predict_tiled(BlobFinder(128), [blobs], spec)[0])


def test_merge_keeps_only_what_unfinished_neighbours_can_touch():
    # One blob per tile on a 10-row grid: after each settled row, pending holds at most two rows.
    image = blob_image(640, 1280, [(x + 20, y + 20, x + 40, y + 40) for y in range(0, 1280, 128)
                                   for x in range(0, 640, 128)])
    spec = TileSpec(128, 0.0, batch_size=5)
    from mdssd.inference import step5_merge

    seen = []
    original = step5_merge.IncrementalMerge.settle

    def spy(self, open_mask):
        original(self, open_mask)
        seen.append(len(self.pending[3]))

    step5_merge.IncrementalMerge.settle = spy
    try:
        found = detect_raster(BlobFinder(128), ArrayRaster(image), spec).detections
    finally:
        step5_merge.IncrementalMerge.settle = original
    assert len(found.scores) == 50 and len(seen) >= 10
    assert max(seen) <= 2 * 5 and seen[-1] == 0


def test_touching_components_are_per_class_and_transitive():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [19, 5, 30, 8], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    labels = np.array([1, 1, 1, 1, 2])
    c = touching_components(boxes, labels)
    assert c[0] == c[1] == c[2] and len({c[0], c[3], c[4]}) == 3


def test_nodata_tiles_are_skipped_not_run(tmp_path):
    image = blob_image(512, 256, [(300, 30, 330, 60)])
    image[image == 0] = 40
    path = tmp_path / "nodata.tif"
    image[:, :256] = 0  # left half nodata
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", extratags=[(42113, 2, 0, "0")])
    model = BlobFinder(128)
    with TiffRaster(path) as raster:
        result = detect_raster(model, raster, TileSpec(128, 0.0, batch_size=2))
    assert result.skipped == 4 and result.tiles == 4  # 2x4 grid, the left 2 columns skipped
    assert result.detections.boxes.round().tolist() == [[300, 30, 330, 60]]


def test_eval_tile_streams_image_files_and_matches_in_memory(tmp_path):
    from mdssd.data import COCODetection, SyntheticSigns, export_coco
    from mdssd.eval import evaluate
    from mdssd.inference.in_memory import predict_source_tiled
    from mdssd.inference.stream import predict_source_streamed
    from mdssd.model import build_model

    synthetic = SyntheticSigns("val", num_images=2, min_size=150, max_size=200)
    coco = COCODetection(export_coco(synthetic, tmp_path, "val2017"), tmp_path / "val2017")
    torch.manual_seed(0)
    model = build_model("mdssd_tiny", num_classes=len(synthetic.class_names) + 1).eval()
    spec = TileSpec(128, 0.25, max_detections=100)
    for source in (synthetic, coco):  # arrays, then PNG files opened by the streaming reader
        for a, b in zip(predict_source_streamed(model, source, spec), predict_source_tiled(model, source, spec)):
            assert_same(a, b)
    report = evaluate(model, coco, tile=spec, coco=False)
    assert report.voc.map_11 >= 0
