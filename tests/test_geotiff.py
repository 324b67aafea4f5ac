"""Rasters (mdssd.inference.step1_read): GeoTIFF georeferencing, bands and value scaling, nodata,
and bad files, on TIFFs the tests write with known tags."""

import json

import numpy as np
import pytest
import tifffile

from mdssd.inference.step1_read import RasterError, TiffRaster, open_raster
from test_tiling import BlobFinder, blob_image

UTM33 = [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001]


def geotags(scale=(0.5, 0.5), origin=(500000.0, 4000000.0), keys=UTM33, nodata=None):
    tags = [(33550, 12, 3, (*scale, 0.0)), (33922, 12, 6, (0, 0, 0, *origin, 0)), (34735, 3, len(keys), keys)]
    return tags + ([(42113, 2, 0, str(nodata))] if nodata is not None else [])


def test_geotiff_detections_line_up_on_the_map(tmp_path):
    from mdssd.inference.api import Detector

    image = blob_image(300, 200, [(100, 50, 140, 80)])
    image[image == 0] = 30
    tifffile.imwrite(tmp_path / "scene.tif", image, tile=(64, 64), photometric="rgb", compression="zlib",
                     extratags=geotags(nodata=0))
    found = Detector(BlobFinder(128)).predict_file(tmp_path / "scene.tif", tmp_path / "out", tile=128, overlap=0.25,
                                                   threshold=0.0)
    assert found.crs == "EPSG:32633" and found.boxes.round().tolist() == [[100, 50, 140, 80]]
    expected = [[500050.0, 3999975.0], [500070.0, 3999975.0], [500070.0, 3999960.0], [500050.0, 3999960.0],
                [500050.0, 3999975.0]]
    np.testing.assert_allclose(found.map_polygons[0], expected, atol=1e-3)
    collection = json.loads((tmp_path / "out" / "detections.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    (feature,) = collection["features"]
    np.testing.assert_allclose(feature["geometry"]["coordinates"][0], expected, atol=1e-3)
    assert feature["properties"]["class"] == "class1" and feature["properties"]["score"] > 0
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert images[0]["crs"] == "EPSG:32633" and images[0]["transform"] == [500000.0, 0.5, 0.0, 4000000.0, 0.0, -0.5]
    assert (tmp_path / "out" / "scene.png").is_file()


def test_model_transformation_pixel_is_point_and_geographic_crs(tmp_path):
    # A rotated transform (ModelTransformation), PixelIsPoint, WGS 84 (GeographicTypeGeoKey 4326).
    keys = [1, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 2, 2048, 0, 1, 4326]
    matrix = [0.001, 0.0002, 0, 10.0, 0.0001, -0.001, 0, 50.0, 0, 0, 0, 0, 0, 0, 0, 1]
    tifffile.imwrite(tmp_path / "rot.tif", np.zeros((40, 60, 3), np.uint8), photometric="rgb",
                     extratags=[(34264, 12, 16, matrix), (34735, 3, len(keys), keys)])
    with open_raster(tmp_path / "rot.tif") as raster:
        geo = raster.geo
    assert geo.crs == "EPSG:4326"
    # PixelIsPoint: the matrix maps pixel centres; corners are half a pixel up-left.
    np.testing.assert_allclose(geo.transform, (10.0 - 0.5 * 0.0012, 0.001, 0.0002, 50.0 - 0.5 * -0.0009, 0.0001,
                                               -0.001))
    x, y = geo.to_map(np.array([0.5]), np.array([0.5]))
    np.testing.assert_allclose([x[0], y[0]], [10.0, 50.0])


def test_plain_tiff_has_no_georeference(tmp_path):
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((10, 10, 3), np.uint8), photometric="rgb")
    with open_raster(tmp_path / "p.tif") as raster:
        assert raster.geo is None and not raster.has_nodata


def test_bands_and_16_bit_scaling(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4096, (50, 70, 4), dtype=np.uint16)  # 12-bit values, 4 bands (RGB + NIR)
    tifffile.imwrite(tmp_path / "ms.tif", data, tile=(32, 32), photometric="rgb", extrasamples=[0])
    with pytest.raises(RasterError, match="4 bands.*--bands"):
        open_raster(tmp_path / "ms.tif")
    with open_raster(tmp_path / "ms.tif", bands=(4, 3, 2), value_range=(0, 4095)) as raster:
        pixels, valid = raster.read(5, 6, 40, 30)
    expected = np.clip(np.round(data[6:30, 5:40][..., [3, 2, 1]].astype(np.float32) * np.float32(255 / 4095)), 0, 255)
    np.testing.assert_array_equal(pixels, expected.astype(np.uint8))
    with open_raster(tmp_path / "ms.tif", bands=(1,)) as raster:  # grey; range from sampled tiles
        lo, hi = raster.value_range
        assert 0 <= lo < 100 and 4000 < hi <= 4095
        pixels, _ = raster.read(0, 0, 70, 50)
        assert (pixels[..., 0] == pixels[..., 2]).all() and pixels.max() == 255 and pixels.min() == 0
    with pytest.raises(RasterError, match="bands"):
        open_raster(tmp_path / "ms.tif", bands=(1, 5, 2))


def test_alpha_band_is_nodata_and_grey_is_copied(tmp_path):
    rgba = np.full((40, 50, 4), 90, np.uint8)
    rgba[:, :20, 3] = 0
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=[2])
    with open_raster(tmp_path / "a.tif") as raster:
        pixels, valid = raster.read(0, 0, 50, 40)
    assert pixels.shape == (40, 50, 3) and not valid[:, :20].any() and valid[:, 20:].all()
    tifffile.imwrite(tmp_path / "g.tif", np.arange(200, dtype=np.uint8).reshape(10, 20))
    with open_raster(tmp_path / "g.tif") as raster:
        pixels, _ = raster.read(0, 0, 20, 10)
    np.testing.assert_array_equal(pixels, np.repeat(np.arange(200, dtype=np.uint8).reshape(10, 20, 1), 3, 2))


