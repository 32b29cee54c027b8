"""Facial-expression datasets as in-memory arrays labelled with the canonical class names.

Each reader turns one published layout (FER2013 as CSV or as image folders,
RAF-DB basic, FERPlus, AffectNet, a generic folder per class) into a
:class:`FaceDataset`: every image decoded once, cropped to a square, resized
and colour-converted to the model's input, labels as indices into canonical
class names.  Datasets number their classes differently, so every reader maps
its dataset's own names to the canonical ones by name, never by position or
alphabetical order, and counts each row or file it leaves out.

A dataset is described by a spec, the same dict a training config holds::

    {"format": "rafdb", "root": "raf-basic", "split": "test"}

``root`` is relative to :func:`data_root` unless absolute; the other keys are
the keyword options of the format's reader below.  A :class:`Subset`
(``data.limit``) is chosen from the listed images before any is decoded.
"""
from __future__ import annotations

import csv
import inspect
import logging
import os
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from wscfer_ros.perception.colours import convert
from wscfer_ros.perception.contract import COLORS
from wscfer_ros.perception.encoded import encoded_image_problem

log = logging.getLogger(__name__)

CANONICAL_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
FER2013_CLASSES = CANONICAL_CLASSES[:7]

# Each dataset's own class names in its own id order, spelled as its authors spell them.
RAFDB_NAMES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")  # ids 1-7
FERPLUS_VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                        "contempt")
FERPLUS_REJECT_COLUMNS = ("unknown", "NF")
AFFECTNET_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")  # 0-7
AFFECTNET_DROPPED_IDS = {8: "label none (8)", 9: "label uncertain (9)", 10: "label non-face (10)"}
AFFECTNET_BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
# The spellings above that differ from the canonical names.
_ALIASES = {"anger": "angry", "happiness": "happy", "sadness": "sad"}

FER2013_USAGES = ("Training", "PublicTest", "PrivateTest")
FERPLUS_IMAGE_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid",
                         "PrivateTest": "FER2013Test"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})

_REPO_ROOT = Path(__file__).resolve().parents[1]
_PROGRESS_MIN_FILES = 1000
# Files per thread-pool task: a 48 px face decodes faster than a task is scheduled.
_FILES_PER_TASK = 256
_LOGGED_FAILURES = 5


@dataclass
class FaceDataset:
    """Decoded face images and their labels, held in memory.

    ``images`` is uint8 ``[N, S, S]`` for gray or ``[N, S, S, 3]`` RGB;
    ``labels`` int64 ``[N]`` indexes ``class_names`` (canonical names in
    canonical order); ``dropped`` counts the rows or files left out, by reason.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> str:
        """N, image shape, per-class counts and dropped counts, on a few lines."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        color = "rgb" if self.images.ndim == 4 else "gray"
        side = self.images.shape[1]
        lines = [f"{self.name}: {len(self)} images, {side}x{side} {color}",
                 "  classes: " + ", ".join(f"{name} {n}" for name, n in zip(self.class_names, counts))]
        if self.dropped:
            dropped = sorted(self.dropped.items())
            lines.append("  dropped: " + ", ".join(f"{reason} {n}" for reason, n in dropped))
        return "\n".join(lines)


@dataclass(frozen=True)
class Subset:
    """``limit`` of a dataset's listed images, drawn with ``seed`` (``data.limit``, ``run.seed``); 0 keeps all."""

    limit: int = 0
    seed: int = 0

    def rows(self, count: int) -> np.ndarray | None:
        """Indices of the kept rows among ``count`` listed ones, in training order; None keeps every row."""
        if not self.limit:
            return None
        return np.random.default_rng(self.seed).permutation(count)[: self.limit]


class DatasetError(ValueError):
    """A dataset refused before training starts (bad spec, labels or files); the message says why."""


