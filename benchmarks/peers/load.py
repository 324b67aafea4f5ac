"""The machine's load while a contestant trains (stdlib only: the YOLO runner imports it too)."""

from __future__ import annotations

import threading
from pathlib import Path


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages as /proc/loadavg prints them ("?" off Linux)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class LoadSampler:
    """The 1-minute load average, sampled every ``every`` seconds while a contestant trains.

    The equal-time budget and the images/s column divide by wall time, which other processes on
    the machine stretch: each run reports the load its training saw, so that two runs under very
    different loads are not compared unawares (a 1-thread run alone reads about 1-2 here: itself
    plus its data worker)."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            value = loadavg().split()[0]
            if value != "?":
                self.samples.append(float(value))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | None]:
        """``train_load`` (mean of the samples) and ``train_load_max``; None without samples."""
        if not self.samples:
            return {"train_load": None, "train_load_max": None}
        return {"train_load": sum(self.samples) / len(self.samples), "train_load_max": max(self.samples)}
