#!/usr/bin/env bash
# Fills runs/device/ with what scripts/device_run.sh needs on a GPU machine that has neither
# ../shared, nor this project's virtual environment, nor the registries (about 45 MB in all):
#   runs/device/data/fer2013.npz      FER2013 Training and PublicTest, and muxspace, 48 px, JPEG quality 85
#   runs/device/<run>/soft_targets.pt the teachers' soft targets of the GPU config, computed here
#   runs/device/wheels/               PyYAML wheels for CPython 3.10-3.13 (the rest is there)
#   runs/stage2_default.onnx          the teacher file those soft targets name (its bytes are checked)
# Then, with the run tool: carry ["runs/device", "runs/stage2_default.onnx"] and
#   bash scripts/device_run.sh teacher      (or: ablation)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CONFIG=config/train_fer2013_r18_teacher_gpu.yaml
export WSCFER_DATA=${WSCFER_DATA:-../shared/data}

[ -s runs/stage2_default.onnx ] || git show 79acb66:wscfer_ros/models/default.onnx > runs/stage2_default.onnx
# muxspace too, as the ablation scores every run on it (its spec: scripts/ablation.py's MUXSPACE).
MUXSPACE=$("$PYTHON" -c "import json, runpy; print(json.dumps(runpy.run_path('scripts/ablation.py')['MUXSPACE']))")
"$PYTHON" scripts/pack_dataset.py --config config/train_fer2013.yaml --out runs/device/data/fer2013.npz \
    --split "muxspace=$MUXSPACE"
# On FER2013's own images (the pack's labels and order are theirs): the peers' logits come from the cache.
"$PYTHON" - "$CONFIG" <<'PY'
import sys
from pathlib import Path

import torch

from wscfer_train.config import load_config
from wscfer_train.data import data_root, load_dataset
from wscfer_train.distill import cached_soft_targets

cfg = load_config(sys.argv[1], [])
train = load_dataset({"format": "fer2013_folder", "root": "fer2013/train"}, size=cfg["data"]["size"],
                     color=cfg["data"]["color"], data_root=data_root())
path = Path(cfg["run"]["out_dir"]) / "soft_targets.pt"
cached_soft_targets(path, cfg["loss"], train, torch.device("cpu"), cfg["train"]["eval_batch_size"])
print(f"{path}: soft targets of {len(train.labels)} faces")
PY
for version in 3.10 3.11 3.12 3.13; do
    "$PYTHON" -m pip download -q pyyaml==6.0.4 --only-binary :all: --python-version "$version" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d runs/device/wheels
done
du -sh runs/device runs/stage2_default.onnx
