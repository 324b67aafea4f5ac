#!/usr/bin/env bash
# The one command to run first whenever a GPU machine is lent (see ../shared/reference/GPU.md and
# docs/cuda_emu.md): builds mdssd for sm_90, runs the CUDA tests, compute-sanitizer memcheck,
# racecheck and synccheck on small cases (benchmarks/sanitize_cases.py), a short real training
# run (mdssd300, bf16 autocast, channels_last, batch 32, synthetic data: images/s), the same under
# torchrun, a resume from its checkpoint, tiled detection of a large image with the trained
# weights, compiled and CUDA-graph inference (batch 1 latency, batch 32 throughput, against
# torchvision's ssd300_vgg16), then the kernel and end-to-end benchmarks against torchvision.
# Logs and results go to $OUT; a short summary is printed last. Every step has a time cap and the whole run a budget (default 510 s, under the
# 9 minutes one device call may take; GPU_CHECK_BUDGET_S to change it): a step that would not
# fit is skipped and says so.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#   DRY_RUN=1 bash benchmarks/gpu_check.sh     # on a CPU: the same steps at toy sizes (mdssd_tiny,
#                                              # batch 2, a few steps), the build and GPU-only
#                                              # steps skipped, to check the script itself
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
DRY_RUN="${DRY_RUN:-0}"
export TORCH_CUDA_ARCH_LIST="9.0" MDSSD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
export MDSSD_CUDA_TEST_DEVICE=cuda OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# Training runs and their checkpoints stay out of $OUT (only 8 small files come back).
WORK="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/mdssd-gpu-check}"
rm -rf "$WORK" && mkdir -p "$WORK"
if ((DRY_RUN)); then
  PRESET=mdssd_tiny BATCH=2 STEPS=4 RESUME_STEPS=6 DDP_STEPS=2 DEVICE=cpu SIZE=128 BIG=600
  TRAIN_IMAGES=16 VAL_IMAGES=4 WORKERS=0 AMP=()  # CPU: autocast off (bf16 convolutions are emulated)
  unset MDSSD_CUDA_TEST_DEVICE
else
  PRESET=mdssd300 BATCH=32 STEPS=40 RESUME_STEPS=50 DDP_STEPS=20 DEVICE=cuda SIZE=300 BIG=6000
  TRAIN_IMAGES=1600 VAL_IMAGES=64 WORKERS=8 AMP=(--amp bf16)
fi
TRAIN_ARGS=(--preset "$PRESET" "${AMP[@]}" --channels-last --batch-size "$BATCH" --device "$DEVICE"
  --dataset synthetic --synthetic-train-images "$TRAIN_IMAGES" --synthetic-val-images "$VAL_IMAGES"
  --workers "$WORKERS" --warmup-steps 10 --eval-interval 0 --checkpoint-interval 0 --log-interval 10
  --no-progress --no-tensorboard)
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
if ((DRY_RUN)); then
  step "device" 90 "$PY" -c 'import torch, sys; print("DRY RUN on CPU:", sys.version.split()[0], torch.__version__)'
else
step "device" 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $PY -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; \
  command -v nvcc compute-sanitizer"
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

STEP_GREP='Successfully|error|sm_90'
if ((DRY_RUN)); then
  built=1  # the extension already built in this checkout (CPU)
elif step "build (sm_90)" 200 bash -c "$PY -m pip install --no-build-isolation --no-deps -e . && \
    cuobjdump --list-elf mdssd/_C*.so | grep -c sm_90 | sed 's/^/sm_90 cubins: /'"; then
  built=1
else
  built=0
fi

if ((built)); then
  # The CUDA tests (slow ones included: they are the sizes the emulator cannot run) and, where
  # present, the property-based fuzz tests, on the GPU.
  tests=(tests/test_cuda_*.py tests/test_runners.py tests/test_compile.py)
  for f in tests/test_fuzz_*.py; do [[ -e $f ]] && tests+=("$f"); done
  STEP_GREP='passed|failed|error'
  if ((DRY_RUN)); then
    step "cuda tests" 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_runners.py
  else
    # MDSSD_INDUCTOR_TESTS=1: the compiled-detector tests with inductor's code generation too.
    step "cuda tests" 120 env MDSSD_INDUCTOR_TESTS=1 "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}"
  fi

  # Training: a short real run (images/s in its log), the same under torchrun, a resume from the
  # first run's checkpoint to a later step, tiled detection of a large image with its weights.
  # images/s: the last train_log.csv line's images_per_s (the logged steps' mean rate).
  STEP_GREP='images/s|Error|error'
  rate() { echo "tail -1 $1/train_log.csv | awk -F, '{print \"step \" \$1 \": \" \$7 \" images/s\"}'"; }
  step "train $PRESET" 120 bash -c "$PY -m mdssd.train ${TRAIN_ARGS[*]} --steps $STEPS --out-dir $WORK/run && $(rate "$WORK/run")"
  step "train torchrun" 75 bash -c "$PY -m torch.distributed.run --standalone --nproc-per-node 1 \
    -m mdssd.train ${TRAIN_ARGS[*]} --steps $DDP_STEPS --out-dir $WORK/ddp && $(rate "$WORK/ddp")"
  step "train resume" 50 bash -c "$PY -m mdssd.train ${TRAIN_ARGS[*]} --steps $RESUME_STEPS \
    --out-dir $WORK/run --resume auto && $(rate "$WORK/run")"
  STEP_GREP='detections|wrote|Error|error'
  step "tiled detect" 60 bash -c "$PY -c 'import numpy as np, PIL.Image as I; \
    I.fromarray(np.random.default_rng(0).integers(0, 255, ($BIG, $BIG, 3), dtype=np.uint8)).save(\"$WORK/large.png\")' && \
    $PY -m mdssd.detect $WORK/large.png --weights $WORK/run/last.pt --out $WORK/detect --device $DEVICE \
      --tile $SIZE --batch-size $BATCH && ls $WORK/detect | head -3"

  # Inference: eager, torch.compile and (GPU) CUDA graph at batch 1 and 32, against torchvision.
  STEP_GREP='wrote|Error'
  if ((DRY_RUN)); then
    step "infer compiled" 120 "$PY" -m benchmarks.end_to_end --device cpu --quick --sections infer \
      --out "$WORK"
  else
    step "infer compiled+graph" 150 "$PY" -m benchmarks.end_to_end --device cuda --sections infer \
      --models mdssd300 --compile-modes default --out "$OUT"
    mv "$OUT"/cuda-*-end-to-end.md "$OUT/infer-end-to-end.md" 2>/dev/null
    mv "$OUT"/cuda-*-end-to-end.json "$OUT/infer-end-to-end.json" 2>/dev/null

    # What is left of the budget: sanitizers on small cases (--error-exitcode makes any finding
    # fail the step), then the kernel benchmarks.
    STEP_GREP='ERROR SUMMARY|all cases ok|Error'
    for tool in memcheck racecheck synccheck; do
      step "sanitizer $tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 30 \
        "$PY" -m benchmarks.sanitize_cases
    done
    STEP_GREP='wrote|DIFF|Error'
    step "bench kernels" 120 "$PY" -m benchmarks.kernels --device cuda --out "$OUT"
  fi
fi

{
  echo
  echo "gpu_check on ${GPU:-unknown GPU}: $((SECONDS - START)) s of a ${BUDGET} s budget; logs in $LOG"
  cat "$SUMMARY"
  ls "$OUT"/cuda-*.md 2>/dev/null | sed 's/^/result: /'
} | tee "$OUT/summary.final.txt"
mv "$OUT/summary.final.txt" "$SUMMARY"
exit $FAILED
