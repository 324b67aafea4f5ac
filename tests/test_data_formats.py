"""YOLO, VisDrone and DOTA readers on small folders written here: good files read back to the
pixel boxes they were written from; bad ones raise AnnotationError naming file and line."""

import warnings

import numpy as np
import pytest
from PIL import Image

from mdssd.data import AnnotationError, build_source
from mdssd.data.yolo import YOLODetection, label_path


def _image(path, width, height, exif_orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (10, 20, 30))
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)


def _yolo(root, images, yaml_text=None, names=("car", "person", "bike")):
    """``images``: {relative image path: (width, height, label text or None)}."""
    for rel, (width, height, labels) in images.items():
        _image(root / rel, width, height)
        if labels is not None:
            path = label_path(root / rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(labels)
    text = yaml_text if yaml_text is not None else (
        f"path: {root}\ntrain: images/train\nval: images/val\nnames: {list(names)}\n")
    (root / "data.yaml").write_text(text)
    return root


def test_label_path_is_ultralytics_img2label():
    assert str(label_path("/d/images/train/a.b.jpg")) == "/d/labels/train/a.b.txt"
    # Only the last /images/ changes; without one the label sits next to the image.
    assert str(label_path("/images/x/images/1.png")) == "/images/x/labels/1.txt"
    assert str(label_path("/d/pics/1.png")) == "/d/pics/1.txt"


def test_yolo_reads_boxes_polygons_and_empty_images(tmp_path):
    root = _yolo(tmp_path, {
        "images/train/a.jpg": (200, 100, "0 0.5 0.5 0.2 0.4\n\n2 0.1 0.2 0.1 0.2\n"),
        "images/train/sub/b.png": (64, 64, "1 0.25 0.25 0.75 0.25 0.5 0.75\n"),  # a polygon -> its box
        "images/train/c.jpg": (50, 40, ""),  # empty label file: no objects
        "images/train/d.jpg": (50, 40, None),  # no label file: no objects
        "images/val/e.jpg": (30, 30, "0 0.5 0.5 1 1\n"),
    })
    train = build_source("yolo", root, "train")
    assert isinstance(train, YOLODetection) and train.class_names == ("car", "person", "bike")
    assert [a.file_name for a in (train.annotation(i) for i in range(4))] == [
        "images/train/a.jpg", "images/train/c.jpg", "images/train/d.jpg", "images/train/sub/b.png"]
    a = train.annotation(0)
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [10, 10, 30, 30]])
    assert a.labels.tolist() == [1, 3] and (a.width, a.height) == (200, 100)
    assert len(train.annotation(1).boxes) == 0 and len(train.annotation(2).boxes) == 0
    np.testing.assert_allclose(train.annotation(3).boxes, [[16, 16, 48, 48]])
    assert train.annotation(3).labels.tolist() == [2]
    assert train.image(0).shape == (100, 200, 3)
    val = build_source("yolo", root / "data.yaml", "val")
    np.testing.assert_allclose(val.annotation(0).boxes, [[0, 0, 30, 30]])


def test_yolo_data_yaml_forms(tmp_path):
    images = {"images/a/1.jpg": (20, 20, "1 0.5 0.5 0.5 0.5"), "images/b/2.jpg": (20, 20, None),
              "images/c/3.jpg": (20, 20, None)}
    # Relative path (to the YAML's folder), names as an id -> name map, a list of folders, a .txt list.
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "val.txt").write_text("./images/c/3.jpg\n\nimages/a/1.jpg\n")
    _yolo(tmp_path / "ds", images, "path: .\ntrain: [images/a, images/b]\nval: val.txt\n"
                                    "names:\n  0: car\n  1: person\n")
    train = YOLODetection(tmp_path / "ds", "train")
    assert train.class_names == ("car", "person") and len(train) == 2
    val = YOLODetection(tmp_path / "ds", "val")
    assert [val.annotation(i).file_name for i in range(2)] == ["images/a/1.jpg", "images/c/3.jpg"]
    assert val.annotation(0).labels.tolist() == [2]
    # No 'path': the YAML's folder; 'nc' without names; another YAML file name.
    (tmp_path / "ds" / "data.yaml").unlink()
    (tmp_path / "ds" / "mine.yaml").write_text("train: images/a\nval: images/b\nnc: 2\n")
    assert YOLODetection(tmp_path / "ds", "train").class_names == ("class_0", "class_1")


