#!/usr/bin/env bash
# Builds mdssd's CPU extension for a second torch (default: the peers venv build/peers-venv, which has torchvision)
# into build/tv WITHOUT installing into that venv and without touching mdssd/_C*.so (which is
# built for the main torch and used by the tests). Then run any suite against that build:
#   PYTHONPATH=build/tv:. $TV_PYTHON -m benchmarks.kernels --device cpu
# Re-run after changing mdssd/*.py (the package is copied) or csrc/ (the build is incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
# Default: the peers venv of benchmarks/peers_venv.sh (torch 2.14.1 + torchvision 0.29.1).
TV_PYTHON=${TV_PYTHON:-$PWD/build/peers-venv/bin/python}
mkdir -p build/tv
# The Python package, without the main torch's .so and caches.
tar --exclude='*.so' --exclude=__pycache__ -cf - mdssd | tar -xf - -C build/tv
# MDSSD_CUDA=0: CPU kernels only (that torch has CUDA, this machine has no GPU).
MDSSD_CUDA=0 MDSSD_CUDA_EMU=0 MAX_JOBS=${MAX_JOBS:-1} nice -n 10 "$TV_PYTHON" setup.py -q build_ext \
  --build-lib build/tv --build-temp build/tv-temp
echo "built: $(ls build/tv/mdssd/_C*.so)"
