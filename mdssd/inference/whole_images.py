"""Whole images resized to the model's input (no tiles): the path for images about the input's
size. Large images with small objects go through the tiles of :mod:`.stream` instead."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.transforms import Resize
from ..metrics import Detections
from .step4_batches import run_fixed_batches

__all__ = ["run_batch", "predict", "predict_images"]


def _to_detections(boxes, scores, labels, counts, sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """Fixed-shape model output -> per-image :class:`Detections` in pixels of each image."""
    out = []
    boxes, scores, labels, counts = (t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                                     for t in (boxes, scores, labels, counts))
    for b, (width, height) in enumerate(sizes):
        n = int(counts[b])
        scale = np.array([width, height, width, height], dtype=np.float64)
        out.append(Detections(boxes[b, :n].astype(np.float64) * scale, scores[b, :n], labels[b, :n]))
    return out


@torch.no_grad()
def run_batch(model, images: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    loc, conf = model(images)
    return _to_detections(*model.postprocess(loc, conf), sizes)


class _Images(torch.utils.data.Dataset):
    """Source images resized for the model, with their index (no augmentation)."""

    def __init__(self, source, size: int):
        self.source, self.resize = source, Resize(size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, _, _ = self.resize(self.source.image(index), np.zeros((0, 4)), np.zeros(0, np.int64))
        return image, index


@torch.no_grad()
def predict(model, source, batch_size: int = 8, num_workers: int = 0,
            device: str | torch.device | None = None, runner=None) -> list[Detections]:
    """Detections for every image of ``source`` (a :class:`~mdssd.data.base.DetectionSource`),
    in pixel coordinates of the stored images, in source order. ``runner`` (a compiled or
    CUDA-graph runner, :mod:`mdssd.cuda_graphs`): runs every batch in place of the model, each
    of exactly ``batch_size`` images (the last one padded), so that it sees one shape."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = torch.utils.data.DataLoader(_Images(source, model.config.image_size), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False)
    model.eval()
    detections = []
    for images, indices in loader:
        annotations = [source.annotation(int(i)) for i in indices]
        sizes = [(a.width, a.height) for a in annotations]
        if runner is None:
            detections += run_batch(model, images.to(device), sizes)
        else:
            detections += _to_detections(*run_fixed_batches(runner, images.to(device), batch_size), sizes)
    return detections


def predict_images(model, images: Iterable[np.ndarray], batch_size: int = 8) -> list[Detections]:
    """Detections for in-memory ``uint8 [H,W,3]`` images (pixel coordinates of each)."""
    device = next(model.parameters()).device
    resize = Resize(model.config.image_size)
    out, batch, sizes = [], [], []
    for image in list(images) + [None]:
        if image is not None:
            batch.append(resize(image, np.zeros((0, 4)), np.zeros(0, np.int64))[0])
            sizes.append((image.shape[1], image.shape[0]))
        if batch and (image is None or len(batch) == batch_size):
            out += run_batch(model, torch.stack(batch).to(device), sizes)
            batch, sizes = [], []
    return out