def test_yolo_exif_orientation_swaps_the_size_as_displayed(tmp_path):
    root = _yolo(tmp_path, {"images/train/r.jpg": (40, 20, "0 0.5 0.25 0.5 0.5")})
    _image(root / "images/train/r.jpg", 40, 20, exif_orientation=6)  # stored 40x20, shown 20x40
    source = YOLODetection(root, "train")
    ann = source.annotation(0)
    assert (ann.width, ann.height) == (20, 40)
    np.testing.assert_allclose(ann.boxes, [[5, 0, 15, 20]])
    assert source.image(0).shape == (40, 20, 3)


def test_yolo_leniency_as_ultralytics(tmp_path):
    # A box whose corners pass the border (xc, yc, w, h all in [0, 1]) is clipped; duplicates removed, warned.
    root = _yolo(tmp_path, {"images/train/a.jpg": (100, 100, "0 0.95 0.5 0.2 0.2\n1 0.5 0.5 0.1 0.1\n"
                                                             "1 0.5 0.5 0.1 0.1\n")})
    with pytest.warns(UserWarning, match=r"a\.txt: duplicate label lines \[3\] removed"):
        ann = YOLODetection(root, "train").annotation(0)
    np.testing.assert_allclose(ann.boxes, [[85, 40, 100, 60], [45, 45, 55, 55]])


