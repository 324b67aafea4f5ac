"""Data sets, augmentation and batching for mdssd (docs/CONTRACTS.md, "Data -> training").

Training builds its data like this::

    from mdssd.data import build_dataset, collate
    train_set = build_dataset("synthetic", split="train", image_size=300, augment_seed=0)
    val_set = build_dataset("synthetic", split="val", image_size=300)       # resize only
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True, num_workers=2,
                                         collate_fn=collate, drop_last=True)
    train_set.set_epoch(epoch)   # before each epoch: the augmentation is seeded by (seed, epoch, index)

``train_set.num_classes`` (with background) sizes the model; ``val_set.source`` is what
:func:`mdssd.eval.evaluate` takes.
"""

from .base import Annotation, AnnotationError, DetectionSource
from .coco import COCODetection
from .dataset import DATASETS, DetectionDataset, build_dataset, build_source, collate
from .synthetic import SIGN_CLASSES, SyntheticSigns
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Resize, SSDAugment
from .tt100k import TT100KDetection
from .voc import VOC_CLASSES, VOCDetection

__all__ = [
    "Annotation", "AnnotationError", "DetectionSource", "COCODetection", "DATASETS", "DetectionDataset",
    "build_dataset", "build_source", "collate", "coco_ground_truth", "export_coco", "export_yolo", "SIGN_CLASSES",
    "SyntheticSigns", "IMAGENET_MEAN", "IMAGENET_STD", "Resize", "SSDAugment", "TT100KDetection",
    "VOC_CLASSES", "VOCDetection",
]


def __getattr__(name: str):
    # The exporters load on first use, so that ``python -m mdssd.data.export`` runs the module
    # once (as __main__) rather than after a second copy imported by this package.
    if name in ("coco_ground_truth", "export_coco", "export_yolo"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
