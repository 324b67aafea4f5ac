"""VisDrone's ignore regions and DOTA's difficult objects end to end: they reach the loss as ignore
regions (or not at all), and both metrics (VOC and pycocotools) ignore detections on them."""

import numpy as np
import pytest
import torch

from mdssd.data import DetectionDataset, SSDAugment, build_source, collate
from mdssd.data.crop import NativeCrop
from mdssd.eval import score
from mdssd.metrics import Detections
from mdssd.model import build_model
from mdssd.model.detector import IGNORE_IOU
from mdssd.model.loss import ignore_priors
from tests.test_data_formats import _dota, _visdrone

# A car, an ignored region (category 0) and an "others" box (category 11) in a 128 px image.
VISDRONE = "10,10,20,20,1,4,0,0\n60,60,60,60,0,0,0,0\n0,100,20,20,1,11,0,0\n"


def _coco_available():
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("transform", [
    NativeCrop(size=128, scale_range=(1.0, 1.0), mirror_prob=0.0, photometric=False),
    SSDAugment(size=128, expand_prob=0.0, min_ious=(None,), mirror_prob=0.0, photometric=False),
])
def test_visdrone_ignore_regions_reach_the_loss(tmp_path, transform):
    source = build_source("visdrone", _visdrone(tmp_path, {"a": (128, 128, VISDRONE)}), "train")
    image, target = DetectionDataset(source, transform, seed=0)[0]
    assert target["labels"].tolist() == [4]
    # The two regions once each (not once per class), in [0, 1] of the crop.
    np.testing.assert_allclose(target["ignore"].numpy() * 128, [[0, 100, 20, 120], [60, 60, 120, 120]], atol=1e-4)

    model = build_model("mdssd_tiny", num_classes=len(source.class_names) + 1)
    batch = collate([(image, target)])
    with torch.no_grad():
        _, labels = model.backend.match_encode(model.priors, batch["gt_boxes"], batch["gt_labels"],
                                               batch["gt_counts"], 0.5, 0.1, 0.2)
        marked = ignore_priors(model.priors_xyxy, labels, batch["ignore_boxes"], batch["ignore_counts"], IGNORE_IOU,
                               model.backend.box_iou)[0]
    priors = model.priors_xyxy * 128
    region = torch.tensor([60.0, 60, 120, 120])
    inside = ((priors[:, :2] >= region[:2]) & (priors[:, 2:] <= region[2:])).all(1)
    far = (priors[:, 2] < 55) & (priors[:, 3] < 55)  # near the car only, away from both regions
    assert inside.sum() > 10 and bool((marked[inside] == -1).all())  # neither object nor background
    assert bool((marked[far] >= 0).all())
    # Priors in the region predicting a car with confidence are the hardest negatives: without the
    # region they are mined (and pushed to background), with it they leave the loss.
    loc = torch.zeros(1, len(priors), 4)
    conf = torch.zeros(1, len(priors), len(source.class_names) + 1)
    conf[0, inside, 4] = 10.0
    with_regions = model.loss(loc, conf, batch["gt_boxes"], batch["gt_labels"], batch["gt_counts"],
                              ignore_boxes=batch["ignore_boxes"], ignore_counts=batch["ignore_counts"])
    without = model.loss(loc, conf, batch["gt_boxes"], batch["gt_labels"], batch["gt_counts"])
    assert without["conf"] > with_regions["conf"] + 5


def test_visdrone_ignore_regions_are_ignored_by_both_metrics(tmp_path):
    source = build_source("visdrone", _visdrone(tmp_path, {"a": (128, 128, VISDRONE)}), "train")
    # The car found, plus confident detections inside the ignored region (a small car) and the
    # "others" box (a pedestrian): with the regions ignored the car's AP stays 1.
    detections = [Detections([[70, 70, 80, 80], [0, 100, 20, 120], [10, 10, 30, 30]], [0.99, 0.98, 0.9], [4, 1, 4])]
    report = score(source, detections, coco=_coco_available())
    assert report.voc.ap_11[3] == pytest.approx(1.0) and np.isnan(report.voc.ap_11[0])
    assert report.voc.num_gt.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    if report.coco is not None:
        assert report.coco.stats["AP50"] == pytest.approx(1.0)
    # A detection outside every region still counts as a false positive.
    worse = score(source, [Detections([[90, 10, 100, 20], [10, 10, 30, 30]], [0.99, 0.9], [4, 4])], coco=False)
    assert worse.voc.ap_11[3] < 1


def test_dota_difficult_objects_are_not_trained_and_not_scored(tmp_path):
    text = "10 10 40 10 40 40 10 40 plane 0\n70 70 90 70 90 90 70 90 ship 1\n"
    source = build_source("dota", _dota(tmp_path, {"P1": (128, 128, text)}), "train")
    crop = NativeCrop(size=128, scale_range=(1.0, 1.0), mirror_prob=0.0, photometric=False)
    _, target = DetectionDataset(source, crop, seed=0)[0]
    assert target["labels"].tolist() == [1]  # the difficult ship is not a target
    _, target = DetectionDataset(source, crop, seed=0, keep_difficult=True)[0]
    assert sorted(target["labels"].tolist()) == [1, 2]
    ship = source.class_names.index("ship")
    detections = [Detections([[70, 70, 90, 90], [10, 10, 40, 40]], [0.99, 0.9], [ship + 1, 1])]
    report = score(source, detections, coco=_coco_available())
    assert report.voc.ap_11[0] == pytest.approx(1.0) and np.isnan(report.voc.ap_11[ship])  # no FP, no miss
    assert report.voc.map_11 == pytest.approx(1.0)
    if report.coco is not None:
        assert report.coco.stats["AP50"] == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["visdrone", "dota"])
def test_visdrone_and_dota_layouts_train_with_crop_and_tiles(tmp_path, layout):
    from mdssd import config as cfgmod
    from mdssd import train as train_mod
    from tests.test_train_data_formats import FLAGS

    threads = torch.get_num_threads()
    if layout == "visdrone":
        files = {f"{i}": (256, 192, VISDRONE + f"{100 + 20 * i},120,16,16,1,1,0,0\n") for i in range(2)}
        _visdrone(tmp_path, files)
        _visdrone(tmp_path, files, split="VisDrone2019-DET-val")
    else:
        files = {f"P{i}": (256, 192, f"gsd:0.1\n10 10 40 10 40 40 10 40 plane 0\n{100 + i} 100 130 100 130 120 "
                                     f"{100 + i} 120 ship 1\n") for i in range(2)}
        _dota(tmp_path, files)
        _dota(tmp_path, files, split="val")
    try:
        summary = train_mod.train(cfgmod.from_args(["--dataset", layout, "--data-root", str(tmp_path), "--crop",
                                                    "--tile", "128", *FLAGS, "--out-dir", str(tmp_path / "out"),
                                                    "--steps", "2"]))
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 2 and summary["metrics"]["images"] == 2
