"""Soft targets from teacher networks, for distilling them into the network being trained.

``loss.teachers`` lists teachers; each is a string or a mapping
``{teacher: ..., temperature: T, weight: w}``.  The string names

* a ``wscfer-train`` ``best.pt`` trained on the same classes, size and colour;
* an exported model file (``.onnx``, the model-file contract): its own size,
  colour and normalisation are applied, so any shipped model can teach;
* a published peer (``face-api``, ``human-models``; ``peers.py``), run with
  its own preprocessing.

The soft target of a training image is the weighted mean, over teachers, of
each teacher's class distribution at its temperature (default
``loss.distill_temperature``), averaged over the image and its mirror image.
A teacher that was trained on these very images (``human-models`` on FER2013
Training, or an earlier run of ours) is over-confident on them: give it a
higher temperature, so its targets carry its ranking of the other classes
rather than a copy of the label.  Targets are computed once, before
training, on the stored images: distillation costs no teacher forward pass
per step, and both augmented views of an image are pulled towards the same
target (the augmentations keep the expression).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .data import FaceDataset
from .evaluate import load_checkpoint, predict_logits
from . import peers, registry
from .peers import PEERS, load_peer
from .registry import cache_root

log = logging.getLogger("wscfer_train")


class TeacherError(ValueError):
    """A teacher cannot be read or does not fit the training data."""


@dataclass
class Teacher:
    source: str
    temperature: float
    weight: float


def parse_teachers(loss_cfg: dict) -> list[Teacher]:
    """The teachers of ``loss_cfg``, checked; raises TeacherError for a malformed entry."""
    teachers = []
    for entry in loss_cfg["teachers"]:
        spec = {"teacher": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or not isinstance(spec.get("teacher"), str) \
                or set(spec) - {"teacher", "temperature", "weight"}:
            raise TeacherError(f"loss.teachers entry {entry!r}: a path or peer name, or a mapping with "
                               "'teacher' and optional 'temperature', 'weight'")
        teacher = Teacher(spec["teacher"], float(spec.get("temperature", loss_cfg["distill_temperature"])),
                          float(spec.get("weight", 1.0)))
        if teacher.temperature <= 0 or teacher.weight <= 0:
            raise TeacherError(f"loss.teachers entry {entry!r}: temperature and weight must be positive")
        if teacher.source not in PEERS and not Path(teacher.source).is_file():
            raise TeacherError(f"loss.teachers: {teacher.source} is neither a file nor a peer "
                               f"({', '.join(PEERS)})")
        teachers.append(teacher)
    return teachers


def check_settings(loss_cfg: dict) -> None:
    """Refuse distillation settings that would train something other than what was meant."""
    if not 0.0 <= loss_cfg["distill_weight"] <= 1.0:
        raise TeacherError(f"loss.distill_weight must be within 0..1, got {loss_cfg['distill_weight']}")
    if not loss_cfg["distill_temperature"] > 0:
        raise TeacherError(f"loss.distill_temperature must be positive, got {loss_cfg['distill_temperature']}")
    parse_teachers(loss_cfg)


def soft_targets(loss_cfg: dict, dataset: FaceDataset, device: torch.device, batch_size: int,
                 report: bool = True, logits_cache: Path | None = None) -> torch.Tensor:
    """[N, C] float32 soft targets for ``dataset.images``; each row sums to 1.

    ``report``: show a progress bar and log how often each teacher and the
    mixture agree with the labels (off on all but one rank of a distributed run).
    ``logits_cache``: a folder keeping each peer teacher's logits on these
    images (see ``_cached_logits``).
    """
    teachers = parse_teachers(loss_cfg)
    total = torch.zeros(len(dataset.images), len(dataset.class_names))
    with tqdm(total=2 * len(teachers), desc="teacher soft targets", unit="pass", disable=not report) as bar:
        for teacher in teachers:
            mean = torch.zeros_like(total)
            for logits in _cached_logits(teacher.source, dataset, device, batch_size, logits_cache, write=report):
                mean += torch.softmax(torch.from_numpy(logits).float() / teacher.temperature, dim=1) / 2
                bar.update()
            total += teacher.weight * mean
            if report:
                log.info("teacher %s (T=%g, weight %g): arg-max matches %.1f %% of the training labels",
                         teacher.source, teacher.temperature, teacher.weight,
                         100 * float((mean.argmax(1).numpy() == dataset.labels).mean()))
    targets = total / sum(teacher.weight for teacher in teachers)
    if report:
        agreement = float((targets.argmax(1).numpy() == dataset.labels).mean())
        log.info("soft targets of %d teacher(s): their arg-max matches %.1f %% of the training labels",
                 len(teachers), 100 * agreement)
    return targets


def cached_soft_targets(path: Path, loss_cfg: dict, dataset: FaceDataset, device: torch.device,
                        batch_size: int, report: bool = True, logits_cache: Path | None = None) -> torch.Tensor:
    """``soft_targets``, kept in ``path`` so that a resumed run does not compute them again.

    The file is reused only when it was made by the same teachers (the same
    settings, the same weights, and for a peer the same port of its
    preprocessing) for the same training images; otherwise it is computed
    and written anew, from each peer's logits kept in ``logits_cache``
    (default ``$WSCFER_CACHE/teacher_logits``) where another run made them
    already.
    """
    key = {"teachers": [{**vars(t), "made_by": _fingerprint(t.source)} for t in parse_teachers(loss_cfg)],
           "labels": hashlib.sha256(dataset.labels.tobytes()).hexdigest(), "shape": list(dataset.images.shape)}
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            log.info("soft targets read from %s", path)
            return stored["targets"]
    targets = soft_targets(loss_cfg, dataset, device, batch_size, report,
                           logits_cache or cache_root() / "teacher_logits")
    if report:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        torch.save({"key": key, "targets": targets}, scratch)
        os.replace(scratch, path)
    return targets


def _cached_logits(source: str, dataset: FaceDataset, device: torch.device, batch_size: int,
                   cache: Path | None, write: bool):
    """The teacher's logits on ``dataset.images``, then on their mirror images (a generator).

    A peer's are kept in the ``cache`` folder under a key made of the port
    (``_fingerprint``), the images and the class order: its pass over
    FER2013 Training takes minutes, and the same peers teach every stage of a
    recipe, at any temperature.  A run of ours teaches one stage, quickly:
    not kept.
    """
    path = None
    if cache is not None and source in PEERS:
        key = hashlib.sha256(_fingerprint(source).encode())
        key.update(np.ascontiguousarray(dataset.images).tobytes())
        key.update("\n".join(dataset.class_names).encode())
        path = cache / f"{key.hexdigest()}.npz"
        if path.is_file():
            with np.load(path) as stored:
                yield stored["plain"]
                yield stored["mirrored"]
            return
    run = _teacher_logits(source, dataset, device, batch_size)
    plain = run(dataset.images)
    yield plain
    mirrored = run(np.ascontiguousarray(dataset.images[:, :, ::-1]))
    yield mirrored
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(path.stem + ".tmp.npz")
        np.savez(scratch, plain=plain, mirrored=mirrored)
        os.replace(scratch, path)


def _fingerprint(source: str) -> str:
    """sha256 of what turns images into the teacher's logits.

    A model file: its bytes.  A peer: its name, the port's code and the
    registry's pin of its weights (package, version, sha256; the ports share
    one file, so the code alone would give every peer the same fingerprint).
    """
    if source in PEERS:
        return hashlib.sha256(source.encode() + Path(peers.__file__).read_bytes()
                              + repr(registry.PACKAGES[source]).encode()).hexdigest()
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


def _teacher_logits(source: str, dataset: FaceDataset, device: torch.device, batch_size: int):
    """A function uint8 images -> logits [N, C] in ``dataset.class_names`` order."""
    if source in PEERS:
        peer = load_peer(source)
        missing = set(dataset.class_names) - set(peer.class_names)
        if missing:
            raise TeacherError(f"teacher {source} has no class {sorted(missing)}")
        return lambda images: peer.logits(images, dataset.class_names)
    if source.endswith(".onnx"):
        return _model_file_logits(source, dataset)
    teacher, meta = _load_teacher(source, dataset, device)
    return lambda images: predict_logits(teacher, images, meta["mean"], meta["std"], batch_size, device)


def _model_file_logits(path: str, dataset: FaceDataset):
    from wscfer_ros.perception.classifier import Classifier, ModelError
    from wscfer_ros.perception.colours import convert_crops

    try:
        classifier = Classifier(path, providers="cpu")
    except ModelError as error:
        raise TeacherError(f"teacher {path}: {error}") from error
    if set(dataset.class_names) - set(classifier.class_names):
        raise TeacherError(f"teacher {path} has classes {classifier.class_names}, "
                           f"the training data {dataset.class_names}")
    order = [classifier.class_names.index(name) for name in dataset.class_names]
    height, width = classifier.input_size

    def logits(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), 512):
            crops = images[start:start + 512]
            if crops.shape[1:3] != (height, width):
                crops = np.stack([cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
                                  for crop in crops])
            crops = convert_crops(crops, classifier.color)
            out.append(np.log(np.clip(classifier.predict(crops), 1e-12, None))[:, order])
        return np.concatenate(out)

    return logits


def _load_teacher(path: str, dataset: FaceDataset, device: torch.device):
    try:
        teacher, meta, _ = load_checkpoint(path, device)
    except (ValueError, FileNotFoundError) as error:
        raise TeacherError(f"teacher {path}: {error}") from error
    size = list(dataset.images.shape[1:3])
    color = "gray" if dataset.images.ndim == 3 else "rgb"
    expected = {"class_names": list(dataset.class_names), "input_size": size, "color": color}
    found = {"class_names": list(meta["class_names"]), "input_size": list(meta["input_size"]), "color": meta["color"]}
    if found != expected:
        raise TeacherError(f"teacher {path} was trained on {found}, the training data is {expected}")
    return teacher, meta
