"""Soft targets from teacher networks, for distilling them into the network being trained.

A teacher is a ``wscfer-train`` ``best.pt`` trained on the same classes at the
same input size and colour (its own normalisation is used).  The soft target
of a training image is the teachers' class distribution at temperature T,
averaged over the teachers and over the image and its mirror image.  Targets
are computed once, before training, on the stored images: distillation then
costs no teacher forward pass per step, and both augmented views of an image
are pulled towards the same target (the augmentations keep the expression).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from .data import FaceDataset
from .evaluate import load_checkpoint, predict_logits

log = logging.getLogger("wscfer_train")


class TeacherError(ValueError):
    """A teacher checkpoint cannot be read or does not fit the training data."""


def check_settings(loss_cfg: dict) -> None:
    """Refuse distillation settings that would train something other than what was meant."""
    if not 0.0 <= loss_cfg["distill_weight"] <= 1.0:
        raise TeacherError(f"loss.distill_weight must be within 0..1, got {loss_cfg['distill_weight']}")
    if not loss_cfg["distill_temperature"] > 0:
        raise TeacherError(f"loss.distill_temperature must be positive, got {loss_cfg['distill_temperature']}")


def soft_targets(paths: list[str], dataset: FaceDataset, temperature: float, device: torch.device,
                 batch_size: int, report: bool = True) -> torch.Tensor:
    """[N, C] float32 soft targets for ``dataset.images``; each row sums to 1.

    ``report``: show a progress bar and log how often the targets agree with
    the labels (off on all but one rank of a distributed run).
    """
    mirrored = np.ascontiguousarray(dataset.images[:, :, ::-1])
    total = torch.zeros(len(dataset.images), len(dataset.class_names))
    with tqdm(total=2 * len(paths), desc="teacher soft targets", unit="pass", disable=not report) as bar:
        for path in paths:
            teacher, meta = _load_teacher(path, dataset, device)
            for images in (dataset.images, mirrored):
                logits = predict_logits(teacher, images, meta["mean"], meta["std"], batch_size, device)
                total += torch.softmax(torch.from_numpy(logits) / temperature, dim=1)
                bar.update()
    targets = total / (2 * len(paths))
    if report:
        agreement = float((targets.argmax(1).numpy() == dataset.labels).mean())
        log.info("soft targets from %d teacher(s) at T=%g: their arg-max matches %.1f %% of the training labels",
                 len(paths), temperature, 100 * agreement)
    return targets


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
