"""``python -m mdssd.data.bench``: loader throughput of the synthetic set with SSD augmentation
(``--crop``: native-resolution crops; ``--coco DIR``: images decoded from a COCO folder's
``train2017`` split instead of generated).

Prints images/s of one worker (items produced in the calling process, i.e. exactly a worker's
job: generate, augment, collate) and, with ``--workers N``, of a ``DataLoader`` with N workers.
In-process it also prints images per CPU-second (``time.process_time``), which stays meaningful
on a machine shared with other jobs, where wall-clock rates only measure the contention.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from .dataset import build_dataset, collate


def bench(num_images: int = 200, image_size: int = 300, workers: int = 0, batch_size: int = 32,
          min_size: int = 300, max_size: int = 1024, crop: bool = False,
          coco: str | None = None) -> tuple[float, float | None]:
    """``(images per wall second, images per CPU second or None)`` of the training pipeline over
    ``num_images`` items, after a warm-up batch. CPU time is measured in-process only."""
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    if coco:
        dataset = build_dataset("coco", coco, split="train", image_size=image_size)
        if len(dataset) < num_images + batch_size:
            raise ValueError(f"{coco}: {len(dataset)} train images, the run needs {num_images + batch_size}")
    else:
        dataset = build_dataset("synthetic", split="train", image_size=image_size,
                                num_images=num_images + batch_size, min_size=min_size, max_size=max_size)
    if crop:
        from .crop import NativeCrop

        dataset.transform = NativeCrop(size=image_size)
    if workers == 0:
        collate([dataset[i] for i in range(batch_size)])  # warm-up: background photos decoded once
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(batch_size, num_images + batch_size, batch_size):
            collate([dataset[i] for i in range(first, min(first + batch_size, num_images + batch_size))])
        return num_images / (time.perf_counter() - start), num_images / (time.process_time() - cpu)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    iterator = iter(loader)
    next(iterator)  # warm-up
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch["images"])
    return seen / (time.perf_counter() - start), None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mdssd.data.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=300, help="output side S")
    parser.add_argument("--workers", type=int, default=0, help="0: measure one worker in-process")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-size", type=int, default=300, help="synthetic image side range")
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--crop", action="store_true", help="native-resolution crops instead of SSD augmentation")
    parser.add_argument("--coco", default=None, metavar="DIR", help="decode DIR's train2017 images instead")
    args = parser.parse_args(argv)
    rate, cpu_rate = bench(args.images, args.size, args.workers, args.batch_size, args.min_size, args.max_size,
                           args.crop, args.coco)
    what = "1 worker (in-process)" if args.workers == 0 else f"DataLoader, {args.workers} workers"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = f", {cpu_rate:.1f} images per CPU-second" if cpu_rate else ""
    data = f"COCO {args.coco}" if args.coco else f"synthetic {args.min_size}-{args.max_size} px"
    transform = "native crop" if args.crop else "SSD augmentation"
    print(f"{data} -> {transform} -> {args.size}x{args.size}, "
          f"batch {args.batch_size}, {what}: {rate:.1f} images/s{cpu} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f})")


if __name__ == "__main__":
    main()
