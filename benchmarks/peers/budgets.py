"""The three budgets on which YOLO meets mdssd (each relative to the first mdssd contestant, same seed).

* ``images``: as many training images seen as mdssd's ``steps x batch`` (whole epochs, rounded;
  below one epoch, one epoch over a random subset of that many images, drawn per seed);
* ``time``: as many as YOLO trains in the time mdssd's training loop took (set-up and final
  evaluation excluded on both sides: their own logs time the loop), on the same machine
  and threads (YOLO's images/s from its ``images`` run of the same seed);
* ``gflops``: the ``images`` schedule at the input size (a multiple of 32) whose GFLOPs per
  image are closest to mdssd's (ties: the larger size).
"""

from __future__ import annotations

BUDGETS = ("images", "time", "gflops")
CANDIDATE_SIZES = tuple(range(64, 641, 32))


def schedule_for(images: float, train_images: int) -> tuple[int, int]:
    """``(epochs, images per epoch)`` closest to ``images`` training images seen: whole epochs of
    the whole set, or one epoch of a subset when less than one epoch is wanted."""
    if train_images < 1:
        raise ValueError("the YOLO training set is empty")
    if images < train_images:
        return 1, max(1, round(images))
    return round(images / train_images), train_images


def equal_time_schedule(mdssd_wall_s: float, yolo_images: int, yolo_wall_s: float,
                        train_images: int) -> tuple[int, int]:
    """The schedule YOLO fits in ``mdssd_wall_s`` at the throughput it showed (images / wall s)."""
    if yolo_wall_s <= 0:
        raise ValueError("the YOLO run took no time: cannot derive its throughput")
    return schedule_for(mdssd_wall_s * yolo_images / yolo_wall_s, train_images)


def equal_gflops_size(target_gflops: float, gflops_by_size: dict[int, float]) -> int:
    """The candidate input size whose GFLOPs are closest to ``target_gflops`` (ties: larger)."""
    if not gflops_by_size or not all(v > 0 for v in gflops_by_size.values()):
        raise ValueError(f"need positive GFLOPs per size, got {gflops_by_size}")
    return min(gflops_by_size, key=lambda size: (abs(gflops_by_size[size] - target_gflops), -size))
