"""VOC, COCO and TT100K readers on small fixtures written here: good files parse to the right
pixel boxes; broken ones raise AnnotationError naming the file and the record."""

import json

import numpy as np
import pytest
from PIL import Image

from mdssd.data import AnnotationError, COCODetection, TT100KDetection, VOCDetection, build_source


def _image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (10, 20, 30)).save(path)


# ------------------------------------------------------------------------------------------ VOC

def _voc_xml(filename, width, height, objects):
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, box, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
                     f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
                     "</bndbox></object>")
    return "".join(parts) + "</annotation>"


def _voc(root, records, image_set="trainval"):
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, (width, height, objects, xml) in records.items():
        _image(root / "JPEGImages" / f"{stem}.jpg", width, height)
        text = xml if xml is not None else _voc_xml(f"{stem}.jpg", width, height, objects)
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(records) + "\n")
    return root


def test_voc_reads_boxes_classes_and_difficult(tmp_path):
    root = _voc(tmp_path / "VOC2007", {
        "000001": (64, 48, [("dog", (1, 1, 64, 48), False), ("person", (10, 5, 20, 30), True)], None),
        "000002": (40, 40, [], None),
    })
    source = VOCDetection(root, "trainval")
    assert len(source) == 2
    ann = source.annotation(0)
    # 1-based inclusive corners -> continuous [xmin-1, xmax]: the whole image is [0, 64] x [0, 48].
    np.testing.assert_array_equal(ann.boxes, [[0, 0, 64, 48], [9, 4, 20, 30]])
    assert ann.labels.tolist() == [source.class_names.index("dog") + 1, source.class_names.index("person") + 1]
    assert ann.difficult.tolist() == [False, True]
    boxes, labels = ann.trainable()  # difficult dropped for training unless asked
    assert len(boxes) == 1 and len(ann.trainable(keep_difficult=True)[0]) == 2
    assert source.image(0).shape == (48, 64, 3)
    assert len(source.annotation(1).boxes) == 0
    assert len(build_source("voc", root, "train")) == 2  # "train" -> trainval


@pytest.mark.parametrize("case, message", [
    ("unknown_class", "unknown class"),
    ("outside", "outside the 64x48 image"),
    ("corrupt", "cannot parse"),
    ("not_number", "not a number"),
    ("missing_image", "not found"),
])
def test_voc_errors_name_file_and_record(tmp_path, case, message):
    objects = [("dog", (1, 1, 10, 10), False)]
    xml = None
    if case == "unknown_class":
        objects = [("dog", (1, 1, 10, 10), False), ("unicorn", (2, 2, 5, 5), False)]
    elif case == "outside":
        objects = [("dog", (1, 1, 10, 10), False), ("cat", (30, 20, 70, 40), False)]
    elif case == "corrupt":
        xml = "<annotation><size><width>64</width>"
    elif case == "not_number":
        xml = _voc_xml("000007.jpg", 64, 48, [("dog", ("a", 1, 10, 10), False)])
    root = _voc(tmp_path / "VOC2007", {"000007": (64, 48, objects, xml)})
    if case == "missing_image":
        (root / "JPEGImages" / "000007.jpg").unlink()
    with pytest.raises(AnnotationError, match=message) as info:
        VOCDetection(root, "trainval")
    assert "000007.xml" in str(info.value)
    if case in ("unknown_class", "outside"):
        assert "object 1" in str(info.value)


def test_voc_image_size_mismatch_and_corrupt_image(tmp_path):
    root = _voc(tmp_path / "VOC2007", {"000001": (64, 48, [("dog", (1, 1, 10, 10), False)], None),
                                       "000002": (64, 48, [], None)})
    _image(root / "JPEGImages" / "000001.jpg", 50, 48)
    (root / "JPEGImages" / "000002.jpg").write_bytes(b"not a jpeg")
    source = VOCDetection(root, "trainval")
    with pytest.raises(AnnotationError, match="50x48 but the annotation says 64x48"):
        source.image(0)
    with pytest.raises(AnnotationError, match=r"000002\.jpg.*cannot decode"):
        source.image(1)


# ----------------------------------------------------------------------------------------- COCO

