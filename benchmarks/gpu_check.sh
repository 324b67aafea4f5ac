#!/usr/bin/env bash
# The one command to run first whenever a GPU machine is lent (see ../shared/reference/GPU.md and
# docs/cuda_emu.md): builds mdssd for sm_90, runs the CUDA tests, compute-sanitizer memcheck,
# racecheck and synccheck on small cases (benchmarks/sanitize_cases.py), then the kernel and
# end-to-end benchmarks against torchvision. Logs and results go to $OUT; a short summary is
# printed last. Every step has a time cap and the whole run a budget (default 510 s, under the
# 9 minutes one device call may take; GPU_CHECK_BUDGET_S to change it): a step that would not
# fit is skipped and says so.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# What comes back (8 files at most): summary.txt, check.log (every step's output, in order) and
# the benchmark results cuda-<gpu>.md/.json and cuda-<gpu>-end-to-end.md/.json. Copy the results
# into benchmarks/results/ and commit them with the device's name.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/check.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-510}"
export TORCH_CUDA_ARCH_LIST="9.0" MDSSD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
export MDSSD_CUDA_TEST_DEVICE=cuda OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
START=$SECONDS
FAILED=0

# step NAME CAP_SECONDS COMMAND...: runs COMMAND under a timeout of min(CAP, what is left of the
# budget less 15 s for the summary), appends its output to check.log, records the outcome.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 15))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    printf '%-22s %-8s %s\n' "$name" "SKIPPED" "no time left in the ${BUDGET}s budget" >>"$SUMMARY"
    return 1
  fi
  local t0=$SECONDS rc
  printf '\n==== %s (cap %ss): %s\n' "$name" "$limit" "$*" >>"$LOG"
  timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  local took=$((SECONDS - t0)) status=ok
  if ((rc == 124 || rc == 137)); then
    status=TIMEOUT
  elif ((rc != 0)); then
    status="FAIL($rc)"
  fi
  [[ $status == ok ]] || FAILED=1
  printf '%-22s %-8s %4ss  %s\n' "$name" "$status" "$took" "$(grep -E "$STEP_GREP" "$LOG" | tail -1 | cut -c1-110)" >>"$SUMMARY"
  [[ $status == ok ]]
}

STEP_GREP='^$'
step "device" 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $PY -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; \
  command -v nvcc compute-sanitizer"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

STEP_GREP='Successfully|error|sm_90'
if step "build (sm_90)" 200 bash -c "$PY -m pip install --no-build-isolation --no-deps -e . && \
    cuobjdump --list-elf mdssd/_C*.so | grep -c sm_90 | sed 's/^/sm_90 cubins: /'"; then
  built=1
else
  built=0
fi

if ((built)); then
  # The CUDA tests (slow ones included: they are the sizes the emulator cannot run) and, where
  # present, the property-based fuzz tests, on the GPU.
  tests=(tests/test_cuda_*.py)
  for f in tests/test_fuzz_*.py; do [[ -e $f ]] && tests+=("$f"); done
  STEP_GREP='passed|failed|error'
  step "cuda tests" 150 "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}"

  # Sanitizers on small cases; --error-exitcode makes any finding fail the step.
  STEP_GREP='ERROR SUMMARY|all cases ok|Error'
  for tool in memcheck racecheck synccheck; do
    step "sanitizer $tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 30 \
      "$PY" -m benchmarks.sanitize_cases
  done

  STEP_GREP='wrote|DIFF|Error'
  step "bench kernels" 120 "$PY" -m benchmarks.kernels --device cuda --out "$OUT"
  step "bench end-to-end" 120 "$PY" -m benchmarks.end_to_end --device cuda --out "$OUT"
fi

{
  echo
  echo "gpu_check on ${GPU:-unknown GPU}: $((SECONDS - START)) s of a ${BUDGET} s budget; logs in $LOG"
  cat "$SUMMARY"
  ls "$OUT"/cuda-*.md 2>/dev/null | sed 's/^/result: /'
} | tee "$OUT/summary.final.txt"
mv "$OUT/summary.final.txt" "$SUMMARY"
exit $FAILED
