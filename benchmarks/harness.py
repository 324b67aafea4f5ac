"""Timing, device description, bandwidth/matmul ceilings and result files shared by the suites.

Timing rules (see README.md): on CUDA, device events around every call after a warm-up, calls
queued back to back (no host sync between them, so launch latency overlaps the previous call the
way it does in a real program), the median over many calls, and inputs rotated among several
distinct sets so that a workload smaller than the L2 cache is not timed out of the cache. On CPU,
``time.perf_counter`` around every call, the median of the repeats, the thread count stated.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

# ---------------------------------------------------------------------------------------------
# Device description


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def _last_level_cache_bytes() -> int:
    """Largest CPU cache in bytes (sysfs), 32 MiB when it cannot be read."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in base.glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            best = max(best, int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)])
    return best or 32 << 20


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: on a shared machine they say how much the cores were busy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclasses.dataclass
class DeviceInfo:
    device: str  # "cpu" or "cuda"
    name: str
    threads: int
    torch_version: str
    cuda_version: str | None
    driver: str | None
    cache_bytes: int
    date: str
    load_average: list[float] | None
    python: str

    @property
    def file_stem(self) -> str:
        if self.device == "cpu":
            return f"cpu-{slug(self.name)}-{self.threads}threads"
        return f"cuda-{slug(self.name)}"

    @staticmethod
    def collect(device: str) -> "DeviceInfo":
        if device == "cuda":
            props = torch.cuda.get_device_properties(0)
            name = props.name
            # L2 size decides how many input sets are rotated; H100 has 50 MiB.
            cache = int(getattr(props, "L2_cache_size", 50 << 20))
            driver = _nvidia_driver()
        else:
            name, cache, driver = cpu_model(), _last_level_cache_bytes(), None
        return DeviceInfo(
            device=device,
            name=name,
            threads=torch.get_num_threads(),
            torch_version=torch.__version__,
            cuda_version=torch.version.cuda,
            driver=driver,
            cache_bytes=cache,
            date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            load_average=load_average(),
            python=platform.python_version(),
        )

    def header_lines(self) -> list[str]:
        lines = [f"device: {self.device} ({self.name})"]
        if self.device == "cuda":
            lines.append(f"CUDA {self.cuda_version}, driver {self.driver or 'unknown'}")
        lines.append(f"torch {self.torch_version}, Python {self.python}, torch threads {self.threads}")
        lines.append(f"date {self.date}" + (f", load average (1/5/15 min) at the start {self.load_average}" if self.load_average else ""))
        return lines


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Allocator

# glibc's malloc hands large blocks (above a threshold that it adapts at run time) back to the OS
# when they are freed, and trims the top of the heap: a contestant that allocates large
# temporaries every call (torchvision's box_iou builds [N,M,2] tensors, the reference too) then
# page-faults them in again on every call, and whether it does so depends on the allocator's
# history in the process. Measured here (2-core EPYC, 1 thread, 31,232 x 50): torchvision's
# box_iou took 75 ms per call for 300 calls in one process and 20 ms with the thresholds pinned;
# the reference went from 60 to 22 ms after ~120 calls in one process and never in another.
# Pinning both thresholds makes freed memory stay in the heap, so every contestant is timed in
# the steady state a long-running program reaches, whatever ran before it.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
PINNED_BYTES = 1 << 30