def test_lzw_and_jpeg_geotiffs(tmp_path):
    pytest.importorskip("imagecodecs")
    image = (np.random.default_rng(3).random((100, 90, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "lzw.tif", image, tile=(32, 32), photometric="rgb", compression="lzw",
                     predictor=True)
    with open_raster(tmp_path / "lzw.tif") as raster:
        np.testing.assert_array_equal(raster.read(10, 20, 90, 100)[0], image[20:100, 10:90])
    tifffile.imwrite(tmp_path / "jpeg.tif", image, tile=(32, 32), photometric="rgb", compression="jpeg")
    with open_raster(tmp_path / "jpeg.tif") as raster:
        np.testing.assert_array_equal(raster.read(0, 0, 90, 100)[0], tifffile.imread(tmp_path / "jpeg.tif"))


# -- bad files -------------------------------------------------------------------------------

def _tiled(path, size=(200, 260)):
    image = (np.random.default_rng(4).random((*size, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="zlib")
    return image


def test_truncated_corrupt_and_non_tiff_files_are_named(tmp_path):
    path = tmp_path / "cut.tif"
    _tiled(path)
    data = path.read_bytes()
    offsets = TiffRaster(path)._page.dataoffsets
    path.write_bytes(data[:offsets[5] + 10])  # a download cut off in the middle of tile 5
    with pytest.raises(RasterError, match="cut.tif: truncated TIFF"), open_raster(path) as raster:
        raster.read(0, 0, 260, 200)
    broken = bytearray(data)
    broken[offsets[3]:offsets[3] + 40] = b"\x00" * 40
    (tmp_path / "bad.tif").write_bytes(bytes(broken))
    with pytest.raises(RasterError, match="bad.tif: corrupt or truncated TIFF"), open_raster(tmp_path / "bad.tif") as r:
        r.read(0, 0, 260, 200)
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 50)
    with pytest.raises(RasterError, match="junk.tif: not a readable TIFF"):
        open_raster(tmp_path / "junk.tif")
    with pytest.raises(RasterError, match="no such file"):
        open_raster(tmp_path / "missing.tif")


def test_one_huge_strip_says_to_convert(tmp_path, monkeypatch):
    from mdssd.inference import step1_read

    tifffile.imwrite(tmp_path / "strip.tif", np.zeros((300, 400, 3), np.uint8), photometric="rgb",
                     rowsperstrip=300)
    monkeypatch.setattr(step1_read, "_MAX_SEGMENT_BYTES", 100_000)
    with pytest.raises(RasterError, match="TILED=YES"):
        open_raster(tmp_path / "strip.tif")


def test_all_nodata_raster_runs_nothing_and_says_so(tmp_path, capsys):
    from mdssd import detect
    from mdssd.model import build_model, save_checkpoint

    save_checkpoint(build_model("mdssd_tiny", num_classes=3), tmp_path / "m.pt")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((300, 300, 3), np.uint8), tile=(64, 64), photometric="rgb",
                     extratags=geotags(nodata=0))
    assert detect.main([str(tmp_path / "empty.tif"), "--weights", str(tmp_path / "m.pt"), "--out",
                        str(tmp_path / "out"), "--tile", "128", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "every tile is nodata" in out
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) == []
