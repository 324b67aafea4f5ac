"""Sources -> the ``(image, target)`` items and batches of docs/CONTRACTS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import DetectionSource
from .transforms import Resize, SSDAugment

__all__ = ["DetectionDataset", "collate", "build_source", "build_dataset", "DATASETS"]

DATASETS = ("synthetic", "voc", "coco", "tt100k", "yolo", "visdrone", "dota")


class DetectionDataset(Dataset):
    """A source with a transform; item ``i`` of epoch ``e`` is a function of ``(seed, e, i)``.

    The augmentation's random generator is seeded from ``(seed, epoch, index)`` rather than from
    the worker's state, so an item does not depend on the number of workers or on which worker
    loads it, and resuming at a step reproduces the same batches. Call :meth:`set_epoch` before
    each epoch (as with ``DistributedSampler``); with ``persistent_workers=True`` the workers keep
    the epoch they were started with, so use non-persistent workers to see the change.

    Args:
        source: a :class:`~mdssd.data.base.DetectionSource`.
        transform: :class:`~mdssd.data.transforms.SSDAugment` (training) or
            :class:`~mdssd.data.transforms.Resize` (evaluation), or any callable
            ``(image, boxes, labels, rng) -> (tensor, boxes01, labels)``; a transform that also
            returns ignore regions (:class:`~mdssd.data.crop.NativeCrop`: ``..., ignore01``) puts
            them in the target as ``"ignore"``.
        keep_difficult: train on VOC ``difficult`` objects too (crowd regions never are targets).
        repeats: items per source image and epoch (crop training: several windows of each large
            image; a set smaller than a batch: cycled). Item ``i`` is image ``i % len(source)``
            with its own augmentation seed, so ``repeats=1`` is the plain set.
    """

    def __init__(self, source: DetectionSource, transform: Callable, seed: int = 0, keep_difficult: bool = False,
                 repeats: int = 1):
        if int(repeats) < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.source = source
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.keep_difficult = keep_difficult
        self.repeats = int(repeats)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.source.class_names)

    @property
    def num_classes(self) -> int:
        """Including background (label 0)."""
        return len(self.source.class_names) + 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def __getitem__(self, index: int):
        return self.get(index, np.random.default_rng([self.seed, self.epoch, int(index)]))

    def get(self, index: int, rng: np.random.Generator):
        """Item ``index`` with augmentation randomness from ``rng`` (for callers that seed items
        themselves, e.g. training's ``(seed, stream, epoch, index)`` scheme)."""
        index = int(index) % len(self.source) if self.repeats > 1 else int(index)
        annotation = self.source.annotation(index)
        boxes, labels = annotation.trainable(self.keep_difficult)
        regions = ignore_regions(annotation)
        if len(regions) and getattr(self.transform, "takes_ignore", False):
            # Crowd regions (COCO iscrowd, VisDrone's ignored regions and "others"): the loss
            # neither trains them as objects nor as background.
            out = self.transform(self.source.image(index), boxes, labels, rng, ignore=regions)
        else:
            out = self.transform(self.source.image(index), boxes, labels, rng)
        target = {"boxes": out[1], "labels": out[2], "image_id": int(annotation.image_id)}
        if len(out) > 3:
            target["ignore"] = out[3]
        return out[0], target


def ignore_regions(annotation) -> np.ndarray:
    """The distinct crowd boxes of an annotation (pixels ``[m,4]``): one region whatever its
    class (a class-agnostic region is stored once per class, see :mod:`mdssd.data.visdrone`)."""
    crowd = annotation.boxes[annotation.crowd]
    return np.unique(crowd, axis=0) if len(crowd) > 1 else crowd


def collate(items: Sequence[tuple[torch.Tensor, dict]]) -> dict[str, torch.Tensor]:
    """Pad a batch: ``images [B,3,S,S]``, ``gt_boxes [B,G,4]``, ``gt_labels [B,G]`` (0 = padding),
    ``gt_counts [B]``, ``image_ids [B]``; ``G`` is the largest box count, at least 1. When the
    targets carry ignore regions (``"ignore"``, from crop training) also ``ignore_boxes [B,I,4]``
    and ``ignore_counts [B]`` (``I`` at least 1)."""
    images = torch.stack([image for image, _ in items])
    counts = torch.tensor([len(target["labels"]) for _, target in items], dtype=torch.int64)
    g = max(1, int(counts.max())) if len(items) else 1
    gt_boxes = torch.zeros(len(items), g, 4, dtype=torch.float32)
    gt_labels = torch.zeros(len(items), g, dtype=torch.int64)
    for b, (_, target) in enumerate(items):
        n = len(target["labels"])
        gt_boxes[b, :n] = target["boxes"]
        gt_labels[b, :n] = target["labels"]
    image_ids = torch.tensor([int(target["image_id"]) for _, target in items], dtype=torch.int64)
    batch = {"images": images, "gt_boxes": gt_boxes, "gt_labels": gt_labels, "gt_counts": counts,
             "image_ids": image_ids}
    if any("ignore" in target for _, target in items):
        ignores = [target.get("ignore", torch.zeros(0, 4)) for _, target in items]
        ignore_counts = torch.tensor([len(b) for b in ignores], dtype=torch.int64)
        ignore_boxes = torch.zeros(len(items), max(1, int(ignore_counts.max())), 4, dtype=torch.float32)
        for b, boxes in enumerate(ignores):
            ignore_boxes[b, :len(boxes)] = boxes
        batch.update(ignore_boxes=ignore_boxes, ignore_counts=ignore_counts)
    return batch


def build_source(name: str, root: str | Path | None = None, split: str = "train", **options) -> DetectionSource:
    """A data source by name.

    ``split`` is ``"train"`` or ``"val"`` and maps to each data set's usual pair (VOC:
    ``trainval``/``test``; COCO: ``train2017``/``val2017``; TT100K: ``train``/``test``); any
    other value is passed through as that data set's own split name. ``options`` go to the
    reader (e.g. ``num_images``, ``seed``, ``min_size`` for the synthetic set; ``class_names`` for
    TT100K; ``image_set`` for VOC).

    Expected layouts under ``root``: VOC ``VOC2007/{Annotations,JPEGImages,ImageSets}`` (root is
    the ``VOC2007`` folder); COCO ``annotations/instances_<split>.json`` and ``<split>/`` images;
    TT100K ``annotations.json`` and ``train/``, ``test/`` images; YOLO a ``data.yaml`` (root is
    the file or its folder; splits ``train``/``val``/``test``, :mod:`mdssd.data.yolo`); VisDrone
    and DOTA one folder per split (:mod:`mdssd.data.visdrone`, :mod:`mdssd.data.dota`).
    """
    if name == "synthetic":
        from .synthetic import SyntheticSigns

        return SyntheticSigns(split=split, **options)
    if root is None:
        raise ValueError(f"data set {name!r} needs a root folder (--data-root)")
    root = Path(root)
    if name == "voc":
        from .voc import VOCDetection

        image_set = options.pop("image_set", {"train": "trainval", "val": "test"}.get(split, split))
        return VOCDetection(root, image_set=image_set, **options)
    if name == "coco":
        from .coco import COCODetection

        split = {"train": "train2017", "val": "val2017"}.get(split, split)
        return COCODetection(root / "annotations" / f"instances_{split}.json", root / split, **options)
    if name == "tt100k":
        from .tt100k import TT100KDetection

        return TT100KDetection(root, split={"train": "train", "val": "test"}.get(split, split), **options)
    if name == "yolo":
        from .yolo import YOLODetection

        return YOLODetection(root, split, **options)
    if name == "visdrone":
        from .visdrone import VisDroneDetection

        return VisDroneDetection(root, split, **options)
    if name == "dota":
        from .dota import DOTADetection

        return DOTADetection(root, split, **options)
    raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}")


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", image_size: int = 300,
                  train: bool | None = None, augment_seed: int = 0, keep_difficult: bool = False,
                  augment: dict | None = None, **options) -> DetectionDataset:
    """Source + transform in one call: SSD augmentation when ``train`` (default: ``split ==
    "train"``), plain resize otherwise. ``augment`` overrides :class:`SSDAugment` fields;
    ``augment_seed`` seeds the augmentation, while ``options`` (the synthetic set's own ``seed``
    among them) go to :func:`build_source`."""
    source = build_source(name, root, split, **options)
    train = split == "train" if train is None else train
    transform = SSDAugment(size=image_size, **(augment or {})) if train else Resize(size=image_size)
    return DetectionDataset(source, transform, seed=augment_seed, keep_difficult=keep_difficult)