def pin_allocator() -> str:
    """Pins glibc malloc's mmap and trim thresholds at 1 GiB (see above); returns what was done,
    for the results header."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, PINNED_BYTES) == 1 and libc.mallopt(M_TRIM_THRESHOLD, PINNED_BYTES) == 1
    except (OSError, AttributeError):
        ok = False
    if ok:
        return ("glibc malloc: mmap and trim thresholds pinned at 1 GiB (mallopt), so large temporaries "
                "are reused, not page-faulted in again on every call")
    return "glibc malloc thresholds not pinned (no glibc mallopt here): allocator state may vary between contestants"


# ---------------------------------------------------------------------------------------------
# Timing

# Warm-up on CPU: at least this many calls, unless that takes longer than WARMUP_S. Cheap ops
# (under 5 ms a call) thus get >= 200 warm-up calls, which the issue measured torchvision's
# box_iou to need; dearer ones get WARMUP_S of calls (at least `warmup`).
WARMUP_CALLS, WARMUP_S = 200, 1.0


@dataclasses.dataclass
class Timing:
    median_ms: float
    repeats: int
    min_ms: float
    max_ms: float


def rotation_count(bytes_per_set: int, cache_bytes: int, memory_cap_bytes: int) -> int:
    """How many distinct input sets to cycle: enough that the sets together are 3x the cache
    (so each call finds its inputs evicted), at most 8, and no more than the memory cap allows."""
    if bytes_per_set <= 0:
        return 1
    wanted = math.ceil(3 * cache_bytes / bytes_per_set)
    allowed = max(1, memory_cap_bytes // bytes_per_set)
    return int(max(1, min(8, wanted, allowed)))


def measure(
    fn: Callable[[Any], Any],
    input_sets: Sequence[Any],
    device: str,
    *,
    budget_s: float,
    min_repeats: int,
    max_repeats: int,
    warmup: int = 2,
    estimate_s: float | None = None,
    extended_warmup: bool = False,
) -> Timing:
    """Median time of ``fn(input_sets[i % len(input_sets)])``.

    The warm-up calls (first-call costs: allocator growth, lazy init, autotuning) also estimate
    the time per call, from which the repeat count is chosen to fit ``budget_s`` within
    ``[min_repeats, max_repeats]``. ``warmup=0`` is allowed when the caller has already run
    ``fn`` and passes the time of that call as ``estimate_s``. ``extended_warmup`` (CPU): keep
    warming up to WARMUP_CALLS calls or WARMUP_S seconds, whichever comes first.
    """
    n_sets = len(input_sets)
    if warmup <= 0 and estimate_s is None:
        warmup = 1
    start = time.perf_counter()
    calls = 0
    while calls < warmup or (extended_warmup and device == "cpu" and calls < WARMUP_CALLS
                             and time.perf_counter() - start < WARMUP_S):
        t0 = time.perf_counter()
        fn(input_sets[calls % n_sets])
        synchronize(device)
        last = time.perf_counter() - t0
        calls += 1
    # The time per call from the last warm-up call (the steady state), else the caller's estimate.
    estimate = last if calls > 0 else estimate_s
    repeats = int(max(min_repeats, min(max_repeats, budget_s / max(estimate, 1e-9))))

    if device == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            starts[i].record()
            fn(input_sets[i % n_sets])
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(input_sets[i % n_sets])
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), repeats, min(times), max(times))


# ---------------------------------------------------------------------------------------------
# Ceilings measured in the same run


def copy_bandwidth(device: str, cache_bytes: int) -> float:
    """Bytes per second of a large device-to-device (or RAM-to-RAM) copy, counting bytes read
    plus bytes written. The buffer is 8x the cache (at least 256 MiB, 1 GiB on CUDA) so the copy
    streams from memory."""
    nbytes = max(256 << 20, 8 * cache_bytes)
    if device == "cuda":
        nbytes = max(nbytes, 1 << 30)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = measure(lambda _: dst.copy_(src), [None], device, budget_s=1.0, min_repeats=5, max_repeats=50)
    return 2 * nbytes / (timing.median_ms * 1e-3)


def matmul_rate(device: str, dtype: torch.dtype, size: int = 8192) -> float:
    """FLOP/s of a large square matrix product through torch (cuBLAS / the CPU BLAS)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = measure(lambda _: a @ b, [None], device, budget_s=1.0, min_repeats=3, max_repeats=50)
    return 2 * size**3 / (timing.median_ms * 1e-3)


