"""Every reader -> YOLO -> YOLO reader, and -> COCO -> COCO reader, gives the same annotations (up to
the format's float precision; YOLO holds no crowd/difficult objects), and the command line."""

import warnings

import numpy as np
import pytest
import yaml

from mdssd.data import SyntheticSigns, build_source
from mdssd.data.export import export_coco, export_yolo, main
from tests.test_data_formats import VISDRONE_TEXT, _dota, _visdrone, _yolo
from tests.test_data_readers import _coco, _tt100k, _voc


def _sources(tmp_path):
    voc = _voc(tmp_path / "voc", {
        "000001": (64, 48, [("dog", (1, 1, 64, 48), False), ("person", (10, 5, 20, 30), True)], None),
        "000002": (40, 40, [], None)})
    coco = _coco(tmp_path / "coco", [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 80, 60], "iscrowd": 1},
        {"id": 3, "image_id": 9, "category_id": 1, "bbox": [1.5, 2, 38.5, 28], "iscrowd": 0}])
    tt = _tt100k(tmp_path / "tt", [{"category": "p11", "bbox": {"xmin": 10.5, "ymin": 20, "xmax": 30.25, "ymax": 41}}])
    yolo = _yolo(tmp_path / "yolo", {"images/train/a.jpg": (200, 100, "0 0.5 0.5 0.2 0.4\n2 0.1 0.2 0.1 0.2\n"),
                                     "images/train/sub/b.png": (64, 64, "1 0.25 0.25 0.75 0.25 0.5 0.75\n"),
                                     "images/train/c.jpg": (50, 40, None), "images/val/e.jpg": (30, 30, "")})
    visdrone = _visdrone(tmp_path / "vd", {"0000001": (200, 100, VISDRONE_TEXT), "0000002": (64, 64, "")})
    dota = _dota(tmp_path / "dota", {"P1": (300, 200, "gsd:0.1\n10 20 50 10 60 40 20 50 plane 0\n"
                                                      "100 100 140 100 140 120 100 120 ship 1\n")})
    return {
        "voc": build_source("voc", voc, "train"),
        "coco": build_source("coco", tmp_path / "coco", "train"),
        "tt100k": build_source("tt100k", tt, "train"),
        "yolo": build_source("yolo", yolo, "train"),
        "visdrone": build_source("visdrone", visdrone, "train"),
        "dota": build_source("dota", dota, "train"),
        "synthetic": SyntheticSigns("val", num_images=3, seed=1, min_size=96, max_size=128),
    }


def _plain(ann):
    keep = ~(ann.crowd | ann.difficult)
    return ann.boxes[keep], ann.labels[keep]


@pytest.mark.parametrize("name", ["voc", "coco", "tt100k", "yolo", "visdrone", "dota", "synthetic"])
def test_every_reader_round_trips_through_yolo_and_coco(tmp_path, name):
    source = _sources(tmp_path)[name]
    with pytest.warns(UserWarning, match="no YOLO form") if name in ("voc", "coco", "visdrone", "dota") else _no_op():
        yaml_path = export_yolo(source, tmp_path / "out-yolo", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_yolo(source, tmp_path / "out-yolo", "val")
    data = yaml.safe_load(yaml_path.read_text())
    assert data["train"] == "images/train" and data["val"] == "images/val" and data["names"] == list(source.class_names)
    yolo = build_source("yolo", tmp_path / "out-yolo", "train")
    export_coco(source, tmp_path / "out-coco", "train2017", image_format=None)
    coco = build_source("coco", tmp_path / "out-coco", "train")
    assert yolo.class_names == coco.class_names == tuple(source.class_names)
    assert len(yolo) == len(coco) == len(source)
    # The YOLO reader lists files sorted by name: match images by stem.
    by_stem = {}
    for i in range(len(yolo)):
        by_stem[yolo.annotation(i).file_name.split("/")[-1].rsplit(".", 1)[0]] = i
    for i in range(len(source)):
        original = source.annotation(i)
        stem = coco.annotation(i).file_name.rsplit(".", 1)[0]
        back = yolo.annotation(by_stem[stem])
        assert (back.width, back.height) == (original.width, original.height)
        boxes, labels = _plain(original)
        order = np.lexsort(boxes.T[::-1])
        back_order = np.lexsort(back.boxes.T[::-1])
        # 8 significant digits of a 0-1 fraction: well under 1e-4 px.
        np.testing.assert_allclose(back.boxes[back_order], boxes[order], atol=1e-4)
        assert back.labels[back_order].tolist() == labels[order].tolist()
        assert not back.crowd.any() and not back.difficult.any()
        np.testing.assert_array_equal(yolo.image(by_stem[stem]), source.image(i))
        # COCO holds everything, flags included.
        again = coco.annotation(i)
        np.testing.assert_allclose(again.boxes, original.boxes, atol=1e-9)
        assert again.labels.tolist() == original.labels.tolist()
        assert again.crowd.tolist() == original.crowd.tolist()
        assert again.difficult.tolist() == original.difficult.tolist()
        np.testing.assert_array_equal(coco.image(i), source.image(i))


class _no_op:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_export_command_line(tmp_path, capsys):
    assert main(["--dataset", "synthetic", "--num-images", "2", "--to", "yolo", str(tmp_path / "y")]) == 0
    assert len(build_source("yolo", tmp_path / "y", "val")) == 2
    assert main(["--dataset", "yolo", "--data-root", str(tmp_path / "y"), "--to", "coco", str(tmp_path / "c")]) == 0
    assert len(build_source("coco", tmp_path / "c", "val")) == 2
    out = capsys.readouterr().out
    assert "yolo train: 2 images ->" in out and "instances_val2017.json" in out
    assert main(["--dataset", "visdrone", "--data-root", str(tmp_path / "nowhere"), "--to", "yolo",
                 str(tmp_path / "v")]) == 2
    assert "split 'train': no folder with images and annotations" in capsys.readouterr().err
    # Another data set's classes cannot join an existing YOLO folder.
    _yolo(tmp_path / "other", {"images/train/a.jpg": (20, 20, None), "images/val/b.jpg": (20, 20, None)})
    assert main(["--dataset", "yolo", "--data-root", str(tmp_path / "other"), "--to", "yolo", str(tmp_path / "y")]) == 2
    assert "names" in capsys.readouterr().err
