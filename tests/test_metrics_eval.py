"""VOC mAP on a hand-checked case, the COCO path against pycocotools run directly, and
``evaluate`` / ``python -m mdssd.eval`` / ``python -m mdssd.detect`` end to end."""

import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mdssd.data import Annotation, COCODetection, SyntheticSigns
from mdssd.eval import evaluate, score
from mdssd.metrics import Detections, coco_eval, voc_ap, voc_eval


def _hand_case():
    # Class 1 "a": image 0 has A1 [0,0,10,10] and a difficult A2 [20,20,30,30]; image 1 has A3.
    # Class 2 "b": only a difficult object -> no positives -> AP NaN, left out of mAP.
    # Class 3 "c": one object in image 1, never detected -> AP 0.
    annotations = [
        Annotation(0, "0.png", 100, 100, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=[False, True]),
        Annotation(1, "1.png", 100, 100, [[0, 0, 10, 10], [40, 40, 50, 50], [70, 70, 80, 80]], [1, 2, 3],
                   difficult=[False, True, False]),
    ]
    detections = [
        Detections([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1]),
        Detections([[50, 50, 60, 60], [0, 0, 10, 11], [40, 40, 50, 50]], [0.6, 0.5, 0.95], [1, 1, 2]),
    ]
    return annotations, detections


def test_voc_map_hand_checked():
    annotations, detections = _hand_case()
    result = voc_eval(annotations, detections, ("a", "b", "c"))
    # Class a, ranked: 0.9 TP (A1, IoU 1); 0.8 FP (duplicate of A1); 0.7 ignored (difficult A2);
    # 0.6 FP (no overlap); 0.5 TP (A3, IoU 100/110 = 0.91). npos = 2.
    # cum TP 1,1,1,2 / cum FP 0,1,2,2 (the ignored row repeats a point) ->
    # recall .5,.5,.5,1; precision 1,.5,1/3,.5.
    # 11-point: t = 0..0.5 (6 points) -> max precision 1; t = 0.6..1 (5 points) -> 0.5:
    #   (6*1 + 5*0.5)/11 = 8.5/11 = 0.772727...
    # Area: envelope 1 on recall (0,.5], 0.5 on (.5,1] -> 0.5*1 + 0.5*0.5 = 0.75.
    assert result.ap_11[0] == pytest.approx(8.5 / 11)
    assert result.ap_area[0] == pytest.approx(0.75)
    assert np.isnan(result.ap_11[1]) and np.isnan(result.ap_area[1])  # only difficult ground truth
    assert result.ap_11[2] == 0 and result.ap_area[2] == 0
    assert result.map_11 == pytest.approx((8.5 / 11 + 0) / 2)
    assert result.map_area == pytest.approx(0.375)
    assert result.num_gt.tolist() == [2, 0, 1] and result.num_det.tolist() == [5, 1, 0]


def test_voc_ap_interpolations():
    # Perfect ranking: AP 1 both ways; a single TP at recall 0.5 after one FP: precision 0.5 up
    # to recall .5 -> 11-point 6*0.5/11, area 0.25.
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), True) == pytest.approx(1.0)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), False) == pytest.approx(1.0)
    assert voc_ap(np.array([0.0, 0.5]), np.array([0.0, 0.5]), True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.0, 0.5]), np.array([0.0, 0.5]), False) == pytest.approx(0.25)


