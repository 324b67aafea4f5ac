"""Atomic checkpoint files and the RNG state that makes a resumed run continue exactly.

A checkpoint is written to a temporary file in the destination's directory, flushed and fsynced,
then moved over the destination with ``os.replace`` (atomic on POSIX within one file system) and
the directory is fsynced so the rename itself survives a power cut. A crash at any point leaves
either the previous file or the new one, never a truncated mix.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # fdopen first: it owns (and closes) the descriptor whatever fails below.
        with os.fdopen(fd, "wb") as handle:
            # mkstemp creates the file 0600; give the checkpoint the mode a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_name, 0o666 & ~umask)
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave nothing half-written behind; the destination still holds the previous checkpoint.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some file systems (and non-POSIX platforms) refuse to open a
    # directory, in which case the rename is as durable as the platform allows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save` (trusted files only: it holds RNG states
    and config objects, so ``weights_only=False``)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict:
    """Global RNG states of python, numpy, torch (CPU) and every CUDA device."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        # A run resumed on fewer devices restores those it has.
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)
