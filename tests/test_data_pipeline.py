"""SSD augmentation on boxes, the synthetic set, collate and the COCO export round trip."""

import numpy as np
import pytest
import torch

from mdssd.data import (IMAGENET_MEAN, IMAGENET_STD, COCODetection, DetectionDataset, Resize, SSDAugment,
                        SyntheticSigns, build_dataset, collate, export_coco)
from mdssd.data.transforms import sample_crop


def _marked_image(width, height, boxes):
    """Black image with each box filled white: lets a test find the boxes in the output pixels."""
    image = np.zeros((height, width, 3), np.uint8)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
    return image


def test_augment_boxes_stay_inside_and_follow_the_pixels():
    rng0 = np.random.default_rng(0)
    augment = SSDAugment(size=96, photometric=False)
    for trial in range(60):
        width, height = (int(v) for v in rng0.integers(60, 200, size=2))
        n = int(rng0.integers(1, 4))
        xy = rng0.uniform(0, [width - 20, height - 20], size=(n, 2))
        boxes = np.concatenate([xy, xy + rng0.uniform(12, 20, size=(n, 2))], axis=1).round()
        labels = np.arange(1, n + 1)
        image, out_boxes, out_labels = augment(_marked_image(width, height, boxes), boxes, labels,
                                               np.random.default_rng(trial))
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert out_boxes.dtype == torch.float32 and out_labels.dtype == torch.int64
        assert len(out_boxes) == len(out_labels) and len(out_boxes) >= 1  # a crop keeps a box centre
        assert (out_boxes >= 0).all() and (out_boxes <= 1).all()
        assert (out_boxes[:, 2:] > out_boxes[:, :2]).all()
        assert set(out_labels.tolist()) <= set(labels.tolist())
        # Each output box is white inside (the pixels moved with the box): sample its centre.
        pixels = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
        for x1, y1, x2, y2 in (out_boxes * 96).tolist():
            if x2 - x1 >= 3 and y2 - y1 >= 3:
                cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                assert pixels[:, cy, cx].min() > 0.6, (trial, x1, y1, x2, y2)


def test_crop_keeps_boxes_whose_centre_is_inside_and_clips_them():
    # Force a crop (no expand, no mirror) and check the kept set against the rule directly.
    augment = SSDAugment(size=50, expand_prob=0.0, mirror_prob=0.0, photometric=False, min_ious=(0.0,))
    boxes = np.array([[0, 0, 40, 40], [60, 60, 100, 100], [30, 50, 70, 90], [5, 70, 25, 95]], float)
    labels = np.array([1, 2, 3, 4])
    checked = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        # Replay the generator to learn the window the augmentation picked.
        replay = np.random.default_rng(seed)
        replay.random()  # expand draw
        replay.integers(1)  # min-IoU choice
        window = sample_crop(replay, 100.0, 100.0, boxes, 0.0)
        _, out_boxes, out_labels = augment(np.zeros((100, 100, 3), np.uint8), boxes, labels, rng)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((window[0] < centres[:, 0]) & (centres[:, 0] < window[2])
                  & (window[1] < centres[:, 1]) & (centres[:, 1] < window[3]))
        assert out_labels.tolist() == labels[inside].tolist()
        expected = np.clip(boxes[inside], window[[0, 1, 0, 1]], window[[2, 3, 2, 3]]) - window[[0, 1, 0, 1]]
        expected /= np.array([window[2] - window[0], window[3] - window[1]] * 2)
        np.testing.assert_allclose(out_boxes.numpy(), expected, atol=1e-6)
        checked += not np.array_equal(window, [0, 0, 100, 100])
    assert checked > 20  # most seeds really cropped


def test_crop_sampler_honours_min_iou():
    boxes = np.array([[20.0, 20.0, 80.0, 80.0]])
    for seed in range(20):
        window = sample_crop(np.random.default_rng(seed), 100.0, 100.0, boxes, 0.7)
        lt, rb = np.maximum(window[:2], boxes[0, :2]), np.minimum(window[2:], boxes[0, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None))
        iou = inter / (np.prod(window[2:] - window[:2]) + 3600 - inter)
        assert iou >= 0.7 or np.array_equal(window, [0, 0, 100, 100])