def data_root() -> Path:
    """Where relative dataset roots live: ``$WSCFER_DATA``, else ``../shared/data`` beside the repository."""
    configured = os.environ.get("WSCFER_DATA")
    return Path(configured).expanduser() if configured else _REPO_ROOT.parent / "shared" / "data"


def load_dataset(spec: dict, *, size: int, color: str, data_root: Path, subset: Subset = Subset()) -> FaceDataset:
    """Reads the dataset ``spec`` describes, at ``size`` x ``size`` pixels in ``color`` ("gray" or "rgb").

    Only the images ``subset`` keeps are decoded.

    Raises ValueError for a bad spec (unknown format or option, a missing
    required option, unknown class names) and FileNotFoundError for a missing
    root or label file; unreadable images are skipped and counted instead.
    """
    options = dict(spec)
    if "format" not in options or "root" not in options:
        raise DatasetError(f"dataset spec {spec} needs 'format' and 'root'")
    fmt = options.pop("format")
    if fmt not in _READERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {sorted(_READERS)}")
    if color not in COLORS:
        raise DatasetError(f"color {color!r} is not one of {COLORS}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise DatasetError(f"size must be a positive number of pixels, got {size!r}")
    reader = _READERS[fmt]
    root = Path(options.pop("root")).expanduser()
    _check_options(fmt, reader, options)
    root = root if root.is_absolute() else Path(data_root) / root
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder (relative roots are resolved "
                                f"under {data_root}; set WSCFER_DATA to move it)")
    started = time.perf_counter()
    dataset = reader(root, size, color, subset, **options)
    if not len(dataset):
        raise DatasetError(f"{dataset.name}: no images under {root} (dropped: {dataset.dropped})")
    log.info("%s\n  loaded in %.1f s", dataset.summary(), time.perf_counter() - started)
    return dataset


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label noise for the robustness experiment of METHOD.md.

    Exactly ``round(fraction * N)`` labels, chosen without replacement, each
    change to a different class drawn uniformly from the other
    ``num_classes - 1``.  Returns the noisy labels and the mask of flipped
    rows; ``labels`` itself is left untouched.  The same seed gives the same
    noise.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"fraction must be in [0, 1], got {fraction}")
    if num_classes < 2:
        raise DatasetError(f"flipping needs at least 2 classes, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    rng = np.random.default_rng(seed)
    count = round(fraction * len(labels))
    chosen = rng.choice(len(labels), size=count, replace=False)
    noisy = labels.copy()
    # Adding 1..C-1 modulo C reaches each other class once, so the new class is uniform over them.
    noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=count)) % num_classes
    flipped = np.zeros(len(labels), bool)
    flipped[chosen] = True
    return noisy, flipped


# ----------------------------------------------------------------------------- readers
# Each reader takes (root, size, color, subset) and its format's options as
# keyword-only parameters; load_dataset checks a spec's options against those.

