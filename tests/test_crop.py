"""Native-resolution crop training: the window sampler, cut boxes kept or ignored, ignore regions
in the loss, and the crop pipeline on the readers."""

import numpy as np
import pytest
import torch

from mdssd.data import DetectionDataset, collate
from mdssd.data.crop import NativeCrop, crop_boxes
from mdssd.model import build_model
from mdssd.model.config import LossConfig
from mdssd.model.loss import ignore_priors, multibox_loss
from mdssd.reference import box_iou


def test_cut_boxes_are_kept_when_most_remains_else_ignored():
    boxes = np.array([[0, 0, 10, 10], [95, 0, 105, 10], [92, 20, 102, 30], [200, 200, 210, 210.0]])
    kept, keep, ignored = crop_boxes(boxes, np.array([0, 0, 100, 100.0]), min_visible=0.6)
    assert keep.tolist() == [True, False, True, False]  # 100%, 50%, 80% inside, outside
    assert kept.tolist() == [[0, 0, 10, 10], [92, 20, 100, 30]]
    assert ignored.tolist() == [[95, 0, 100, 10]]  # the cut remainder, not dropped, not background


def test_object_crops_contain_their_object_at_native_resolution():
    crop = NativeCrop(size=64, scale_range=(1.0, 1.0), object_prob=1.0, mirror_prob=0.0, photometric=False)
    image = np.zeros((1000, 1500, 3), np.uint8)
    box = np.array([[700.0, 400.0, 720.0, 416.0]])
    image[400:416, 700:720] = 255
    for seed in range(20):
        tensor, boxes, labels, ignored = crop(image, box, np.array([3]), np.random.default_rng(seed))
        assert tensor.shape == (3, 64, 64) and labels.tolist() == [3] and len(ignored) == 0
        # Native resolution: 20 x 16 source pixels are 20 x 16 output pixels.
        w, h = ((boxes[0, 2:] - boxes[0, :2]) * 64).tolist()
        assert abs(w - 20) < 1e-3 and abs(h - 16) < 1e-3
        x1, y1 = (boxes[0, :2] * 64).round().long().tolist()
        assert (tensor[0, y1:y1 + 16, x1:x1 + 20] > 2).all()  # the white object is where the box says


def test_background_crops_and_scale_jitter():
    crop = NativeCrop(size=64, scale_range=(0.5, 2.0), object_prob=0.0)
    windows = [crop.window(np.random.default_rng(s), 800, 600, np.array([[10, 10, 20, 20.0]])) for s in range(200)]
    sides = np.array([w[2] - w[0] for w in windows])
    assert sides.min() >= 32 - 1e-9 and sides.max() <= 128 + 1e-9 and sides.std() > 10
    # Uniform placement: not all around the box.
    assert np.mean([w[0] > 100 for w in windows]) > 0.5
    assert all(w[0] >= 0 and w[2] <= 800 and w[1] >= 0 and w[3] <= 600 for w in windows)


def test_small_image_is_padded_not_upscaled():
    crop = NativeCrop(size=64, scale_range=(1.0, 1.0), mirror_prob=0.0, photometric=False)
    image = np.full((30, 40, 3), 255, np.uint8)
    tensor, boxes, labels, _ = crop(image, np.array([[0, 0, 40, 30.0]]), np.array([1]), np.random.default_rng(1))
    w, h = ((boxes[0, 2:] - boxes[0, :2]) * 64).tolist()
    assert abs(w - 40) < 1e-3 and abs(h - 30) < 1e-3
    assert (tensor[0] > 2).sum() == 40 * 30  # the image itself; the rest is mean fill (0)
    assert (tensor.abs() < 0.01).sum() == 3 * (64 * 64 - 40 * 30)


def test_crop_is_a_function_of_the_seed():
    crop = NativeCrop(size=64)
    image = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    boxes = np.array([[10, 10, 50, 40], [200, 100, 230, 140.0]])
    a = crop(image, boxes, np.array([1, 2]), np.random.default_rng([5, 1]))
    b = crop(image, boxes, np.array([1, 2]), np.random.default_rng([5, 1]))
    c = crop(image, boxes, np.array([1, 2]), np.random.default_rng([5, 2]))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_bad_crop_options_are_named():
    for bad, message in [(dict(scale_range=(0, 1)), "scale"), (dict(object_prob=2), "probability"),
                         (dict(min_visible=0), "visible")]:
        with pytest.raises(ValueError, match=message):
            NativeCrop(**bad)


def test_ignore_priors_marks_background_near_ignore_regions_only():
    priors = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.52, 0.5, 0.72, 0.7], [0.8, 0.8, 1.0, 1.0]])
    labels = torch.tensor([[0, 2, 0, 0], [0, 0, 0, 0]])
    ignore = torch.tensor([[[0.5, 0.5, 0.7, 0.7]], [[0.0, 0.0, 0.2, 0.2]]])
    out = ignore_priors(priors, labels, ignore, torch.tensor([1, 0]), 0.3, box_iou)
    # Image 0: prior 1 stays a positive, prior 2 overlaps the region and is ignored; image 1's
    # region is padding (count 0).
    assert out.tolist() == [[0, 2, -1, 0], [0, 0, 0, 0]]