def _coco(tmp_path, annotations, images=None, categories=None):
    images = images or [{"id": 7, "file_name": "a.png", "width": 80, "height": 60},
                        {"id": 9, "file_name": "b.png", "width": 40, "height": 30}]
    for img in images:
        _image(tmp_path / "train2017" / img["file_name"], img["width"], img["height"])
    categories = categories or [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_reads_boxes_crowd_and_category_order(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 80, 60], "iscrowd": 1},
        {"id": 3, "image_id": 9, "category_id": 1, "bbox": [1.5, 2, 38.6, 28.3], "iscrowd": 0},  # overshoots by 0.1
    ])
    source = COCODetection(path, tmp_path / "train2017")
    assert source.class_names == ("person", "dog") and source.category_ids == (1, 18)
    a, b = source.annotation(0), source.annotation(1)
    np.testing.assert_allclose(a.boxes, [[10, 5, 30, 35], [0, 0, 80, 60]])
    assert a.labels.tolist() == [2, 1] and a.crowd.tolist() == [False, True]
    assert len(a.trainable()[0]) == 1  # crowd never a training target
    np.testing.assert_allclose(b.boxes, [[1.5, 2, 40, 30]])  # clipped to the image
    assert len(build_source("coco", tmp_path, "train")) == 2


@pytest.mark.parametrize("case, message", [
    ("category", "annotation 5: unknown category_id 3"),
    ("outside", r"annotation 5 \(image 9\): box .* outside the 40x30 image"),
    ("image_id", "annotation 5: unknown image_id 4"),
    ("bbox", "annotation 5: bbox must be"),
    ("missing_image", "image 9: image file .*b.png not found"),
])
def test_coco_errors_name_file_and_record(tmp_path, case, message):
    ann = {"id": 5, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    if case == "category":
        ann["category_id"] = 3
    elif case == "outside":
        ann["bbox"] = [30, 10, 20, 5]
    elif case == "image_id":
        ann["image_id"] = 4
    elif case == "bbox":
        ann["bbox"] = [1, 2, 3]
    path = _coco(tmp_path, [ann])
    if case == "missing_image":
        (tmp_path / "train2017" / "b.png").unlink()
    with pytest.raises(AnnotationError, match=message) as info:
        COCODetection(path, tmp_path / "train2017")
    assert str(path) in str(info.value)


def test_coco_corrupt_json(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"instances\.json: JSON: cannot parse"):
        COCODetection(path, tmp_path)


# --------------------------------------------------------------------------------------- TT100K

def _tt100k(tmp_path, objects, types=("pl80", "p11", "i5")):
    _image(tmp_path / "train" / "10.jpg", 100, 80)
    _image(tmp_path / "test" / "20.jpg", 100, 80)
    imgs = {
        "10": {"path": "train/10.jpg", "id": 10, "objects": objects},
        "20": {"path": "test/20.jpg", "id": 20,
               "objects": [{"category": "i5", "bbox": {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}}]},
    }
    (tmp_path / "annotations.json").write_text(json.dumps({"types": list(types), "imgs": imgs}))
    return tmp_path


def test_tt100k_reads_split_and_boxes(tmp_path):
    root = _tt100k(tmp_path, [
        {"category": "p11", "bbox": {"xmin": 10.5, "ymin": 20.0, "xmax": 30.25, "ymax": 41.0}},
        {"category": "pl80", "bbox": {"xmin": 0, "ymin": 0, "xmax": 100, "ymax": 80}},
    ])
    train = TT100KDetection(root, "train")
    assert len(train) == 1 and train.class_names == ("pl80", "p11", "i5")
    ann = train.annotation(0)
    np.testing.assert_allclose(ann.boxes, [[10.5, 20, 30.25, 41], [0, 0, 100, 80]])
    assert ann.labels.tolist() == [2, 1] and ann.image_id == 10
    assert train.image(0).shape == (80, 100, 3)
    assert len(TT100KDetection(root, "test")) == 1
    # A class subset drops other known types (the frequent-classes protocol).
    subset = TT100KDetection(root, "train", class_names=["p11"])
    assert subset.annotation(0).labels.tolist() == [1]


def test_tt100k_errors(tmp_path):
    root = _tt100k(tmp_path, [{"category": "zz9", "bbox": {"xmin": 1, "ymin": 1, "xmax": 5, "ymax": 5}}])
    with pytest.raises(AnnotationError, match=r"annotations\.json: imgs\['10'\] object 0: unknown class 'zz9'"):
        TT100KDetection(root, "train")
    root = _tt100k(tmp_path, [{"category": "p11", "bbox": {"xmin": 90, "ymin": 1, "xmax": 120, "ymax": 5}}])
    source = TT100KDetection(root, "train")
    with pytest.raises(AnnotationError, match=r"imgs\['10'\] object 0 \(p11\): box .* outside the 100x80 image"):
        source.annotation(0)
    root = _tt100k(tmp_path, [])
    (root / "train" / "10.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"imgs\['10'\]: image file .*10.jpg not found"):
        TT100KDetection(root, "train")