def _coco_fixture(tmp_path):
    from PIL import Image

    images = [{"id": 11, "file_name": "a.png", "width": 200, "height": 150},
              {"id": 12, "file_name": "b.png", "width": 120, "height": 100}]
    for img in images:
        Image.new("RGB", (img["width"], img["height"])).save(tmp_path / img["file_name"])
    anns = [
        {"id": 1, "image_id": 11, "category_id": 5, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 9, "bbox": [100, 50, 80, 90], "area": 7200, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 5, "bbox": [50, 0, 100, 40], "area": 4000, "iscrowd": 1},
        {"id": 4, "image_id": 12, "category_id": 5, "bbox": [5, 5, 8, 6], "area": 48, "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 9, "bbox": [30, 20, 60, 70], "area": 4200, "iscrowd": 0},
    ]
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 5, "name": "sign"}, {"id": 9, "name": "car"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    # Detections as labels (1 = category 5, 2 = category 9) in pixel xyxy.
    detections = [
        Detections([[11, 10, 31, 41], [60, 5, 140, 38], [102, 52, 178, 140], [0, 0, 30, 30]],
                   [0.9, 0.8, 0.7, 0.3], [1, 1, 2, 2]),
        Detections([[5, 5, 13, 12], [32, 22, 88, 85], [6, 5, 13, 10]], [0.6, 0.85, 0.2], [1, 2, 1]),
    ]
    return path, detections


def test_coco_path_matches_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path, detections = _coco_fixture(tmp_path)
    source = COCODetection(path, tmp_path)
    ours = score(source, detections, coco=True).coco

    # pycocotools directly, with the results written by hand in its format.
    results = []
    for image_id, det in zip((11, 12), detections):
        for (x1, y1, x2, y2), s, label in zip(det.boxes, det.scores, det.labels):
            results.append({"image_id": image_id, "category_id": (5, 9)[label - 1],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    np.testing.assert_allclose(list(ours.stats.values()), evaluator.stats, rtol=0, atol=1e-12)
    assert 0 < ours.stats["AP"] < 1  # a non-trivial case (crowd, a small object, misses)

    # The same metrics from our annotations (no file): our ground-truth conversion is faithful.
    annotations = [source.annotation(i) for i in range(len(source))]
    rebuilt = coco_eval(annotations, detections, source.class_names, category_ids=None)
    np.testing.assert_allclose(list(rebuilt.stats.values()), evaluator.stats, atol=1e-12)


class _FakeModel(torch.nn.Module):
    """The CONTRACTS.md model API; "detects" exactly the given normalised boxes per image."""

    def __init__(self, per_image, num_classes, image_size=64):
        super().__init__()
        self.config = SimpleNamespace(num_classes=num_classes, image_size=image_size)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.per_image, self.calls = per_image, 0

    def forward(self, images):
        b = images.shape[0]
        return torch.zeros(b, 1, 4), torch.zeros(b, 1, self.config.num_classes)

    def postprocess(self, loc, conf):
        b, k = loc.shape[0], 8
        boxes, scores = torch.zeros(b, k, 4), torch.zeros(b, k)
        labels, counts = torch.full((b, k), -1, dtype=torch.long), torch.zeros(b, dtype=torch.long)
        for i in range(b):
            bx, lb = self.per_image[self.calls]
            self.calls += 1
            n = len(lb)
            boxes[i, :n], scores[i, :n], labels[i, :n], counts[i] = bx, 0.9, lb, n
        return boxes, scores, labels, counts


def test_evaluate_maps_boxes_back_to_pixels():
    source = SyntheticSigns("val", num_images=3, seed=0, min_size=64, max_size=128)
    per_image = []
    for i in range(3):
        ann = source.annotation(i)
        scale = np.array([ann.width, ann.height] * 2)
        per_image.append((torch.tensor(ann.boxes / scale, dtype=torch.float32), torch.tensor(ann.labels)))
    report = evaluate(_FakeModel(per_image, len(source.class_names) + 1), source, batch_size=2, coco=True)
    assert report.voc.map_11 == pytest.approx(1.0) and report.voc.map_area == pytest.approx(1.0)
    assert report.coco.stats["AP"] == pytest.approx(1.0)
    assert "VOC07 mAP (11-point) 100.0" in report.table
    with pytest.raises(ValueError, match="classes"):
        evaluate(_FakeModel(per_image, 5), source)


def test_eval_and_detect_cli_on_a_real_checkpoint(tmp_path, capsys):
    from mdssd import detect, eval as eval_cli
    from mdssd.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("mdssd_tiny", num_classes=len(SyntheticSigns.class_names) + 1, backend="ext")
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(model, ckpt)
    assert eval_cli.main(["--weights", str(ckpt), "--data", "synthetic", "--num-images", "2", "--device", "cpu",
                          "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "speed_limit" in out and "VOC07 mAP" in out and "AP_small" in out
    assert "voc07_map_11" in json.loads((tmp_path / "m.json").read_text())

    from PIL import Image
    images = tmp_path / "in"
    images.mkdir()
    source = SyntheticSigns("val", num_images=1, min_size=100, max_size=140)
    Image.fromarray(source.image(0)).save(images / "x.png")
    assert detect.main([str(images), "--weights", str(ckpt), "--out", str(tmp_path / "out"), "--device", "cpu",
                        "--threshold", "0.0"]) == 0
    drawn = Image.open(tmp_path / "out" / "x.png")
    assert drawn.size == (source.annotation(0).width, source.annotation(0).height)
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert all(1 <= r["category_id"] <= 10 and r["bbox"][2] >= 0 for r in results)


@pytest.mark.slow
@pytest.mark.parametrize("tiled", [False, True])
def test_eval_cli_compile_runs_every_batch_through_the_compiled_runner(tmp_path, monkeypatch, capsys, tiled):
    """``eval --compile MODE``: the batches go through mdssd.cuda_graphs' compiled runner, in one
    padded shape, and score as the eager run does. Traced with aot_eager here (the same kernels as
    eager, so the metrics are equal; inductor would take minutes)."""
    from mdssd import cuda_graphs, eval as eval_cli
    from mdssd.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("mdssd_tiny", num_classes=len(SyntheticSigns.class_names) + 1, backend="ext")
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(model, ckpt)
    modes, shapes = [], []
    real = cuda_graphs.compiled_runner

    def traced(model, mode=None, **kwargs):
        modes.append(mode)
        runner = real(model, mode=None, backend="aot_eager")

        def run(images):
            shapes.append(tuple(images.shape))
            return runner(images)
        return run

    monkeypatch.setattr(cuda_graphs, "compiled_runner", traced)
    common = ["--weights", str(ckpt), "--data", "synthetic", "--num-images", "3", "--device", "cpu", "--no-coco",
              "--batch-size", "2"] + (["--tile", "512", "--tile-batch", "4"] if tiled else [])
    assert eval_cli.main([*common, "--json", str(tmp_path / "eager.json")]) == 0
    assert modes == [] and shapes == []
    assert eval_cli.main([*common, "--compile", "max-autotune-no-cudagraphs", "--json",
                          str(tmp_path / "compiled.json")]) == 0
    assert modes == ["max-autotune-no-cudagraphs"]
    batch = 4 if tiled else 2
    assert shapes and {s[0] for s in shapes} == {batch}  # the last batch padded to the same shape
    if not tiled:
        assert len(shapes) == 2  # 3 images: 2 + (1 padded to 2)
    eager = json.loads((tmp_path / "eager.json").read_text())
    compiled = json.loads((tmp_path / "compiled.json").read_text())
    assert compiled == eager
    eval_cli.main([*common, "--compile"])
    assert modes[-1] is None  # "default": torch.compile's default mode
    capsys.readouterr()


def test_eval_cli_runner_flags_refuse_what_cannot_run(tmp_path, capsys):
    from mdssd import eval as eval_cli
    from mdssd.model import build_model, save_checkpoint

    model = build_model("mdssd_tiny", num_classes=len(SyntheticSigns.class_names) + 1, backend="ext")
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(model, ckpt)
    common = ["--weights", str(ckpt), "--data", "synthetic", "--num-images", "2", "--device", "cpu", "--no-coco"]
    assert eval_cli.main([*common, "--cuda-graphs"]) == 2
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([*common, "--cuda-graphs", "--compile"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
