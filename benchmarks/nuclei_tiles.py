"""Real microscopy: the annotated nuclei image that the stardist wheel ships, as a COCO folder of tiles.

``python -m benchmarks.nuclei_tiles --src STARDIST_IMAGES --out DIR [--tile 128] [--val-fraction 0.25]``

``STARDIST_IMAGES`` is the ``stardist/data/images`` folder of the stardist wheel (``pip download
--no-deps stardist==0.9.2``, unzip ``stardist/data/images/*2d.tif``; nothing is fetched at run
time; ``benchmarks/peers_venv.sh`` does both). ``img2d.tif`` is a 512x512 16-bit fluorescence
image of the Data Science Bowl 2018 nuclei, ``mask2d.tif`` its instance labels (125 nuclei of
15-37 px, median 29 px). Each label's bounding box is an object of class ``nucleus``. The image
is scaled to 8 bits by its 0.2-99.8 percentiles (the usual normalisation for fluorescence) and
written as grey RGB, cut into tiles as :mod:`benchmarks.deepforest_tiles` cuts the tree crowns
(top rows train, bottom rows val; nuclei cut by a tile edge keep 60% or become ``iscrowd``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.deepforest_tiles import write_tile_splits


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """``xyxy`` boxes (continuous pixel edges) of every non-zero label of an instance mask."""
    boxes = []
    for label in np.unique(mask):
        if label == 0:
            continue
        ys, xs = np.nonzero(mask == label)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def to_uint8(image: np.ndarray, low: float = 0.2, high: float = 99.8) -> np.ndarray:
    """Percentile-normalised 8-bit grey RGB of a single-channel image."""
    lo, hi = np.percentile(image, [low, high])
    scaled = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    grey = np.round(scaled * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def write_tiles(src: Path, out: Path, tile: int = 128, val_fraction: float = 0.25) -> dict[str, int]:
    import tifffile
    from PIL import Image

    image_path, mask_path = src / "img2d.tif", src / "mask2d.tif"
    if not image_path.is_file() or not mask_path.is_file():
        raise FileNotFoundError(f"{src}: no img2d.tif/mask2d.tif (expected the stardist wheel's stardist/data/images)")
    image, mask = tifffile.imread(image_path), tifffile.imread(mask_path)
    if image.ndim != 2 or image.shape != mask.shape:
        raise ValueError(f"{src}: expected one 2-D image and a mask of its shape, got {image.shape} and {mask.shape}")
    return write_tile_splits(Image.fromarray(to_uint8(image)), mask_boxes(mask), "nuclei2d", "nucleus", out, tile,
                             val_fraction)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nuclei_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="the stardist/data/images folder (img2d.tif, mask2d.tif)")
    parser.add_argument("--out", required=True, help="COCO folder to write")
    parser.add_argument("--tile", type=int, default=128, help="tile side in pixels (default: 128)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="bottom part of the image for val (default: 0.25)")
    args = parser.parse_args(argv)
    counts = write_tiles(Path(args.src), Path(args.out), args.tile, args.val_fraction)
    print(f"benchmarks.nuclei_tiles: wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
