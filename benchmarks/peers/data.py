"""The data kinds of ``python -m benchmarks.peers``, each written once to disk in both formats.

Every kind becomes a COCO folder (``coco/train2017``, ``coco/val2017``, ``coco/annotations``),
which mdssd trains on (``--dataset coco``) and every contestant is scored on, and a YOLO folder
(``yolo/data.yaml``) written from that COCO folder by :func:`mdssd.data.export.export_yolo`
(the image files are copied, not re-encoded: both sides see the same pixels).

* ``synthetic``: the built-in synthetic set exactly as ``python -m mdssd.train`` builds it by
  default (2000 train / 200 val images of 128-192 px, signs of 6-128 px), written as PNG.
* ``large``: the large-image synthetic set of :mod:`benchmarks.large_images` (64 train / 24 val
  images of 1024-2048 px, every object 6-32 px). mdssd trains with ``--crop`` and detects with
  ``--tile``; YOLO is trained the way SAHI's users do, on SAHI ``slice_coco`` slices of the train
  images (``yolo/`` holds the slices), and detects with SAHI's ``get_sliced_prediction``.
* ``trees``: DeepForest's NEON aerial image as 128 px tiles (:mod:`benchmarks.deepforest_tiles`).
* ``nuclei``: stardist's fluorescence nuclei image as 128 px tiles (:mod:`benchmarks.nuclei_tiles`).

The real images come from wheels that ``benchmarks/peers_venv.sh`` downloads from the package
registry and unpacks under ``--wheels`` (nothing is fetched here).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

KINDS = ("synthetic", "large", "trees", "nuclei")


@dataclass(frozen=True)
class Prepared:
    """A data kind on disk: ``coco`` root (mdssd's ``--data-root``), the YOLO ``data.yaml``, the
    count of YOLO training images (slices for ``large``), whether inference is sliced, the
    training flags mdssd uses on it and the flags of its scored (sliced) detection."""

    kind: str
    coco: Path
    yolo_yaml: Path
    yolo_train_images: int
    sliced: bool
    mdssd_flags: tuple[str, ...]
    detect_flags: tuple[str, ...] = ()

    @property
    def val_images(self) -> Path:
        return self.coco / "val2017"


def _done(folder: Path) -> bool:
    return (folder / ".complete").is_file()


def _mark_done(folder: Path, info: dict) -> None:
    (folder / ".complete").write_text(json.dumps(info))


def _fresh(folder: Path) -> Path:
    """An empty folder (a half-written one from an interrupted run is removed first)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _synthetic(coco: Path, wheels: Path) -> None:
    from mdssd.config import TrainConfig
    from mdssd.data import SyntheticSigns
    from mdssd.data.export import export_coco

    cfg = TrainConfig()
    for split, count, coco_split in (("train", cfg.synthetic_train_images, "train2017"),
                                     ("val", cfg.synthetic_val_images, "val2017")):
        source = SyntheticSigns(split, count, seed=cfg.data_seed, min_size=cfg.synthetic_min_size,
                                max_size=cfg.synthetic_max_size)
        export_coco(source, coco, split=coco_split, image_format="png")


def _large(coco: Path, wheels: Path) -> None:
    from benchmarks.large_images import export

    export(coco)


def _trees(coco: Path, wheels: Path) -> None:
    from benchmarks.deepforest_tiles import write_tiles

    write_tiles(_wheel_folder(wheels, "deepforest/data"), coco)


def _nuclei(coco: Path, wheels: Path) -> None:
    from benchmarks.nuclei_tiles import write_tiles

    write_tiles(_wheel_folder(wheels, "stardist/data/images"), coco)


def _wheel_folder(wheels: Path, inside: str) -> Path:
    folder = wheels / inside
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: run benchmarks/peers_venv.sh (it unpacks the data "
                                f"that the deepforest and stardist wheels ship) or pass --wheels")
    return folder


WRITERS: dict[str, Callable[[Path, Path], None]] = {
    "synthetic": _synthetic, "large": _large, "trees": _trees, "nuclei": _nuclei}


def prepare(kind: str, work: Path, wheels: Path, slice_with_sahi: Callable[[Path, Path], Path] | None = None,
            tile: int = 128, tile_overlap: float = 0.25) -> Prepared:
    """Write ``work/<kind>/{coco,yolo}`` once (reused when complete). ``slice_with_sahi(coco,
    out) -> sliced COCO root`` is needed for ``large`` (it runs SAHI in the peers venv)."""
    from mdssd.data import build_source
    from mdssd.data.export import export_yolo

    if kind not in WRITERS:
        raise ValueError(f"unknown data kind {kind!r}; choose from {KINDS}")
    root = work / kind
    coco, yolo = root / "coco", root / "yolo"
    if not _done(coco):
        WRITERS[kind](_fresh(coco), wheels)
        _mark_done(coco, {"kind": kind})
    sliced = kind == "large"
    if not _done(yolo):
        _fresh(yolo)
        train_root = coco
        if sliced:
            if slice_with_sahi is None:
                raise ValueError("the large-image kind needs SAHI's slicer for YOLO's training data")
            train_root = slice_with_sahi(coco, root / "sahi-slices")
        export_yolo(build_source("coco", train_root, "train"), yolo, "train")
        export_yolo(build_source("coco", coco, "val"), yolo, "val")
        count = len(build_source("coco", train_root, "train"))
        _mark_done(yolo, {"train_images": count})
    count = json.loads((yolo / ".complete").read_text())["train_images"]
    # --tile is not a training flag: given to mdssd.train it would only make the final evaluation
    # (which always runs, and whose score is not used here) sliced, minutes on the large images.
    flags = ("--crop",) if sliced else ()
    detect = ("--tile", str(tile), "--tile-overlap", str(tile_overlap)) if sliced else ()
    return Prepared(kind, coco, yolo / "data.yaml", count, sliced, flags, detect)
