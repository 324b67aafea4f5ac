"""Training on a user's own few large images (YOLO folder): crop windows per image and epoch, a set
smaller than a batch cycled, bit-exact resume, and setup errors as one line."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mdssd import checkpoint as ckpt
from mdssd import config as cfgmod
from mdssd import train as train_mod
from tests.test_train import losses

FLAGS = ["--batch-size", "8", "--workers", "0", "--log-interval", "1", "--eval-interval", "0",
         "--checkpoint-interval", "0", "--warmup-steps", "2", "--lr", "0.01", "--no-progress",
         "--no-tensorboard", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def yolo_folder(root, train=3, val=2, size=256, seed=0):
    """A YOLO data set of ``size`` px images with 5-10 discs of 8-20 px (two classes)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = Image.fromarray((rng.random((size, size, 3)) * 60).astype(np.uint8))
            draw, lines = ImageDraw.Draw(image), []
            for _ in range(int(rng.integers(5, 11))):
                side, cls = rng.uniform(8, 20), int(rng.integers(2))
                x, y = rng.uniform(0, size - side, 2)
                draw.ellipse((x, y, x + side, y + side), fill=((220, 60, 60), (60, 60, 220))[cls])
                lines.append(f"{cls} {(x + side / 2) / size:.6f} {(y + side / 2) / size:.6f} "
                             f"{side / size:.6f} {side / size:.6f}")
            image.save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [red, blue]\n")
    return root


def test_crop_windows_default_from_image_and_input_size(tmp_path):
    root = yolo_folder(tmp_path / "d", train=3, val=1)
    cfg = cfgmod.from_args(["--dataset", "yolo", "--data-root", str(root), "--crop", *FLAGS])
    assert train_mod.build_data(cfg, 128).train.repeats == 4  # 256^2 / 128^2
    assert len(train_mod.build_data(cfg, 64).train) == 3 * 16
    cfg = cfgmod.from_args(["--dataset", "yolo", "--data-root", str(root), "--crop", "--crop-windows", "5", *FLAGS])
    assert len(train_mod.build_data(cfg, 128).train) == 15
    with pytest.raises(cfgmod.ConfigError, match="crop_windows"):
        cfgmod.from_args(["--crop", "--crop-windows", "0"])
    with pytest.raises(cfgmod.ConfigError, match="'crop_windows' is set but 'crop' is off"):
        cfgmod.from_args(["--crop-windows", "2"])


@pytest.mark.slow
def test_few_large_yolo_images_train_with_crop_and_resume_bitwise(tmp_path):
    root = yolo_folder(tmp_path / "d")

    def run(out, *extra):
        argv = ["--dataset", "yolo", "--data-root", str(root), "--crop", "--tile", "128", *FLAGS,
                "--out-dir", str(out), "--steps", "4", *extra]
        return train_mod.train(cfgmod.from_args(argv))

    full = run(tmp_path / "full")
    assert full["steps"] == 4 and full["metrics"]["images"] == 2  # full-image (tiled) mAP on val
    run(tmp_path / "split", "--stop-at-step", "3")
    run(tmp_path / "split", "--resume", "auto")
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    a, b = ckpt.load(tmp_path / "full" / "last.pt"), ckpt.load(tmp_path / "split" / "last.pt")
    assert all(torch.equal(value, b["model"][key]) for key, value in a["model"].items())
    with pytest.raises(RuntimeError, match="crop_windows"):
        run(tmp_path / "split", "--resume", "auto", "--crop-windows", "2", "--steps", "6")


def test_a_set_smaller_than_a_batch_is_cycled(tmp_path, capsys):
    root = yolo_folder(tmp_path / "d", train=3, val=1, size=64)
    summary = train_mod.train(cfgmod.from_args(["--dataset", "yolo", "--data-root", str(root), *FLAGS,
                                                "--out-dir", str(tmp_path / "out"), "--steps", "2"]))
    assert summary["steps"] == 2
    assert "(3 train x 3 passes / 1 val images), 2 steps of batch 8 (1 per epoch)" in capsys.readouterr().out


def test_setup_errors_are_one_line(tmp_path, capsys):
    root = yolo_folder(tmp_path / "d", train=2, val=1, size=64)
    with open(root / "labels" / "train" / "1.txt", "a") as handle:
        handle.write("7 0.5 0.5 0.1 0.1\n")
    argv = ["--dataset", "yolo", "--data-root", str(root), *FLAGS, "--out-dir", str(tmp_path / "out")]
    assert train_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mdssd.train: {root / 'labels' / 'train' / '1.txt'}: line ")
    assert "class id 7 is not one of names' ids 0..1" in err
    assert train_mod.main([*argv[:4], "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_eval_and_detect_take_a_yolo_folder(tmp_path, capsys):
    import json

    from mdssd import detect, eval as eval_cli
    from mdssd.model import build_model, save_checkpoint

    root = yolo_folder(tmp_path / "d", train=1, val=2, size=96)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(build_model("mdssd_tiny", num_classes=3), ckpt)  # a checkpoint without class names
    assert eval_cli.main(["--weights", str(ckpt), "--dataset", "yolo", "--data-root", str(root), "--device", "cpu",
                          "--tile", "64", "--no-coco"]) == 0
    assert "yolo val: 2 images" in capsys.readouterr().out
    assert detect.main([str(root / "images" / "val"), "--weights", str(ckpt), "--out", str(tmp_path / "out"),
                        "--device", "cpu", "--classes", str(root / "data.yaml")]) == 0
    names = json.loads((tmp_path / "out" / "categories.json").read_text())
    assert names == [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    (root / "labels" / "val" / "0.txt").write_text("0 0.5 0.5 0.1\n")
    assert eval_cli.main(["--weights", str(ckpt), "--dataset", "yolo", "--data-root", str(root), "--device",
                          "cpu"]) == 2
    assert "0.txt: line 1: 4 values" in capsys.readouterr().err