def _read_fer2013_csv(root: Path, size: int, color: str, subset: Subset, *, usage: str = "Training",
                      file: str = "fer2013.csv") -> FaceDataset:
    """The original ``fer2013.csv``: emotion id 0-6, 48x48 pixels as text, Usage split."""
    _check_choice("usage", usage, FER2013_USAGES)
    path = root / file
    required = ("emotion", "pixels", "Usage")
    name, dropped = f"fer2013-csv:{usage}", Counter()
    # With a subset, a first pass counts the usage's rows, so that only the kept rows' pixel text is parsed.
    place_of = None
    if subset.limit:
        count = sum(row["Usage"] == usage for _, row in _csv_rows(path, required))
        rows = subset.rows(count)
        _count_limited(dropped, count, len(rows))
        place_of = {int(row): place for place, row in enumerate(rows)}
    images, labels, places, bad_lines, unknown_ids = [], [], [], [], set()
    with warnings.catch_warnings():
        # numpy warns (and will raise) on pixel text it cannot parse; that row is unreadable.
        warnings.simplefilter("error", DeprecationWarning)
        ordinal = -1
        for line, row in _csv_rows(path, required):
            if row["Usage"] != usage:
                continue
            ordinal += 1
            emotion = _parse_int(row["emotion"], path, line)
            if not 0 <= emotion < len(FER2013_CLASSES):
                unknown_ids.add(emotion)
                continue
            if place_of is not None and ordinal not in place_of:
                continue
            try:
                pixels = np.fromstring(row["pixels"], dtype=np.int32, sep=" ")
            except (ValueError, DeprecationWarning):
                pixels = None
            if pixels is None or pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
                bad_lines.append(line)
                continue
            image = pixels.astype(np.uint8).reshape(48, 48)
            if color == "rgb":
                image = convert(image, "gray", "rgb")
            images.append(_square_resize(image, size))
            labels.append(emotion)
            if place_of is not None:
                places.append(place_of[ordinal])
    _raise_unknown_ids(unknown_ids, path, "0-6")
    if place_of is not None:   # file order -> the subset's order
        order = np.argsort(places)
        images, labels = [images[index] for index in order], [labels[index] for index in order]
    if bad_lines:
        _count_left_out(name, [(f"{path}:{line}", "bad pixel values") for line in bad_lines], dropped)
    decoded = np.stack(images) if images else np.empty(_images_shape(0, size, color), np.uint8)
    return FaceDataset(images=decoded, labels=np.asarray(labels, np.int64), class_names=list(FER2013_CLASSES),
                       name=name, dropped=dict(dropped))


def _read_fer2013_folder(root: Path, size: int, color: str, subset: Subset) -> FaceDataset:
    """Kaggle's FER2013 image export: ``<root>/<class>/*.jpg``, folders named as FER2013's classes."""
    return _read_class_folders(root, size, color, subset, {name: name for name in FER2013_CLASSES},
                               name=f"fer2013-folder:{root.name}")


def _read_folder(root: Path, size: int, color: str, subset: Subset, *,
                 class_map: dict[str, str | None]) -> FaceDataset:
    """``<root>/<folder>/<image>``; ``class_map`` gives every folder's class name, null to skip it."""
    if not isinstance(class_map, dict) or not class_map:
        raise DatasetError("format 'folder' needs class_map: {folder name: class name, or null to skip}")
    return _read_class_folders(root, size, color, subset, class_map, name=f"folder:{root.name}")


