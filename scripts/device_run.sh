#!/usr/bin/env bash
# The prepared run for a GPU machine (the run tool's device: torch, onnx, onnxruntime, OpenCV and
# tqdm installed; no ../shared, no venv, no network), from what scripts/prepare_device_run.sh
# packed into runs/device/. Everything it brings back goes under $OUT.
#
#   bash scripts/device_run.sh teacher|ablation [key=value ...]
#
# teacher: config/train_fer2013_r18_teacher_gpu.yaml (full-width ResNet-18, 64 px, 60 epochs) for
#   at most TRAIN_SECONDS (default 420), then its best epoch exported as an fp16 ONNX file (a
#   teacher for the CPU default: a model file resizes faces itself), that file's validation
#   figures, and the latency of the shipped default and of that file on this machine (1 and 16
#   faces). key=value settings go to wscfer-train (a CPU check: optim.epochs=1 model.width=8).
# ablation: scripts/ablation.py --schedule full --seeds 3 (the paper's ResNet-18, 40 epochs, every
#   row) on the packed FER2013, each run scored on the packed muxspace, for at most
#   ABLATION_SECONDS (default 540); the table and its JSON come back. key=value settings go to
#   every run (a CPU check: optim.epochs=1 model.width=8 --rows baseline --seeds 1).
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:?usage: device_run.sh teacher|ablation [key=value ...]}
shift
OUT=${OUT:-runs/device/out}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
exec > >(tee -a "$OUT/device_run.log") 2>&1

"$PYTHON" -c "import yaml" 2>/dev/null \
    || "$PYTHON" -m pip install -q --no-index --find-links runs/device/wheels pyyaml \
    || { echo "device_run.sh: no PyYAML, and none of runs/device/wheels fits this Python"; exit 1; }
# The training package without installing it: wscfer_train is the train/ folder (setup.py's package_dir).
PACKAGES=$(mktemp -d)
ln -s "$PWD/train" "$PACKAGES/wscfer_train"
export PYTHONPATH="$PACKAGES:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WSCFER_DATA="$PWD/runs/device/data" WSCFER_CACHE="$PACKAGES/cache"
{ nvidia-smi -L 2>/dev/null || echo "no NVIDIA GPU"; "$PYTHON" -c "import torch; print('torch', torch.__version__)"; } \
    | tee "$OUT/machine.txt"

case "$PART" in
    teacher)
        CONFIG=config/train_fer2013_r18_teacher_gpu.yaml
        RUN=runs/device/fer2013_r18_teacher_gpu
        [ -s "$RUN/soft_targets.pt" ] || { echo "device_run.sh: $RUN/soft_targets.pt missing: run scripts/prepare_device_run.sh here first"; exit 1; }
        # timeout sends SIGTERM: the trainer saves a checkpoint and stops; best.pt is its best epoch so far.
        if ls "$RUN"/checkpoints/ckpt-*.pt > /dev/null 2>&1; then
            START=(--resume "$RUN")   # a carried run folder with checkpoints: continue it
        else
            START=(--config "$CONFIG")
        fi
        timeout "${TRAIN_SECONDS:-420}" "$PYTHON" -m wscfer_train.trainer "${START[@]}" "$@"
        echo "train rc $?"
        cp "$RUN"/{best.json,metrics.csv,run.json,config.yaml} "$OUT"/ 2>/dev/null
        "$PYTHON" -m wscfer_train.export "$RUN/best.pt" "$OUT/r18_teacher_64px.onnx" --precision fp16 \
            > "$OUT/export.json" || { echo "device_run.sh: export failed"; exit 1; }
        # The shipped default's latency rows on this machine, and the teacher's beside them.
        "$PYTHON" benchmarks/bench_classifier.py --model wscfer_ros/models/default.onnx \
            --models "$OUT/r18_teacher_64px.onnx" --faces 1 16 --no-variants --no-session-options \
            > "$OUT/bench_classifier.md"
        echo "bench rc $?"
        ;;
    ablation)
        # The ablation's full schedule on the packed data, for at most ABLATION_SECONDS (default 540);
        # the runs finished are in the JSON (carry it back in runs/device/ to go on from there).
        PACK="{format: packed, root: ., file: fer2013.npz"
        timeout "${ABLATION_SECONDS:-540}" "$PYTHON" scripts/ablation.py --schedule full --seeds 3 \
            --out runs/device/ablation --json runs/device/ablation_full.json --table "$OUT/ablation_full.md" \
            --muxspace "$PACK, split: muxspace}" "data.train=$PACK, split: train}" "data.val=$PACK, split: val}" "$@"
        echo "ablation rc $?"
        cp runs/device/ablation_full.json "$OUT"/ 2>/dev/null
        ;;
    *)
        echo "device_run.sh: unknown part $PART (teacher or ablation)"; exit 2 ;;
esac
echo "device_run.sh: done; results in $OUT"
