"""``python -m benchmarks.peers``: mdssd against ultralytics YOLO (+ SAHI) on the same data.

What a user with small objects would otherwise pick, trained and scored by one protocol:

* data (:mod:`.data`): the built-in synthetic set, the large-image synthetic set (mdssd with
  ``--crop``/``--tile``, YOLO with SAHI's slicing), DeepForest's aerial tree crowns and stardist's
  fluorescence nuclei (real imagery from wheels, converted in this repo);
* contestants: mdssd presets (``mdssd_tiny``, ``ssd_tiny_s4``) through ``mdssd.train``, and YOLO
  (``yolov8n``, ``yolo11n``) from their yaml files, from scratch and offline, in the peers venv
  (``benchmarks/peers_venv.sh``; mdssd never imports ultralytics or SAHI);
* budgets (:mod:`.budgets`): equal training images seen, equal training wall time on the same
  machine and threads, and YOLO at the input size of equal GFLOPs;
* scoring (:mod:`.runs`): every contestant's predictions (score >= 0.01, at most 200 per image)
  as :class:`mdssd.metrics.Detections`, scored by the same pycocotools call on the same COCO
  ground truth: AP, AP50, AP_small, AR_small and the AI-TOD size bins; training images/s,
  inference ms/image and (sliced) megapixels/s;
* report (:mod:`.report`): ``benchmarks/results/peers-<kind>-<machine>.{md,json,png}``.
"""

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def default_python() -> str:
    """The peers venv's python: ``$PEERS_PYTHON``, else ``build/peers-venv/bin/python`` of this
    checkout (made by ``benchmarks/peers_venv.sh``). CI does not build it: whoever needs it checks
    that the file exists (the tests skip without it)."""
    return os.environ.get("PEERS_PYTHON") or str(_REPO / "build" / "peers-venv" / "bin" / "python")