def _read_rafdb(root: Path, size: int, color: str, subset: Subset, *, split: str = "train",
                images: str = "Image/aligned") -> FaceDataset:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` lines ``train_00001.jpg 5``, ids 1-7.

    Images are looked up as ``<images>/train_00001_aligned.jpg`` (the aligned
    release), else under their listed name.
    """
    _check_choice("split", split, ("train", "test"))
    canonical = _canonical(RAFDB_NAMES, "RAF-DB")
    class_names = _in_canonical_order(canonical)
    label_of_id = {raf_id: class_names.index(name) for raf_id, name in enumerate(canonical, start=1)}
    listing = root / "EmoLabel" / "list_patition_label.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"RAF-DB label list {listing} not found")
    image_dir = root / images
    paths, labels, unknown_ids = [], [], set()
    for number, text in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{listing}:{number}: expected '<image name> <label 1-7>', got {text!r}")
        file_name, raf_id = fields[0], int(fields[1])
        if not file_name.startswith(split + "_"):
            continue
        if raf_id not in label_of_id:
            unknown_ids.add(raf_id)
            continue
        listed = Path(file_name)
        aligned = image_dir / f"{listed.stem}_aligned{listed.suffix}"
        paths.append(aligned if aligned.exists() else image_dir / file_name)
        labels.append(label_of_id[raf_id])
    _raise_unknown_ids(unknown_ids, listing, "1-7")
    return _decode_files(f"rafdb:{split}", class_names, paths, labels, Counter(), size, color, subset)


def _read_ferplus(root: Path, size: int, color: str, subset: Subset, *, usage: str = "Training",
                  images: str | None = None, include_contempt: bool = True,
                  file: str = "fer2013new.csv") -> FaceDataset:
    """FERPlus: ten annotators' votes per FER2013 image in ``fer2013new.csv``, images as PNG.

    The label is the single most-voted column; rows whose top vote is
    ``unknown`` or ``NF`` (not a face), rows with a tie at the top and rows
    without an image name are left out and counted.  ``images`` defaults to
    the FERPlus repository's folder for the usage (``FER2013Train`` ...).
    """
    _check_choice("usage", usage, FER2013_USAGES)
    canonical_of = dict(zip(FERPLUS_VOTE_COLUMNS, _canonical(FERPLUS_VOTE_COLUMNS, "FERPlus")))
    class_names = _in_canonical_order(name for name in canonical_of.values()
                                      if include_contempt or name != "contempt")
    vote_columns = FERPLUS_VOTE_COLUMNS + FERPLUS_REJECT_COLUMNS
    path = root / file
    image_dir = root / (images or FERPLUS_IMAGE_FOLDERS[usage])
    paths, labels, dropped = [], [], Counter()
    for line, row in _csv_rows(path, ("Usage", "Image name") + vote_columns):
        if row["Usage"] != usage:
            continue
        image_name = row["Image name"].strip()
        if not image_name:
            dropped["no image name"] += 1
            continue
        votes = [_parse_int(row[column], path, line) for column in vote_columns]
        top = max(votes)
        winners = [column for column, count in zip(vote_columns, votes) if count == top]
        if len(winners) > 1:
            dropped["no majority"] += 1
            continue
        if winners[0] in FERPLUS_REJECT_COLUMNS:
            dropped[winners[0]] += 1
            continue
        name = canonical_of[winners[0]]
        if name not in class_names:
            dropped[name] += 1
            continue
        paths.append(image_dir / image_name)
        labels.append(class_names.index(name))
    return _decode_files(f"ferplus:{usage}", class_names, paths, labels, dropped, size, color, subset)


def _read_affectnet(root: Path, size: int, color: str, subset: Subset, *, split: str = "train", file: str | None = None,
                    images: str = "Manually_Annotated_Images", num_classes: int = 8,
                    crop_faces: bool = True) -> FaceDataset:
    """AffectNet's manually annotated set: ``training.csv`` / ``validation.csv`` and the images.

    Expression ids 8-10 (none, uncertain, non-face) are left out and counted;
    ``num_classes=7`` leaves out contempt as well.  With ``crop_faces`` the
    face box of the CSV is cut out before resizing.
    """
    _check_choice("split", split, ("train", "val"))
    _check_choice("num_classes", num_classes, (7, 8))
    canonical = _canonical(AFFECTNET_NAMES, "AffectNet")
    class_names = _in_canonical_order(name for name in canonical if num_classes == 8 or name != "contempt")
    path = root / (file or {"train": "training.csv", "val": "validation.csv"}[split])
    image_dir = root / images
    required = ("subDirectory_filePath", "expression") + (AFFECTNET_BOX_COLUMNS if crop_faces else ())
    paths, labels, boxes, dropped, unknown_ids = [], [], [], Counter(), set()
    for line, row in _csv_rows(path, required):
        expression = _parse_int(row["expression"], path, line)
        if expression in AFFECTNET_DROPPED_IDS:
            dropped[AFFECTNET_DROPPED_IDS[expression]] += 1
            continue
        if not 0 <= expression < len(canonical):
            unknown_ids.add(expression)
            continue
        if canonical[expression] not in class_names:
            dropped[canonical[expression]] += 1
            continue
        paths.append(image_dir / row["subDirectory_filePath"])
        labels.append(class_names.index(canonical[expression]))
        if crop_faces:
            boxes.append(tuple(round(_parse_float(row[column], path, line))
                               for column in AFFECTNET_BOX_COLUMNS))
    _raise_unknown_ids(unknown_ids, path, "0-10")
    return _decode_files(f"affectnet:{split}", class_names, paths, labels, dropped, size, color, subset,
                         boxes if crop_faces else None)


def _read_packed(root: Path, size: int, color: str, subset: Subset, *, split: str = "train",
                 file: str = "pack.npz") -> FaceDataset:
    """A dataset packed by ``scripts/pack_dataset.py`` into one ``.npz`` file.

    Each split holds its images as concatenated encoded bytes
    (``<split>_bytes`` with ``<split>_offsets``), their labels and the class
    names: small enough to travel with the code to a machine without the data.
    """
    path = root / file
    if not path.is_file():
        raise FileNotFoundError(f"packed dataset {path} not found (scripts/pack_dataset.py makes one; relative "
                                "roots are resolved under WSCFER_DATA)")
    with np.load(path, allow_pickle=False) as pack:
        if f"{split}_labels" not in pack:
            splits = sorted(key[:-len("_labels")] for key in pack.files if key.endswith("_labels"))
            raise DatasetError(f"{path} has no split {split!r}; it holds {splits}")
        encoded, offsets = pack[f"{split}_bytes"], pack[f"{split}_offsets"]
        labels = pack[f"{split}_labels"].astype(np.int64)
        class_names = _canonical([str(name) for name in pack["class_names"]], str(path))
    _raise_unknown_ids(set(labels[(labels < 0) | (labels >= len(class_names))].tolist()), path,
                       f"0-{len(class_names) - 1} (its class_names)")
    name, dropped = f"packed:{split}", Counter()
    rows = subset.rows(len(labels))
    if rows is None:
        rows = np.arange(len(labels))
    _count_limited(dropped, len(labels), len(rows))
    labels = labels[rows]
    images = np.empty(_images_shape(len(rows), size, color), np.uint8)
    failures = []
    for index, row in enumerate(tqdm(rows, desc=f"decoding {path.name}:{split}", unit="img", file=sys.stderr,
                                     disable=len(rows) < _PROGRESS_MIN_FILES)):
        try:
            images[index] = decode_bytes(encoded[offsets[row]:offsets[row + 1]], size, color)
        except SkipImage as skip:
            failures.append((index, str(skip)))
    if failures:
        _count_left_out(name, [(f"{path} {split} image {index}", reason) for index, reason in failures], dropped)
        images, labels = _remove_rows(images, labels, [index for index, _ in failures])
    return FaceDataset(images=images, labels=labels, class_names=class_names, name=name, dropped=dict(dropped))


_READERS = {
    "fer2013_csv": _read_fer2013_csv,
    "fer2013_folder": _read_fer2013_folder,
    "packed": _read_packed,
    "rafdb": _read_rafdb,
    "ferplus": _read_ferplus,
    "affectnet": _read_affectnet,
    "folder": _read_folder,
}


# ----------------------------------------------------------------------------- class names

def _canonical(names: Iterable[str], source: str) -> list[str]:
    """The canonical name of each dataset class name; unknown names are an error listing them."""
    names = list(names)
    canonical = [_ALIASES.get(name, name) for name in names]
    unknown = [name for name, mapped in zip(names, canonical) if mapped not in CANONICAL_CLASSES]
    if unknown:
        raise DatasetError(f"{source}: unknown class names {unknown}; known: {list(CANONICAL_CLASSES)} "
                         f"(also accepted: {sorted(_ALIASES)})")
    return canonical


def _in_canonical_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=CANONICAL_CLASSES.index)


def _read_class_folders(root: Path, size: int, color: str, subset: Subset, class_map: dict[str, str | None],
                        name: str) -> FaceDataset:
    """One folder per class; every folder must be in ``class_map`` so no class is guessed."""
    folders = sorted(entry.name for entry in os.scandir(root)
                     if entry.is_dir() and not entry.name.startswith("."))
    unmapped = [folder for folder in folders if folder not in class_map]
    if unmapped:
        raise DatasetError(f"{root}: folders {unmapped} have no class; known folders: {sorted(class_map)} "
                         "(format 'folder': add them to class_map, null skips a folder)")
    used = {folder: cls for folder, cls in class_map.items() if cls is not None}
    canonical_of = dict(zip(used, _canonical(used.values(), f"class map of {root}")))
    class_names = _in_canonical_order(canonical_of.values())
    absent = sorted(set(class_map) - set(folders))
    if absent:
        log.warning("%s: no folders %s", root, absent)
    paths, labels, dropped = [], [], Counter()
    for folder in folders:
        # Every entry, not only files: a folder or broken link named like an image is counted, not ignored.
        files = sorted(entry.path for entry in os.scandir(root / folder) if not entry.name.startswith("."))
        if folder not in canonical_of:
            dropped["skipped by class map"] += len(files)
            continue
        label = class_names.index(canonical_of[folder])
        for file in map(Path, files):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(file)
                labels.append(label)
            else:
                dropped["not an image file"] += 1
    return _decode_files(name, class_names, paths, labels, dropped, size, color, subset)


# ----------------------------------------------------------------------------- decoding

class SkipImage(Exception):
    """An image left out of the dataset; the message is the reason counted in ``dropped``."""


def _decode_files(name: str, class_names: list[str], paths: Sequence[Path], labels: Sequence[int],
                  dropped: Counter, size: int, color: str, subset: Subset,
                  boxes: Sequence[tuple[int, int, int, int]] | None = None) -> FaceDataset:
    """Decodes each listed file that ``subset`` keeps once, on a thread pool, into one array; failures are counted."""
    rows = subset.rows(len(paths))
    if rows is not None:
        _count_limited(dropped, len(paths), len(rows))
        paths, labels = [paths[row] for row in rows], [labels[row] for row in rows]
        boxes = None if boxes is None else [boxes[row] for row in rows]
    count = len(paths)
    images = np.empty(_images_shape(count, size, color), np.uint8)
    labels = np.asarray(labels, np.int64)

    def decode_range(start: int, stop: int) -> list[tuple[int, str]]:
        failures = []
        for index in range(start, stop):
            try:
                images[index] = decode_image(paths[index], size, color, None if boxes is None else boxes[index])
            except SkipImage as skip:
                failures.append((index, str(skip)))
        return failures

    failures = []
    # OpenCV releases the GIL while it decodes and resizes, so threads decode in parallel.
    with ThreadPoolExecutor() as pool, tqdm(total=count, desc=f"decoding {name}", unit="img", file=sys.stderr,
                                            disable=count < _PROGRESS_MIN_FILES) as progress:
        tasks = {pool.submit(decode_range, start, min(start + _FILES_PER_TASK, count)):
                 min(_FILES_PER_TASK, count - start) for start in range(0, count, _FILES_PER_TASK)}
        for task in as_completed(tasks):
            failures += task.result()
            progress.update(tasks[task])
    if failures:
        failures.sort()
        _count_left_out(name, [(str(paths[index]), reason) for index, reason in failures], dropped)
        images, labels = _remove_rows(images, labels, [index for index, _ in failures])
    return FaceDataset(images=images, labels=labels, class_names=class_names, name=name,
                       dropped=dict(dropped))


def _count_limited(dropped: Counter, listed: int, kept: int) -> None:
    if listed > kept:
        dropped["left out by data.limit"] += listed - kept


def _count_left_out(name: str, failures: Sequence[tuple[str, str]], dropped: Counter) -> None:
    """Counts the (item, reason) pairs a reader left out into ``dropped``; one warning names the first few."""
    counts = Counter(reason for _, reason in failures)
    dropped.update(counts)
    log.warning("%s: %d image(s) left out (%s), e.g. %s", name, len(failures),
                ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())),
                "; ".join(f"{item} ({reason})" for item, reason in failures[:_LOGGED_FAILURES]))


def _images_shape(count: int, size: int, color: str) -> tuple[int, ...]:
    return (count, size, size) if color == "gray" else (count, size, size, 3)


def decode_image(path: Path, size: int, color: str, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """One file -> ``size`` x ``size`` uint8 in ``color``, cropped to ``box`` (x, y, w, h) if given."""
    try:
        # np.fromfile + imdecode instead of imread: imread cannot open non-ASCII paths on Windows.
        encoded = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise SkipImage("missing file") from None
    except OSError:   # no permission, or a folder
        raise SkipImage("cannot open") from None
    return decode_bytes(encoded, size, color, box)


def decode_bytes(encoded: np.ndarray, size: int, color: str,
                 box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """An encoded image (JPEG, PNG, ...) -> ``size`` x ``size`` uint8 in ``color``, cropped to ``box`` if given.

    Raises SkipImage for empty or undecodable bytes; OpenCV also refuses a
    truncated JPEG or PNG, rather than filling in the missing part.
    """
    if not encoded.size:
        raise SkipImage("empty")
    problem = encoded_image_problem(encoded)   # before OpenCV allocates what a header claims
    if problem:
        raise SkipImage(problem[0])
    try:
        image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise SkipImage("undecodable")
    if box is not None:
        x, y, width, height = box
        image = image[max(y, 0):max(y + height, 0), max(x, 0):max(x + width, 0)]
        if not image.size:
            raise SkipImage("face box outside image")
    if color == "rgb":
        image = convert(image, "bgr", "rgb")
    return _square_resize(image, size)


def _square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, then resize to ``size``.

    Faces keep their proportions, as in the node's square crops.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
    if side == size:
        return image
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _remove_rows(images: np.ndarray, labels: np.ndarray, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Drops ``rows`` by moving the last kept rows into their places.

    Only as many rows move as are dropped, instead of a second copy of an
    array that can take gigabytes (AffectNet); the order of the moved rows
    changes, which training and evaluation do not depend on.
    """
    keep = np.ones(len(labels), bool)
    keep[rows] = False
    kept = int(keep.sum())
    holes = np.flatnonzero(~keep[:kept])
    movers = kept + np.flatnonzero(keep[kept:])
    images[holes] = images[movers]
    labels[holes] = labels[movers]
    return images[:kept], labels[:kept]


# ----------------------------------------------------------------------------- small checks

def _check_options(fmt: str, reader, options: dict) -> None:
    """A spec's options against the reader's keyword-only parameters: typos are errors, not defaults."""
    parameters = [parameter for parameter in inspect.signature(reader).parameters.values()
                  if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    allowed = {parameter.name for parameter in parameters}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(f"format {fmt!r} has no options {unknown}; its options: {sorted(allowed)}")
    missing = [parameter.name for parameter in parameters
               if parameter.default is inspect.Parameter.empty and parameter.name not in options]
    if missing:
        raise DatasetError(f"format {fmt!r} needs the options {missing}")


def _check_choice(option: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise DatasetError(f"{option}={value!r} is not one of {list(choices)}")


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV file with a header; header names are stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        header = [column.strip() for column in next(reader, [])]
        missing = [column for column in required if column not in header]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing}; its columns: {header}")
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
            yield reader.line_num, dict(zip(header, row))


def _parse_int(text: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{path}:{line}: expected an integer, got {text!r}") from None


def _parse_float(text: str, path: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{path}:{line}: expected a number, got {text!r}") from None


def _raise_unknown_ids(ids: set[int], source: Path, known: str) -> None:
    if ids:
        raise DatasetError(f"{source}: unknown class ids {sorted(ids)}; known ids: {known}")
