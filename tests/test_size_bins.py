"""COCO AP/AR per tiny-object size bin against pycocotools run directly with only that area range."""

import contextlib
import io

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from mdssd.data import Annotation  # noqa: E402
from mdssd.data.export import coco_ground_truth  # noqa: E402
from mdssd.eval import score  # noqa: E402
from mdssd.metrics import SIZE_BINS, Detections, coco_eval  # noqa: E402


def _random_case(seed=3, images=12):
    """Objects of 3-60 px side, detections jittered around them (some missed, some false)."""
    rng = np.random.default_rng(seed)
    annotations, detections = [], []
    for i in range(images):
        n = int(rng.integers(2, 9))
        side = rng.uniform(3, 60, n)
        x, y = rng.uniform(0, 190, n), rng.uniform(0, 190, n)
        boxes = np.stack([x, y, np.minimum(x + side, 256), np.minimum(y + side * rng.uniform(0.6, 1.4, n), 256)], 1)
        labels = rng.integers(1, 4, n)
        crowd = rng.random(n) < 0.1
        annotations.append(Annotation(i + 1, f"{i}.png", 256, 256, boxes, labels, crowd=crowd))
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 1.5, (int(keep.sum()), 4)) * side[keep, None] / 10
        false = rng.uniform(0, 200, (3, 2))
        false = np.concatenate([false, false + rng.uniform(3, 40, (3, 2))], 1)
        det_boxes = np.concatenate([jitter, false])
        det_labels = np.concatenate([labels[keep], rng.integers(1, 4, 3)])
        detections.append(Detections(det_boxes, rng.random(len(det_boxes)), det_labels))
    return annotations, detections


def _pycocotools_one_range(gt_dict, results, image_ids, area_range):
    """AP, AP50 and AR@100 as pycocotools' own summarize() reports them for one area range."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.areaRng = [list(area_range)]
        evaluator.params.areaRngLbl = ["all"]  # summarize()'s "all" rows are then this range
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0], evaluator.stats[1], evaluator.stats[8]


def test_size_bins_match_pycocotools_with_that_range_only():
    annotations, detections = _random_case()
    names = ("a", "b", "c")
    ours = coco_eval(annotations, detections, names, size_bins=SIZE_BINS)
    plain = coco_eval(annotations, detections, names)
    # Adding ranges changes nothing of COCO's own metrics.
    np.testing.assert_allclose(list(ours.stats.values()), list(plain.stats.values()), atol=0)

    gt_dict = coco_ground_truth(annotations, names)
    results = [{"image_id": a.image_id, "category_id": int(l), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "score": float(s)} for a, d in zip(annotations, detections)
               for b, s, l in zip(d.boxes, d.scores, d.labels)]
    image_ids = [a.image_id for a in annotations]
    filled = 0
    for name, (lo, hi) in SIZE_BINS.items():
        ap, ap50, ar = _pycocotools_one_range(gt_dict, results, image_ids, (lo * lo, hi * hi))
        row = ours.size_bins[name]
        assert row["AP"] == pytest.approx(ap, abs=1e-12)
        assert row["AP50"] == pytest.approx(ap50, abs=1e-12)
        assert row["AR"] == pytest.approx(ar, abs=1e-12)
        expected_gt = sum(int(((~a.crowd) & (lo * lo <= area) & (area <= hi * hi)).sum())
                          for a in annotations
                          for area in [(a.boxes[:, 2] - a.boxes[:, 0]) * (a.boxes[:, 3] - a.boxes[:, 1])])
        assert row["num_gt"] == expected_gt
        filled += row["num_gt"] > 0 and 0 < row["AP"] < 1
    assert filled >= 3  # non-trivial: most bins have objects and imperfect detections


def test_empty_bin_is_nan_and_no_detections_is_zero():
    annotations = [Annotation(1, "a.png", 100, 100, [[10, 10, 30, 30]], [1])]  # one 20 px object
    found = coco_eval(annotations, [Detections([[10, 10, 30, 30]], [0.9], [1])], ("a",), size_bins=SIZE_BINS)
    assert found.size_bins["16-32px"]["AP"] == pytest.approx(1.0)
    assert np.isnan(found.size_bins["2-8px"]["AP"]) and found.size_bins["2-8px"]["num_gt"] == 0
    none = coco_eval(annotations, [Detections(np.zeros((0, 4)), [], [])], ("a",), size_bins=SIZE_BINS)
    assert none.size_bins["16-32px"] == {"AP": 0.0, "AP50": 0.0, "AR": 0.0, "num_gt": 1}
    assert np.isnan(none.size_bins["32-64px"]["AP"])


def test_bad_size_bins_are_named():
    annotations = [Annotation(1, "a.png", 100, 100, [[10, 10, 30, 30]], [1])]
    detections = [Detections([[10, 10, 30, 30]], [0.9], [1])]
    with pytest.raises(ValueError, match="'x'.*min side < max side"):
        coco_eval(annotations, detections, ("a",), size_bins={"x": (8, 4)})
    with pytest.raises(ValueError, match="'small'.*COCO's own"):
        coco_eval(annotations, detections, ("a",), size_bins={"small": (0, 8)})


def test_score_reports_size_bins():
    annotations = [Annotation(1, "a.png", 100, 100, [[10, 10, 30, 30], [50, 50, 56, 56]], [1, 1])]

    class Source:
        class_names = ("a",)

        def __len__(self):
            return 1

        def annotation(self, i):
            return annotations[i]

    report = score(Source(), [Detections([[10, 10, 30, 30]], [0.9], [1])], size_bins=True)
    assert report.as_dict()["size_bins"]["2-8px"] == {"AP": 0.0, "AP50": 0.0, "AR": 0.0, "num_gt": 1}
    assert "16-32px" in report.table and "size bin" in report.table
    with pytest.raises(ValueError, match="size bins are COCO metrics"):
        score(Source(), [Detections([[10, 10, 30, 30]], [0.9], [1])], coco=False, size_bins=True)
