#!/usr/bin/env bash
# The committed CPU results (benchmarks/results/cpu-*): kernels with the torchvision columns,
# contention and end to end, all with torch 2.14.1 + torchvision 0.29.1 from the second venv
# (TV_PYTHON, default build/peers-venv/bin/python,
# made by benchmarks/peers_venv.sh) against mdssd built for it in build/tv.
# About 15 minutes on the 2-core EPYC; run it on a quiet machine (the headers give the load).
set -euo pipefail
cd "$(dirname "$0")/.."
# Default: the peers venv of benchmarks/peers_venv.sh (torch 2.14.1 + torchvision 0.29.1).
TV_PYTHON=${TV_PYTHON:-$PWD/build/peers-venv/bin/python}
OUT=${OUT:-benchmarks/results}
bash benchmarks/tvenv_build.sh
run() { PYTHONPATH=build/tv:. "$TV_PYTHON" -m "$@" --out "$OUT"; }
echo "load before: $(cat /proc/loadavg)"
run benchmarks.kernels --device cpu
run benchmarks.contention
run benchmarks.end_to_end --device cpu
echo "load after: $(cat /proc/loadavg)"
