#!/usr/bin/env bash
# The peers venv of `python -m benchmarks.peers` (and of SAHI comparisons): torch 2.14.1 +
# torchvision 0.29.1 (pip takes both from this machine's disk; an unpinned torch would download
# GBs), ultralytics and SAHI at pinned versions, pycocotools. mdssd is never installed into it and
# never imports these. Also unpacks the real annotated imagery that two wheels ship (DeepForest's
# NEON tree crowns, stardist's fluorescence nuclei) into build/peers-data; nothing else is fetched.
#   PEERS_VENV (default build/peers-venv), PEERS_DATA (default build/peers-data)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_VENV=${PEERS_VENV:-build/peers-venv}
PEERS_DATA=${PEERS_DATA:-build/peers-data}
if [ ! -x "$PEERS_VENV/bin/python" ]; then
  python -m venv "$PEERS_VENV"
fi
"$PEERS_VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
# scikit-image: the synthetic set, for the benchmarks that train in this venv (benchmarks.end_to_end
# through benchmarks/cpu_results.sh).
"$PEERS_VENV/bin/pip" install -q ultralytics==8.4.190 sahi==0.12.8 pycocotools pyyaml scikit-image
mkdir -p "$PEERS_DATA/wheels"
for spec in deepforest==2.1.0 stardist==0.9.2; do
  name=${spec%%==*}
  ls "$PEERS_DATA/wheels/$name"-*.whl >/dev/null 2>&1 ||
    python -m pip download -q --no-deps --only-binary=:all: -d "$PEERS_DATA/wheels" "$spec"
done
python - "$PEERS_DATA" <<'PY'
import sys, zipfile
from pathlib import Path
data = Path(sys.argv[1])
wanted = {"deepforest": "deepforest/data/", "stardist": "stardist/data/images/"}
for wheel in sorted((data / "wheels").glob("*.whl")):
    prefix = wanted[wheel.name.split("-")[0]]
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
        z.extractall(data, members)
    print(f"{wheel.name}: {len(members)} files under {data / prefix}")
PY
"$PEERS_VENV/bin/python" -c "import ultralytics, sahi, torch; print('peers venv:', torch.__version__, 'ultralytics', ultralytics.__version__, 'sahi', sahi.__version__)"
