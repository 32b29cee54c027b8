#!/usr/bin/env bash
# Runs every benchmark and writes their tables, with the machine they ran on,
# to benchmarks/results.md (and shows them on the terminal as they come).
#
#   benchmarks/run_all.sh [--model FILE] [--setup-fer] [--quick] [--output FILE]
#
# --model      the ONNX model of the classifier, pipeline, node and fer benchmarks
#              (default: the shipped wscfer_ros/models/default.onnx)
# --setup-fer  build benchmarks/.venv-fer first (fer + LiteRT, from PyPI); without
#              it, the fer comparison runs only if that environment exists
# --quick      a few iterations of each, to check that everything runs (numbers
#              not meant for the README)
# --output     where the tables go (default benchmarks/results.md)
#
# A benchmark that fails is reported in the file and the others still run;
# the exit status is non-zero if any failed.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUTPUT=benchmarks/results.md
MODEL_ARGS=()
QUICK=0
SETUP_FER=0
while [ $# -gt 0 ]; do
    if [[ "$1" == --model || "$1" == --output ]] && [ $# -lt 2 ]; then
        echo "run_all.sh: $1 needs a value" >&2
        exit 2
    fi
    case "$1" in
        --model) MODEL_ARGS=(--model "$2"); shift 2 ;;
        --output) OUTPUT=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --setup-fer) SETUP_FER=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ ! -x "$PYTHON" ]; then
    echo "run_all.sh: $PYTHON not found: run 'make venv' first, or set PYTHON" >&2
    exit 1
fi

if [ "$QUICK" = 1 ]; then
    CLASSIFIER_ARGS=(--repeat 5 --warmup 2)
    PIPELINE_ARGS=(--repeat 3 --frames 10 --warmup 1)
    NODE_ARGS=(--seconds 1 --warmup 0.5 --rates 30 0 --distinct 5)
    FER_ARGS=(--repeat 2 --frames 5 --warmup 1 --val-images 300)
    TRAIN_ARGS=(--steps 1 --batch 16 --sizes 48)
else
    CLASSIFIER_ARGS=() PIPELINE_ARGS=() NODE_ARGS=() FER_ARGS=() TRAIN_ARGS=()
fi

FAILED=()
run() {   # run TITLE SCRIPT ARGS...: one section of the results
    local title=$1 script=$2
    shift 2
    {
        echo "## $title"
        echo
        echo "\`python benchmarks/$script $*\`"
        echo
    } | tee -a "$OUTPUT"
    if ! PYTHONUNBUFFERED=1 "$PYTHON" "benchmarks/$script" "$@" | tee -a "$OUTPUT"; then
        FAILED+=("$script")
        printf '\n**%s failed** (its error is on the terminal)\n' "$script" | tee -a "$OUTPUT"
    fi
    echo | tee -a "$OUTPUT"
}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
{
    echo "# Benchmark results"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT"
    [ "$QUICK" = 1 ] && echo "(--quick: a few iterations only, not numbers for the README)"
    echo
    (cd benchmarks && "../$PYTHON" -c 'import common; print(common.machine_description())')
    echo
} | tee "$OUTPUT"

run "Classifier alone" bench_classifier.py "${MODEL_ARGS[@]}" "${CLASSIFIER_ARGS[@]}"
run "Face detector recall" bench_detector_recall.py
run "Pipeline alone" bench_pipeline.py "${MODEL_ARGS[@]}" "${PIPELINE_ARGS[@]}"
run "Node end to end" bench_node.py "${MODEL_ARGS[@]}" "${NODE_ARGS[@]}"
if [ "$SETUP_FER" = 1 ]; then
    "$PYTHON" benchmarks/bench_fer.py --setup || FAILED+=("bench_fer.py --setup")
fi
if [ -x benchmarks/.venv-fer/bin/python ]; then
    run "Side by side with fer" bench_fer.py "${MODEL_ARGS[@]}" "${FER_ARGS[@]}"
else
    printf '## Side by side with fer\n\nNot run: %s\n\n' \
        "benchmarks/.venv-fer does not exist (run_all.sh --setup-fer builds it)." | tee -a "$OUTPUT"
    FAILED+=("bench_fer.py (no fer environment)")
fi
run "Training throughput" train_throughput.py "${TRAIN_ARGS[@]}"

echo "results written to $OUTPUT"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "run_all.sh: failed: ${FAILED[*]}" >&2
    exit 1
fi