def test_mirror_and_resize_are_exact():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    image = _marked_image(100, 80, boxes)
    mirror = SSDAugment(size=50, expand_prob=0, min_ious=(None,), mirror_prob=1.0, photometric=False)
    _, out, _ = mirror(image, boxes, np.array([1]), np.random.default_rng(0))
    np.testing.assert_allclose(out.numpy(), [[0.7, 0.25, 0.9, 0.75]], atol=1e-6)
    tensor, out, _ = Resize(50)(image, boxes, np.array([1]))
    np.testing.assert_allclose(out.numpy(), [[0.1, 0.25, 0.3, 0.75]], atol=1e-6)
    # Normalisation per CONTRACTS.md: a white pixel is (1 - mean) / std.
    np.testing.assert_allclose(tensor[:, 30, 10].numpy(), (1 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)


def test_synthetic_is_deterministic_small_and_in_range():
    train = SyntheticSigns("train", num_images=12, seed=3)
    again = SyntheticSigns("train", num_images=12, seed=3)
    val = SyntheticSigns("val", num_images=12, seed=3)
    np.testing.assert_array_equal(train.image(5), again.image(5))
    assert not np.array_equal(train.annotation(0).boxes, val.annotation(0).boxes)
    sides = []
    for i in range(len(train)):
        ann = train.annotation(i)
        image = train.image(i)
        assert image.shape == (ann.height, ann.width, 3) and image.dtype == np.uint8
        assert 300 <= ann.width <= 1024 and 300 <= ann.height <= 1024
        assert len(ann.boxes) >= 1 and ann.labels.min() >= 1 and ann.labels.max() <= len(train.class_names)
        assert (ann.boxes[:, :2] >= 0).all() and (ann.boxes[:, 2] <= ann.width).all()
        assert (ann.boxes[:, 3] <= ann.height).all()
        sides += np.maximum(ann.boxes[:, 2] - ann.boxes[:, 0], ann.boxes[:, 3] - ann.boxes[:, 1]).tolist()
    sides = np.array(sides)
    assert np.mean((sides >= 6) & (sides <= 48)) > 0.6  # mostly small objects
    # Something is drawn where the box says: the region is not flat.
    ann = train.annotation(0)
    x1, y1, x2, y2 = ann.boxes[0].astype(int)
    assert train.image(0)[y1:y2, x1:x2].std() > 5
    with pytest.raises(IndexError):
        train.annotation(12)


def test_collate_pads_per_contract():
    dataset = build_dataset("synthetic", split="train", image_size=64, num_images=6, augment_seed=1)
    items = [dataset[i] for i in range(4)]
    batch = collate(items)
    counts = [len(t["labels"]) for _, t in items]
    assert batch["images"].shape == (4, 3, 64, 64)
    g = max(1, max(counts))
    assert batch["gt_boxes"].shape == (4, g, 4) and batch["gt_labels"].shape == (4, g)
    assert batch["gt_counts"].tolist() == counts and batch["gt_counts"].dtype == torch.int64
    assert batch["image_ids"].tolist() == [0, 1, 2, 3]
    for b, (_, target) in enumerate(items):
        n = counts[b]
        assert torch.equal(batch["gt_boxes"][b, :n], target["boxes"])
        assert (batch["gt_labels"][b, n:] == 0).all() and (batch["gt_boxes"][b, n:] == 0).all()
    empty = collate([(torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                              "image_id": 5})])
    assert empty["gt_boxes"].shape == (1, 1, 4) and empty["gt_counts"].tolist() == [0]
    # Items are a function of (seed, epoch, index): same epoch same item, new epoch new augmentation.
    assert torch.equal(dataset[2][0], items[2][0])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2][0], items[2][0])


def test_export_coco_round_trip(tmp_path):
    source = SyntheticSigns("val", num_images=3, seed=0, min_size=64, max_size=96)
    path = export_coco(source, tmp_path, split="val2017")
    back = COCODetection(path, tmp_path / "val2017")
    assert back.class_names == source.class_names
    for i in range(3):
        np.testing.assert_allclose(back.annotation(i).boxes, source.annotation(i).boxes)
        assert back.annotation(i).labels.tolist() == source.annotation(i).labels.tolist()
        np.testing.assert_array_equal(back.image(i), source.image(i))
    dataset = DetectionDataset(back, Resize(32))
    assert dataset[0][0].shape == (3, 32, 32)