# ---------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Cell:
    """One contestant's result for one workload.

    status: "ok" (timed at the workload's size), "scaled" (timed on part of the batch and scaled
    linearly, because the contestant loops over images in Python; ``measured_on`` says which
    part), "skipped" (``reason`` says why), or "error" (``reason`` holds the exception).
    """

    status: str
    median_ms: float | None = None
    repeats: int | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    scale: float = 1.0
    measured_on: str | None = None
    compile_s: float | None = None
    reason: str | None = None

    @property
    def effective_ms(self) -> float | None:
        if self.median_ms is None:
            return None
        return self.median_ms * self.scale

    @staticmethod
    def from_timing(t: Timing, **kw) -> "Cell":
        return Cell(status=kw.pop("status", "ok"), median_ms=t.median_ms, repeats=t.repeats,
                    min_ms=t.min_ms, max_ms=t.max_ms, **kw)


@dataclasses.dataclass
class Row:
    op: str
    workload: str
    params: dict
    floor_bytes: int | None
    cells: dict[str, Cell]
    check: str = ""


CONTESTANTS = ("ours", "reference", "compiled", "torchvision")
HEADERS = {"ours": "ours", "reference": "reference", "compiled": "compiled ref", "torchvision": "torchvision"}


def fmt_time(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 1000:
        return f"{ms / 1e3:.2f} s"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms * 1e3:.1f} us"


def _cell_text(cell: Cell | None, footnotes: list[str]) -> str:
    if cell is None:
        return "-"
    if cell.status == "ok":
        return fmt_time(cell.median_ms)
    note = (cell.reason if cell.status in ("skipped", "error")
            else f"timed on {cell.measured_on}, scaled x{cell.scale:g} (the contestant loops over images)")
    if note not in footnotes:
        footnotes.append(note)
    mark = f"[{footnotes.index(note) + 1}]"
    if cell.status == "scaled":
        return f"~{fmt_time(cell.effective_ms)} {mark}"
    return f"{cell.status} {mark}"


def derived(row: Row, bandwidth: float | None) -> dict:
    """Ratios other/ours (above 1: ours is faster), the bandwidth floor and ours' share of it."""
    ours = row.cells.get("ours")
    ours_ms = ours.effective_ms if ours and ours.status == "ok" else None
    out: dict[str, float | None] = {}
    for other in ("reference", "compiled", "torchvision"):
        cell = row.cells.get(other)
        other_ms = cell.effective_ms if cell and cell.status in ("ok", "scaled") else None
        out[f"{other}_over_ours"] = other_ms / ours_ms if other_ms and ours_ms else None
    floor_ms = row.floor_bytes / bandwidth * 1e3 if row.floor_bytes and bandwidth else None
    out["floor_ms"] = floor_ms
    out["pct_of_floor"] = 100 * floor_ms / ours_ms if floor_ms and ours_ms else None
    return out


def table_rows(rows: list[Row], bandwidth: float | None) -> tuple[list[str], list[list[str]], list[str]]:
    headers = ["op", "workload"] + [HEADERS[c] for c in CONTESTANTS] + [
        "ref/ours", "compiled/ours", "tv/ours", "floor", "% floor", "check"]
    body, footnotes = [], []
    for row in rows:
        d = derived(row, bandwidth)
        line = [row.op, row.workload] + [_cell_text(row.cells.get(c), footnotes) for c in CONTESTANTS]
        for other in ("reference", "compiled", "torchvision"):
            ratio = d[f"{other}_over_ours"]
            line.append(f"{ratio:.1f}x" if ratio else "-")
        line.append(fmt_time(d["floor_ms"]))
        line.append(f"{d['pct_of_floor']:.0f}%" if d["pct_of_floor"] else "-")
        line.append(row.check or "-")
        body.append(line)
    return headers, body, footnotes


def render_text(headers: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(out)


def render_markdown(headers: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(out)


def write_results(
    out_dir: Path,
    stem: str,
    title: str,
    info: DeviceInfo,
    preamble: list[str],
    markdown_body: str,
    payload: dict,
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md = [f"# {title}", ""] + [f"- {line}" for line in info.header_lines() + preamble] + ["", markdown_body, ""]
    md_path.write_text("\n".join(md))
    json_path.write_text(json.dumps({"device": dataclasses.asdict(info), **payload}, indent=1, default=_json_default) + "\n")
    return md_path, json_path


def _json_default(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
