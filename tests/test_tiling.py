"""Sliced inference: tile geometry, mapping tile boxes back to the image, merging across tiles.

A stand-in "model" finds the white blob of each input exactly (fixed shapes, like the real
postprocess), so every assertion is about the tiling: where tiles go, how their boxes map back,
and what survives the merge."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mdssd.tiling import TileSpec, merge_ios, predict_tiled, tile_starts, tile_windows


class BlobFinder(nn.Module):
    """Detects the bounding box of all white pixels of each input (one detection, label 1, score
    = the blob's share of the input), or nothing (label -1) when there are none."""

    def __init__(self, side: int):
        super().__init__()
        self.config = SimpleNamespace(image_size=side, num_classes=2)
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.input_shapes: list[tuple] = []
        self.hits = 0

    def forward(self, images):
        self.input_shapes.append(tuple(images.shape))
        return images, images

    def postprocess(self, loc, conf):
        side = loc.shape[-1]
        white = loc[:, 0] > 2.0  # normalised R of a (nearly) white pixel; black and padding are < 0
        rows, cols = white.any(2), white.any(1)
        has = white.flatten(1).any(1)
        first = lambda m: m.float().argmax(1)  # noqa: E731
        x1, y1 = first(cols), first(rows)
        x2, y2 = side - first(cols.flip(1)), side - first(rows.flip(1))
        boxes = (torch.stack([x1, y1, x2, y2], 1).float() / side)[:, None, :]
        scores = (white.flatten(1).float().mean(1))[:, None]
        labels = torch.where(has, 1, -1)[:, None]
        self.hits += int(has.sum())
        return boxes, scores, labels, has.long()


def blob_image(width, height, boxes):
    image = np.zeros((height, width, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = 255
    return image


@pytest.mark.parametrize("length,tile,overlap", [(1000, 128, 0.25), (1024, 128, 0.25), (300, 128, 0.0),
                                                 (129, 128, 0.5), (2048, 512, 0.2), (4000, 1000, 0.3)])
def test_tile_starts_cover_the_side_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length  # the last tile ends on the border
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (tile - gaps >= overlap * tile - 1e-9).all()
    if len(starts) > 2:  # the fewest tiles: one less would leave less than the overlap
        assert (length - tile) / (len(starts) - 2) > tile * (1 - overlap)


def test_short_side_gets_one_padded_tile_and_windows_are_row_major():
    assert tile_starts(100, 128, 0.25) == [0]
    windows = tile_windows(300, 100, 128, 0.25)
    assert windows.tolist() == [[0, 0, 128, 128], [86, 0, 214, 128], [172, 0, 300, 128]]
    windows = tile_windows(200, 200, 128, 0.4)
    assert windows[:, :2].tolist() == [[0, 0], [72, 0], [0, 72], [72, 72]]


@pytest.mark.parametrize("tile,side", [(128, 128), (256, 128), (96, 128)])
def test_boxes_map_back_to_image_pixels(tile, side):
    # Objects well inside single tiles (and one in a padded corner of a small image).
    truth = [(10, 20, 40, 44), (300, 190, 330, 230)]
    model = BlobFinder(side)
    for box in truth:
        image = blob_image(460, 350, [box])
        det = predict_tiled(model, [image], TileSpec(tile, 0.25))[0]
        assert len(det.scores) == 1
        np.testing.assert_allclose(det.boxes[0], box, atol=1.5 * tile / side)
    small = blob_image(90, 70, [(60, 40, 80, 66)])
    det = predict_tiled(model, [small], TileSpec(tile, 0.25))[0]
    np.testing.assert_allclose(det.boxes[0], (60, 40, 80, 66), atol=1.5 * tile / side)


@pytest.mark.parametrize("merge", ["nms", "ios"])
def test_object_straddling_tiles_gives_one_whole_detection(merge):
    # Tiles of 128 at overlap 0.25 on 400 px: starts 0, 91, 181, 272. The object spans the edge
    # x=128 of the first tile and lies in the second; vertically it crosses y=128 as well.
    box = (110, 115, 135, 140)
    model = BlobFinder(128)
    det = predict_tiled(model, [blob_image(400, 400, [box])], TileSpec(128, 0.25, merge=merge))[0]
    assert model.hits == 4  # four tiles saw a part of it (three of them cut)
    assert len(det.scores) == 1
    np.testing.assert_allclose(det.boxes[0], box, atol=1e-4)


def test_truncated_pieces_do_not_survive_next_to_a_whole_view():
    # Two objects, one in an overlap band, one at a far corner; two images in one batch (their
    # grids differ), plus the full-image pass.
    a = blob_image(400, 300, [(85, 30, 110, 60), (350, 250, 380, 290)])
    b = blob_image(250, 250, [(120, 120, 140, 140)])
    det = predict_tiled(BlobFinder(128), [a, b], TileSpec(128, 0.3, batch_size=5))
    # The blob finder sees all blobs of an input as one box, so the full-image pass would merge
    # both objects of image a: check without it first.
    assert sorted(map(tuple, det[0].boxes.round().astype(int).tolist())) == [(85, 30, 110, 60), (350, 250, 380, 290)]
    assert det[1].boxes.round().astype(int).tolist() == [[120, 120, 140, 140]]


def test_every_forward_has_the_same_shape():
    model = BlobFinder(128)
    predict_tiled(model, [blob_image(500, 260, []), blob_image(130, 140, [])], TileSpec(128, 0.2, batch_size=4,
                                                                                        full_image=True))
    # 5x3 tiles + 1 full pass, then 2x2 + 1: 21 inputs in chunks of exactly 4.
    assert model.input_shapes == [(4, 3, 128, 128)] * 6


def test_object_larger_than_the_overlap_needs_ios_merging():
    # Tiles start at 0, 91, 181, 272: no tile holds x 100-225 whole, so the cut rule cannot pick
    # a whole view; NMS keeps two pieces, IoS merging joins them into the whole box.
    box = (100, 20, 225, 50)
    image = blob_image(400, 128, [box])
    pieces = predict_tiled(BlobFinder(128), [image], TileSpec(128, 0.25, merge="nms"))[0]
    merged = predict_tiled(BlobFinder(128), [image], TileSpec(128, 0.25, merge="ios"))[0]
    assert len(pieces.scores) >= 2
    assert len(merged.scores) == 1
    np.testing.assert_allclose(merged.boxes[0], box, atol=1e-4)


def test_merge_ios_is_greedy_per_class_by_intersection_over_smaller():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 20, 10], [0, 0, 4, 4], [50, 50, 60, 60], [0, 0, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 1, 1, 1, 2])
    out_boxes, out_scores, out_labels = merge_ios(boxes, scores, labels, 0.5)
    # Box 0 absorbs 1 (IoS 0.5) and 2 (inside it); box 3 is apart; class 2 is never merged with 1.
    assert out_boxes.tolist() == [[0, 0, 20, 10], [50, 50, 60, 60], [0, 0, 10, 10]]
    assert out_scores.tolist() == [0.9, 0.6, 0.5] and out_labels.tolist() == [1, 1, 2]


def test_real_model_runs_tiled_and_bad_specs_are_named():
    from mdssd.model import build_model

    model = build_model("mdssd_tiny", num_classes=3).eval()
    image = (np.random.default_rng(0).random((300, 200, 3)) * 255).astype(np.uint8)
    det = predict_tiled(model, [image], TileSpec(128, 0.25, full_image=True, max_detections=50))[0]
    assert len(det.scores) <= 50 and (np.diff(det.scores) <= 0).all()
    assert (det.boxes >= 0).all() and (det.boxes[:, 2] <= 200).all() and (det.boxes[:, 3] <= 300).all()
    for bad, message in [(dict(size=4), "tile size"), (dict(size=128, overlap=1.0), "overlap"),
                         (dict(size=128, merge="wbf"), "merge")]:
        with pytest.raises(ValueError, match=message):
            TileSpec(**bad)
