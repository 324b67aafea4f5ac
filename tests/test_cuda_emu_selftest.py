"""The CUDA emulator's own checks can fail: csrc/cuda_emu/selftest/broken_kernels.cu holds
deliberately broken kernels; each is built with the emulator (as setup.py builds csrc/cuda/*.cu
for MDSSD_CUDA_EMU=1) and run in its own process, and the diagnostic it must trigger is checked:
its text, the file:line marked `// expect(<case>): <text>` in the source, and a non-zero launch error.
Schedule seeds must turn a missing barrier and an inter-block race into wrong results.

Needs g++ and the CUDA toolkit's headers (not a GPU); skipped without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "csrc" / "cuda_emu"
SOURCE = EMU / "selftest" / "broken_kernels.cu"
SHOWN = "csrc/cuda_emu/selftest/broken_kernels.cu"  # the path diagnostics name (#line)


def cuda_headers() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home) / "include"
    return None


pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or cuda_headers() is None,
    reason="needs g++ and the CUDA toolkit's headers (CUDA_HOME)",
)


def expected() -> dict[str, tuple[str, int]]:
    """`// expect(<case>): <text>` markers: case -> (text of its diagnostic, line number)."""
    found = {}
    for number, line in enumerate(SOURCE.read_text().splitlines(), start=1):
        match = re.search(r"// expect\((\w+)\): (.+)$", line)
        if match:
            found[match.group(1)] = (match.group(2).strip(), number)
    return found


def build(tmp: Path, extra: list[str]) -> Path:
    sys.path.insert(0, str(EMU))
    try:
        from prep import prepare
    finally:
        sys.path.pop(0)
    cpp = tmp / "broken_kernels_emu.cpp"
    prepare(str(SOURCE), str(cpp), SHOWN)
    exe = tmp / "broken_kernels"
    cmd = ["g++", "-std=c++17", "-O1", "-g", "-ffp-contract=off", "-I", str(EMU / "include"),
           "-I", str(ROOT / "csrc"), "-I", str(cuda_headers()), *extra, str(cpp), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module")
def broken_kernels(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("cuda_emu_selftest"), [])


def run_case(exe: Path, case: str, seed: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MDSSD_CUDA_EMU_SEED": str(seed), **(env or {})}
    environment.pop("MDSSD_CUDA_EMU_ABORT", None)
    return subprocess.run([str(exe), case], capture_output=True, text=True, env=environment, timeout=60)


# Every case with a diagnostic (its text and line come from the `// expect(<case>):` marker).
DIAGNOSTICS = [
    "divergent_sync", "early_exit_then_sync", "two_barriers", "shfl_with_exited_lanes",
    "warp_op_vs_barrier", "lanes_in_different_warp_ops", "shfl_from_lane_outside_mask",
    "misaligned_ldg", "too_many_threads", "too_much_dynamic_shared", "dynamic_shared_overrun",
    "cub_temp_too_small",
]


def test_every_marker_has_a_case():
    assert sorted(expected()) == sorted(DIAGNOSTICS), "markers and cases differ"


@pytest.mark.parametrize("case", DIAGNOSTICS)
def test_diagnostic_names_file_and_line(broken_kernels, case):
    text, line = expected()[case]
    result = run_case(broken_kernels, case)
    assert result.returncode == 0, result.stderr
    where = f"cuda_emu: {SHOWN}:{line}: "
    reports = [r for r in result.stderr.splitlines() if r.startswith("cuda_emu: ")]
    assert reports and reports[0].startswith(where) and text in reports[0], result.stderr
    # The launch fails (what the glue turns into an exception) and says where.
    match = re.search(r"reports=(\d+) error=(\d+) \((.*)\)", result.stdout)
    assert match and int(match.group(1)) >= 1 and int(match.group(2)) != 0, result.stdout
    assert f"{SHOWN}:{line}" in match.group(3)


def wrong(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    return int(re.search(r"wrong=(\d+)", result.stdout).group(1))


@pytest.mark.parametrize("case", ["missing_sync", "reads_previous_block"])
def test_seeds_expose_missing_ordering(broken_kernels, case):
    # In order (seed 0) the unordered reads happen to see the right values, as they might on a
    # GPU; shuffled fibers (missing barrier) or blocks (inter-block race) must change the result.
    assert wrong(run_case(broken_kernels, case, seed=0)) == 0
    assert any(wrong(run_case(broken_kernels, case, seed=s)) > 0 for s in (1, 2, 3))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_correct_kernel_runs_clean(broken_kernels, seed):
    result = run_case(broken_kernels, "good_reduce", seed=seed)
    assert wrong(result) == 0
    assert "reports=0 error=0" in result.stdout and "cuda_emu:" not in result.stderr


def test_asan_names_the_line_of_a_dynamic_shared_overrun(tmp_path):
    # The buffer has exactly the launched size, so AddressSanitizer names the overrunning access
    # itself (the canary of the plain build only names the launch).
    exe = build(tmp_path, ["-fsanitize=address", "-fno-omit-frame-pointer"])
    result = run_case(exe, "dynamic_shared_overrun", env={"ASAN_OPTIONS": "detect_leaks=0"})
    line = next(n for n, text in enumerate(SOURCE.read_text().splitlines(), 1)
                if "launched with 31 ints" in text)
    assert result.returncode != 0
    # (the canary after the buffer is poisoned: ASan calls the access use-after-poison)
    assert re.search("heap-buffer-overflow|use-after-poison", result.stderr), result.stderr
    first_frame = re.search(r"#0 0x[0-9a-f]+ in .*", result.stderr)
    assert first_frame and f"broken_kernels.cu:{line}" in first_frame.group(0), result.stderr
