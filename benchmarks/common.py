"""What every benchmark script shares: the machine line, percentiles, tables, frames.

Imports nothing heavier than numpy and OpenCV at module level, so the ``fer``
worker of ``bench_fer.py`` can use it from its own virtual environment.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
PERCENTILES = (50, 95, 99)

# The shared media, with the faces counted by eye (see PROVENANCE.md there).
PHOTOS = {
    "obama-720p.jpg": 1,
    "two_people.jpg": 2,
    "obama_and_biden.jpg": 3,
    "group_2008_007676.jpg": 7,
    "group_2008_004176.jpg": 7,
}
VIDEOS = ("woman2.mp4", "short_hamilton_clip.mp4")


class BenchmarkError(RuntimeError):
    """A benchmark cannot run (missing model, data or tool); the message says what to do."""


def machine_description() -> str:
    """One line: CPU model, cores, load, Python and onnxruntime with its providers.

    The load average is part of it because these machines are shared: a
    number taken next to a training run is not an idle machine's number.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"CPU {_cpu_model()}", f"{os.cpu_count()} logical cores ({usable} usable)"]
    if hasattr(os, "getloadavg"):
        parts.append("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    parts.append(f"Python {platform.python_version()}")
    try:
        import onnxruntime as ort
        parts.append(f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())})")
    except ImportError:
        parts.append("onnxruntime not installed")
    parts.append(f"OpenCV {cv2.__version__}")
    return "machine: " + "; ".join(parts)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles(samples_ms: Sequence[float]) -> list[float]:
    """p50, p95 and p99 of ``samples_ms``."""
    return [float(value) for value in np.percentile(np.asarray(samples_ms, np.float64), PERCENTILES)]


def time_calls(call: Callable[[], object], repeat: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``repeat`` calls of ``call``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = np.empty(repeat)
    for index in range(repeat):
        started = time.perf_counter()
        call()
        samples[index] = (time.perf_counter() - started) * 1000.0
    return samples


def ms(value: float) -> str:
    """A duration in milliseconds with the precision a table needs."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> None:
    """A markdown table; columns from ``numeric_from`` on are right-aligned."""
    print(markdown_table(headers, rows, numeric_from), flush=True)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> str:
    """The lines of ``print_table``, ending with an empty one."""
    align = ["---" if index < numeric_from else "---:" for index in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(path: Path, title: str, body: str) -> None:
    """Put ``body`` under ``## title`` in the markdown file ``path``, replacing that section or appending
    it; the other sections stay as they are."""
    lines = path.read_text().splitlines() if path.is_file() else ["# Benchmark results"]
    heading = f"## {title}"
    section = [heading, "", *body.strip("\n").splitlines(), ""]
    if heading in lines:
        start = lines.index(heading)
        end = next((index for index in range(start + 1, len(lines)) if lines[index].startswith("## ")), len(lines))
        lines[start:end] = section
    else:
        lines += ["", *section] if lines[-1] else section
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser that shows a script's docstring: its first paragraph as the description, the rest after the options."""
    description, details = doc.split("\n\n", 1)
    return argparse.ArgumentParser(description=description, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def check_positive(parser, name: str, value: int) -> None:
    """Stop argparse with a usage error when a count option is below 1."""
    if value < 1:
        parser.error(f"{name} must be at least 1, got {value}")


# Models and data (project side: these import the project's packages lazily)

def add_model_argument(parser, repeatable: bool = False) -> None:
    """``--model FILE``; ``repeatable``: given any number of times, a list (default: the shipped model alone)."""
    help_text = ("ONNX model file, or a file name shipped in wscfer_ros/models/ (default: the shipped default "
                 "model)" + ("; repeat it to compare several" if repeatable else ""))
    if repeatable:
        parser.add_argument("--model", action="append", help=help_text)
        parser.set_defaults(model=None)
    else:
        parser.add_argument("--model", default="", help=help_text)


def resolve_model(model: str) -> Path:
    """The model file ``--model`` names; BenchmarkError when it does not exist."""
    from wscfer_ros.perception.classifier import default_model_path, resolve_model_path

    path = resolve_model_path(model)
    if not path.is_file():
        hint = (" (the shipped model is written by the training run and wscfer-export; "
                "pass --model FILE to measure another one)") if path == default_model_path() else ""
        raise BenchmarkError(f"model file not found: {path}{hint}")
    return path


def fer2013_val(limit: int):
    """FER2013 PublicTest faces (uint8 48x48 gray) and their class names, ``limit`` drawn at random
    (0: all); None when the data is absent."""
    from wscfer_train.data import data_root, load_dataset

    root = data_root() / "fer2013" / "val"
    if not root.is_dir():
        return None
    dataset = load_dataset({"format": "fer2013_folder", "root": str(root)}, size=48, color="gray",
                           data_root=data_root())
    picked = sample(len(dataset), limit)
    names = np.array([dataset.class_names[label] for label in dataset.labels[picked]])
    return dataset.images[picked], names


def sample(count: int, limit: int) -> np.ndarray:
    """Sorted indices of ``limit`` of ``count`` items drawn with a fixed seed (0 or more than count: all)."""
    picked = np.random.default_rng(0).permutation(count)[:limit] if 0 < limit < count else np.arange(count)
    return np.sort(picked)


def predicted_names(classifier, images: np.ndarray) -> np.ndarray:
    """The class name ``Classifier`` predicts for each uint8 face, resized to its input and colour if need be."""
    from wscfer_ros.perception.colours import convert_crops

    height, width = classifier.input_size
    if (height, width) != images.shape[1:3]:
        images = np.stack([cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in images])
    images = convert_crops(images, classifier.color)
    predicted = np.concatenate([classifier.predict(images[start:start + 256]).argmax(axis=1)
                                for start in range(0, len(images), 256)] or [np.empty(0, np.int64)])
    return np.array(classifier.class_names)[predicted]


def media_dir() -> Path:
    """``media/`` of the shared data (``$WSCFER_DATA``, else ``../shared/data``); BenchmarkError if absent."""
    from wscfer_train.data import data_root

    folder = data_root() / "media"
    if not folder.is_dir():
        raise BenchmarkError(f"media folder not found: {folder} (set WSCFER_DATA to the shared data folder)")
    return folder


def read_photo(name: str) -> np.ndarray:
    """A photo of the shared media as BGR."""
    path = media_dir() / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BenchmarkError(f"cannot read {path}")
    return image


def read_video(name: str, limit: int = 0, step: int = 1) -> list[np.ndarray]:
    """Every ``step``-th BGR frame of a video of the shared media, at most ``limit`` (0 = all)."""
    path = media_dir() / name
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BenchmarkError(f"cannot open video {path}")
    frames = []
    index = 0
    try:
        while not limit or len(frames) < limit:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0:
                frames.append(frame)
            index += 1
    finally:
        capture.release()
    if not frames:
        raise BenchmarkError(f"no frame could be decoded from {path}")
    return frames


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` as a camera of ``width`` x ``height`` would frame it: centre crop to its aspect, then resize."""
    source_height, source_width = image.shape[:2]
    target_aspect = width / height
    if source_width / source_height > target_aspect:
        crop_width = round(source_height * target_aspect)
        left = (source_width - crop_width) // 2
        image = image[:, left:left + crop_width]
    else:
        crop_height = round(source_width / target_aspect)
        top = (source_height - crop_height) // 2
        image = image[top:top + crop_height]
    interpolation = cv2.INTER_AREA if image.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)