@pytest.mark.parametrize("labels, message", [
    ("0 0.5 0.5 0.1\n", "line 1: 4 values"),
    ("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1 0.3\n", "line 2: 6 values"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4\n", "line 1: 8 values"),
    ("0 0.5 zero 0.1 0.1\n", "line 1: not a number"),
    ("\n3 0.5 0.5 0.1 0.1\n", "line 2: class id 3 is not one of names' ids 0..2"),
    ("-1 0.5 0.5 0.1 0.1\n", "line 1: class id -1"),
    ("0.5 0.5 0.5 0.1 0.1\n", "line 1: class id 0.5"),
    ("0 1.2 0.5 0.1 0.1\n", r"line 1: coordinates must be normalised to \[0, 1\]"),
    ("0 0.5 0.5 -0.1 0.1\n", "line 1: coordinates must be normalised"),
    ("0 0.5 0.5 0 0.1\n", "line 1: zero-size box"),
    ("0 nan 0.5 0.1 0.1\n", "line 1: non-finite"),
])
def test_yolo_bad_lines_name_file_and_line(tmp_path, labels, message):
    root = _yolo(tmp_path, {"images/train/a.jpg": (100, 100, labels)})
    with pytest.raises(AnnotationError, match=message) as info:
        YOLODetection(root, "train")
    assert str(tmp_path / "labels" / "train" / "a.txt") in str(info.value)


@pytest.mark.parametrize("yaml_text, message", [
    ("train: [images/train\n", "data.yaml: YAML: cannot parse"),
    ("- a\n- b\n", "top level is not a mapping"),
    ("train: images/train\nval: images/train\n", "names: missing"),
    ("train: images/train\nval: images/train\nnames: {0: a, 2: b}\n", r"ids must be 0..1, got \[0, 2\]"),
    ("train: images/train\nval: images/train\nnames: [a, b]\nnc: 3\n", "nc is 3 but names has 2"),
    ("train: images/nowhere\nval: images/train\nnames: [a]\n", "data.yaml: train: 'images/nowhere' not found"),
    ("val: images/train\nnames: [a]\n", r"data.yaml: train: no 'train' entry \(has val\)"),
    ("train: list.txt\nval: images/train\nnames: [a]\n", "list.txt: line 2: image 'images/train/zz.jpg' not found"),
    ("train: empty\nval: images/train\nnames: [a]\n", "train: no images in 'empty'"),
])
def test_yolo_bad_data_yaml(tmp_path, yaml_text, message):
    root = _yolo(tmp_path, {"images/train/a.jpg": (10, 10, None)}, yaml_text)
    (root / "list.txt").write_text("images/train/a.jpg\nimages/train/zz.jpg\n")
    (root / "empty").mkdir()
    with pytest.raises(AnnotationError, match=message):
        YOLODetection(root, "train")


def test_yolo_missing_corrupt_and_unfound(tmp_path):
    root = _yolo(tmp_path, {"images/train/a.jpg": (10, 10, None)})
    (root / "images/train/b.jpg").write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match=r"b\.jpg: image 1: cannot read image header"):
        YOLODetection(root, "train")
    with pytest.raises(AnnotationError, match="data.yaml: not found: no YAML file"):
        YOLODetection(tmp_path / "images", "train")
    with pytest.raises(AnnotationError, match="no such file or folder"):
        build_source("yolo", tmp_path / "nowhere", "train")
    # An image that disappears after indexing is named when it is loaded.
    (root / "images/train/b.jpg").unlink()
    source = YOLODetection(root, "train")
    (root / "images/train/a.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"a\.jpg: image 0: image file not found"):
        source.image(0)


def test_yolo_no_warning_on_clean_files(tmp_path):
    root = _yolo(tmp_path, {"images/train/a.jpg": (100, 100, "0 0.5 0.5 0.1 0.1\n")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        YOLODetection(root, "train")


# ------------------------------------------------------------------------------------- VisDrone

def _visdrone(root, files, split="VisDrone2019-DET-train"):
    """``files``: {stem: (width, height, annotation text or None)}."""
    for stem, (width, height, text) in files.items():
        _image(root / split / "images" / f"{stem}.jpg", width, height)
        (root / split / "annotations").mkdir(parents=True, exist_ok=True)
        if text is not None:
            (root / split / "annotations" / f"{stem}.txt").write_text(text)
    return root


VISDRONE_TEXT = ("10,20,30,40,1,4,0,1,\n"
                 "100,10,50,50,0,0,0,0\n"  # ignored region
                 "0,60,20,40,1,11,0,0\n"  # others
                 "150,60,10,10,1,10,1,2\n")


def test_visdrone_reads_classes_and_ignore_regions(tmp_path):
    from mdssd.data.visdrone import VISDRONE_CLASSES, VisDroneDetection

    root = _visdrone(tmp_path, {"0000001": (200, 100, VISDRONE_TEXT), "0000002": (64, 64, "")})
    source = build_source("visdrone", root, "train")
    assert isinstance(source, VisDroneDetection) and source.class_names == VISDRONE_CLASSES and len(source) == 2
    ann = source.annotation(0)
    real = ~ann.crowd
    np.testing.assert_array_equal(ann.boxes[real], [[10, 20, 40, 60], [150, 60, 160, 70]])
    assert ann.labels[real].tolist() == [4, 10]  # car, motor
    # Each ignore region once per class, as crowd: never trained on, ignored by every class's metric.
    assert ann.crowd.sum() == 2 * 10 and sorted(set(ann.labels[ann.crowd].tolist())) == list(range(1, 11))
    assert {tuple(b) for b in ann.boxes[ann.crowd]} == {(100, 10, 150, 60), (0, 60, 20, 100)}
    boxes, labels = ann.trainable()
    assert labels.tolist() == [4, 10]
    assert source.truncation[0].tolist() == [0, 1] and source.occlusion[0].tolist() == [1, 2]
    assert len(source.annotation(1).boxes) == 0 and source.image(0).shape == (100, 200, 3)


@pytest.mark.parametrize("text, message", [
    ("10,20,30,40,1,4,0\n", "line 1: 7 fields"),
    ("1,1,2,2,1,1,0,0\n10,20,x,40,1,4,0,0\n", "line 2: not a number"),
    ("10,20,30,40,1,12,0,0\n", "line 1: category 12 is not 0-11"),
    ("10,20,30,40,1,4,2,0\n", "line 1: truncation 2"),
    ("10,20,0,40,1,4,0,0\n", "line 1: zero-size box"),
    ("180,20,30,40,1,4,0,0\n", r"line 1: box .* outside the 200x100 image"),
])
def test_visdrone_bad_lines(tmp_path, text, message):
    root = _visdrone(tmp_path, {"0000001": (200, 100, text)})
    with pytest.raises(AnnotationError, match=message) as info:
        build_source("visdrone", root, "train")
    assert "0000001.txt" in str(info.value)


def test_visdrone_missing_annotation_and_split(tmp_path):
    root = _visdrone(tmp_path, {"0000001": (20, 20, None)})
    with pytest.raises(AnnotationError, match=r"0000001\.txt: image 0000001\.jpg: annotation file not found"):
        build_source("visdrone", root, "train")
    with pytest.raises(AnnotationError, match="split 'val': no folder with images and annotations"):
        build_source("visdrone", root, "val")
    # Any folder named as the split, '.' being the root itself.
    _visdrone(tmp_path / "mine", {"a": (20, 20, "1,1,5,5,1,1,0,0\n")}, split=".")
    assert len(build_source("visdrone", tmp_path / "mine", ".")) == 1


# ----------------------------------------------------------------------------------------- DOTA

def _dota(root, files, split="train"):
    for stem, (width, height, text) in files.items():
        _image(root / split / "images" / f"{stem}.png", width, height)
        (root / split / "labelTxt").mkdir(parents=True, exist_ok=True)
        if text is not None:
            (root / split / "labelTxt" / f"{stem}.txt").write_text(text)
    return root


def test_dota_reads_polygons_difficult_and_headers(tmp_path):
    from mdssd.data.dota import DOTA_CLASSES, DOTADetection

    root = _dota(tmp_path, {"P0001": (300, 200, "imagesource:GoogleEarth\ngsd:0.146\n"
                                                "10 20 50 10 60 40 20 50 plane 0\n"
                                                "100 100 140 100 140 120 100 120 small-vehicle 1\n"
                                                "290 150 310 150 310 170 290 170 ship\n")})  # past the border
    source = build_source("dota", root, "train")
    assert isinstance(source, DOTADetection) and source.class_names == DOTA_CLASSES
    ann = source.annotation(0)
    np.testing.assert_array_equal(ann.boxes, [[10, 10, 60, 50], [100, 100, 140, 120], [290, 150, 300, 170]])
    assert [source.class_names[i - 1] for i in ann.labels] == ["plane", "small-vehicle", "ship"]
    assert ann.difficult.tolist() == [False, True, False]
    assert len(ann.trainable()[0]) == 2 and len(ann.trainable(keep_difficult=True)[0]) == 3
    (root / "train" / "labelTxt").rename(root / "train" / "labelTxt-v1.5")  # v1.5's folder name
    np.testing.assert_array_equal(build_source("dota", root, "train").annotation(0).boxes, ann.boxes)
    (root / "train" / "other").mkdir()
    with pytest.raises(AnnotationError, match="P0001.txt: image P0001.png: label file not found"):
        DOTADetection(root, "train", label_dir="other")


@pytest.mark.parametrize("text, message", [
    ("10 20 50 10 60 40 20 50\n", "line 1: 8 fields"),
    ("gsd:0.1\n10 20 50 10 60 40 20 50 airport 0\n", "line 2: unknown class 'airport'"),
    ("10 20 50 10 60 40 20 50 plane 2\n", "line 1: difficult must be 0 or 1"),
    ("10 20 10 20 10 20 10 20 plane 0\n", "line 1: zero-size box"),
    ("400 20 450 20 450 40 400 40 plane 0\n", "line 1: box .* outside the 300x200 image"),
    ("10 20 a 10 60 40 20 50 plane 0\n", "line 1: not a number"),
])
def test_dota_bad_lines(tmp_path, text, message):
    root = _dota(tmp_path, {"P0001": (300, 200, text)})
    with pytest.raises(AnnotationError, match=message) as info:
        build_source("dota", root, "train")
    assert "P0001.txt" in str(info.value)


def test_large_images_pass_pillows_bomb_guard_up_to_our_limit(tmp_path, monkeypatch):
    import PIL.Image

    from mdssd.data import base

    _image(tmp_path / "big.png", 100, 100)
    # Pillow's own guard set tiny: our readers (the user's own files) still read the image...
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    assert base.image_size(tmp_path / "big.png", "image 0") == (100, 100)
    assert base.load_rgb(tmp_path / "big.png", "image 0").shape == (100, 100, 3)
    assert PIL.Image.MAX_IMAGE_PIXELS == 100  # ...and leave it as it was
    # ...up to MAX_IMAGE_PIXELS (a gigapixel), beyond which the error names the file.
    monkeypatch.setattr(base, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(AnnotationError, match=r"big\.png: image 0: cannot read image header .*exceeds limit"):
        base.image_size(tmp_path / "big.png", "image 0")
