"""Run logs of ``mdssd.train``: CSV files (always), TensorBoard (when installed) and a progress bar
(tqdm when installed, else a line every log interval). Only rank 0 creates one; other ranks get a
:class:`NullLog`.

CSV values are written with ``repr`` so a float read back is bit-identical to the one logged
(the resume test compares losses exactly).
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

TRAIN_FIELDS = ("step", "epoch", "lr", "loss", "loc", "conf", "images_per_s", "time_s")


class RunLog:
    def __init__(self, out_dir: Path, total_steps: int, start_step: int, progress: bool,
                 tensorboard: bool):
        self.out_dir = out_dir
        self.t0 = time.time()
        # Appending keeps the rows of the interrupted run; rows past the resume point (logged
        # after the checkpoint was written) are dropped so each step appears once.
        self._train = _CsvAppender(out_dir / "train_log.csv", TRAIN_FIELDS, start_step)
        self._eval: _CsvAppender | None = None
        self._eval_start = start_step
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                self.tb = None
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step or None)
        self.bar = _progress(total_steps, start_step, progress)

    def train_row(self, row: dict[str, Any]) -> None:
        row = {**row, "time_s": round(time.time() - self.t0, 3)}
        self._train.write(row)
        if self.tb is not None:
            for key in ("lr", "loss", "loc", "conf", "images_per_s"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])
        self.bar.postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")

    def eval_row(self, step: int, metrics: dict[str, Any]) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._eval is None:
            self._eval = _CsvAppender(self.out_dir / "eval_log.csv", ("step", *scalars), self._eval_start)
        self._eval.write({"step": step, **scalars})
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"val/{key}", value, step)
        self.message(f"step {step}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in scalars.items()))

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def message(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()


class NullLog:
    """What ranks other than 0 log: nothing."""

    def train_row(self, row):
        pass

    def eval_row(self, step, metrics):
        pass

    def advance(self, steps=1):
        pass

    def message(self, text):
        pass

    def close(self):
        pass


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class _CsvAppender:
    def __init__(self, path: Path, fields: tuple, start_step: int):
        self.path = path
        self.fields = tuple(fields)
        rows: list[dict[str, str]] = []
        if start_step > 0 and path.exists():
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                if tuple(reader.fieldnames or ()) == self.fields:
                    rows = [r for r in reader if int(r["step"]) <= start_step]
        # Rewritten (not appended) so a resumed run never duplicates steps of the lost tail.
        self.handle = path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.fields)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.handle.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()
                              if k in self.fields})
        self.handle.flush()


def read_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a log written here, numbers parsed back (exactly: they were written with repr)."""
    with Path(path).open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


class _Progress:
    """tqdm when available; otherwise a plain line every ``every`` steps on stderr."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.tqdm = None
        self.total = total
        self.n = initial
        self._postfix: dict[str, str] = {}
        self._last_print = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        interactive = sys.stderr.isatty()
        # Without a terminal (nohup, CI) a bar redrawn 10 times a second floods the log.
        self.tqdm = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         mininterval=0.5 if interactive else 30.0, file=sys.stderr)

    def update(self, steps: int) -> None:
        self.n += steps
        if self.tqdm is not None:
            self.tqdm.update(steps)
        elif self.enabled and (time.time() - self._last_print > 30.0 or self.n == self.total):
            self._last_print = time.time()
            extra = " ".join(f"{k}={v}" for k, v in self._postfix.items())
            print(f"step {self.n}/{self.total} {extra}", file=sys.stderr, flush=True)

    def postfix(self, **values: str) -> None:
        self._postfix = values
        if self.tqdm is not None:
            self.tqdm.set_postfix(values, refresh=False)

    def write(self, text: str) -> None:
        if self.tqdm is not None:
            self.tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def _progress(total: int, initial: int, enabled: bool) -> _Progress:
    return _Progress(total, initial, enabled)