def test_loss_leaves_ignored_priors_out_of_both_terms(gen):
    config = LossConfig()
    loc = torch.randn(2, 50, 4, generator=gen)
    conf = torch.randn(2, 50, 5, generator=gen)
    target_loc = torch.randn(2, 50, 4, generator=gen)
    labels = torch.zeros(2, 50, dtype=torch.long)
    labels[0, :3] = 1
    labels[1, 10] = 4
    base = multibox_loss(loc, conf, target_loc, labels, config)
    # No ignored prior: the same numbers as before the ignore label existed.
    assert all(torch.equal(base[k], multibox_loss(loc, conf, target_loc, labels.clone(), config)[k]) for k in base)
    # Make the hardest negatives of image 0 ignored: they must not be mined, and the mining takes
    # the next ones instead (same count of negatives).
    ce = torch.nn.functional.cross_entropy(conf[0], labels[0], reduction="none")
    ce[:3] = -1
    hardest = ce.argsort(descending=True)[:2]
    ignored = labels.clone()
    ignored[0, hardest] = -1
    out = multibox_loss(loc, conf, target_loc, ignored, config)
    by_hand = labels.clone()
    by_hand[0, hardest] = 0
    conf_masked = conf.clone()
    # Equivalent: those priors predict background perfectly (zero loss, never hardest).
    conf_masked[0, hardest] = torch.tensor([100.0, 0, 0, 0, 0])
    expected = multibox_loss(loc, conf_masked, target_loc, by_hand, config)
    assert torch.allclose(out["conf"], expected["conf"]) and torch.equal(out["loc"], base["loc"])
    assert not torch.allclose(out["conf"], base["conf"])


def test_detector_loss_takes_ignore_regions_and_checks_them(gen):
    model = build_model("mdssd_tiny", num_classes=3)
    images = torch.randn(2, 3, 128, 128, generator=gen)
    loc, conf = model(images)
    gt = torch.tensor([[[0.1, 0.1, 0.3, 0.3]], [[0.5, 0.5, 0.6, 0.7]]])
    gt_labels, counts = torch.tensor([[1], [2]]), torch.tensor([1, 1])
    plain = model.loss(loc, conf, gt, gt_labels, counts)
    none = model.loss(loc, conf, gt, gt_labels, counts, ignore_boxes=torch.zeros(2, 1, 4),
                      ignore_counts=torch.tensor([0, 0]))
    assert all(torch.equal(plain[k], none[k]) for k in plain)
    # Every prior an ignore region: no background prior is left to mine, only positives count.
    priors = model.priors_xyxy.expand(2, -1, -1)
    some = model.loss(loc, conf, gt, gt_labels, counts, ignore_boxes=priors,
                      ignore_counts=torch.tensor([priors.shape[1]] * 2))
    with torch.no_grad():
        _, targets = model.backend.match_encode(model.priors, gt, gt_labels, counts, 0.5, 0.1, 0.2)
    positive = targets > 0
    ce = torch.nn.functional.cross_entropy(conf[positive], targets[positive], reduction="sum") / positive.sum()
    assert torch.allclose(some["conf"], ce) and some["conf"] < plain["conf"]
    with pytest.raises(ValueError, match="ignore_boxes"):
        model.loss(loc, conf, gt, gt_labels, counts, ignore_boxes=torch.zeros(2, 4), ignore_counts=counts)


def test_crop_through_readers_and_collate(tmp_path):
    from mdssd.data import SyntheticSigns, build_source, export_coco

    source = SyntheticSigns("val", num_images=4, seed=3, min_size=400, max_size=600, object_sizes=(6, 20),
                            objects=(3, 6))
    assert all(4 <= min(b[2] - b[0], b[3] - b[1]) and max(b[2] - b[0], b[3] - b[1]) <= 21
               for i in range(4) for b in source.annotation(i).boxes)
    export_coco(source, tmp_path / "coco", "val2017")
    for reader in (source, build_source("coco", tmp_path / "coco", "val")):
        data = DetectionDataset(reader, NativeCrop(size=128, min_visible=0.6), seed=0)
        items = [data[i] for i in range(4)]
        batch = collate(items)
        assert batch["images"].shape == (4, 3, 128, 128)
        assert set(batch) >= {"ignore_boxes", "ignore_counts"}
        assert batch["ignore_counts"].tolist() == [len(t["ignore"]) for _, t in items]
        assert batch["gt_counts"].sum() > 0
    # Readers yield the same crops: the transform sees the same pixels and boxes.
    a = DetectionDataset(source, NativeCrop(size=128), seed=0)[1]
    b = DetectionDataset(build_source("coco", tmp_path / "coco", "val"), NativeCrop(size=128), seed=0)[1]
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1]["boxes"], b[1]["boxes"])


def test_crop_on_voc_and_tt100k_readers(tmp_path):
    from mdssd.data import TT100KDetection, VOCDetection
    from tests.test_data_readers import _tt100k, _voc

    voc = VOCDetection(_voc(tmp_path / "VOC2007", {
        "000001": (300, 200, [("dog", (101, 51, 120, 70), False), ("person", (10, 5, 20, 30), True)], None)}),
        image_set="trainval")
    tt = TT100KDetection(_tt100k(tmp_path / "tt", [{"category": "p11", "bbox": {"xmin": 10, "ymin": 20,
                                                                               "xmax": 30, "ymax": 41}}]), "train")
    crop = NativeCrop(size=64, scale_range=(1.0, 1.0), object_prob=1.0, mirror_prob=0.0, photometric=False)
    for source, size in ((voc, (20, 20)), (tt, (20, 21))):
        image, target = DetectionDataset(source, crop, seed=0)[0]
        assert image.shape == (3, 64, 64) and len(target["labels"]) == 1  # VOC's difficult one is not trained
        w, h = ((target["boxes"][0, 2:] - target["boxes"][0, :2]) * 64).tolist()
        assert (round(w), round(h)) == size  # native resolution
