"""The files a training run saves, and the one place their format is written down.

A run folder holds two kinds of ``.pt`` file, both dictionaries that load
with ``torch.load(weights_only=True)`` (reading one never runs code from it):

* ``checkpoints/ckpt-<global step>.pt``, rolling (the newest few are kept):
  everything needed to continue exactly where the run stood, ``ROLLING_KEYS``:
  the weights, the optimiser, schedule and grad-scaler states, every random
  generator, the position (``epoch`` and ``step`` within it, the step to run
  next), the best validation metrics so far, the model-file metadata and the
  run's configuration.
* ``best.pt``, the epoch with the best validation accuracy, ``BEST_KEYS``:
  the weights, the metadata (the model-file contract of
  ``wscfer_ros.perception.contract``, the training facts and ``val``, that
  epoch's metrics) and the configuration.  ``wscfer-eval``, ``wscfer-export``
  and the teachers of ``distill.py`` read it; a rolling checkpoint has the
  same three keys, so it reads as one too.

Every write goes to a temporary file that is flushed and renamed, so a crash
or ``kill -9`` never leaves half a checkpoint; a corrupt one is reported and
the one before it used.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from wscfer_ros.perception import contract

log = logging.getLogger("wscfer_train")

ROLLING_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "step", "global_step", "best", "meta",
                "config")
BEST_KEYS = ("model", "meta", "config")


class CheckpointError(RuntimeError):
    """The run folder does not allow what was asked: nothing to resume, or a run a new one would overwrite."""


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoints:
    """Rolling training checkpoints ``ckpt-<step>.pt``: the newest ``keep`` are kept."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("ckpt-*.pt"))

    def save(self, state: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{state['global_step']:09d}.pt"
        atomic_save(state, path)
        # A process killed while saving leaves its temporary file behind; nothing reads it.
        for old in self.paths()[: -self.keep] + list(self.folder.glob("ckpt-*.pt.tmp")):
            old.unlink()
        return path

    def load_newest(self, device) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads (weights-only) and its path; None when there is none at all.

        An unreadable checkpoint is reported and the previous one tried; when
        none of them loads, CheckpointError names them all.
        """
        paths = self.paths()
        for path in reversed(paths):
            try:
                state = torch.load(path, map_location=device, weights_only=True)
            except Exception as error:  # torch raises many types for a truncated or corrupt file
                log.warning("checkpoint %s (%d bytes) is unreadable, skipped: %s", path, path.stat().st_size,
                            _reason(error))
                continue
            return path, state
        if paths:
            raise CheckpointError(f"--resume: none of the checkpoints in {self.folder} is readable "
                                  f"({', '.join(path.name for path in paths)}); move them away to start "
                                  "the run from scratch")
        return None


def _reason(error: Exception) -> str:
    """One line for a failed torch.load: torch wraps the unpickler's complaint in a paragraph of advice."""
    detail = str(error).partition("WeightsUnpickler error:")[2] or str(error)
    first = detail.strip().split("\n")[0].split(". ")[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def rng_states(aug_generator: torch.Generator) -> dict:
    """Every random generator training draws from, as tensors and plain values (weights-only loadable)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {"augment": aug_generator.get_state(), "torch": torch.get_rng_state(),
            "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "gauss": gauss},
            "python": random.getstate()}


def restore_rng(states: dict, aug_generator: torch.Generator) -> None:
    """Set the generators to the states :func:`rng_states` saved."""
    aug_generator.set_state(states["augment"].cpu())
    torch.set_rng_state(states["torch"].cpu())
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["key"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    random.setstate(states["python"])


def rolling_state(training, *, epoch: int, step: int, steps_per_epoch: int, best: dict, meta: dict,
                  config: dict) -> dict:
    """A rolling checkpoint of ``training`` (model, optimizer, scheduler, scaler, aug_generator) at a position."""
    return {"model": training.model.state_dict(), "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(), "scaler": training.scaler.state_dict(),
            "rng": rng_states(training.aug_generator),
            "epoch": epoch, "step": step, "global_step": epoch * steps_per_epoch + step,
            "best": best, "meta": meta, "config": config}


def restore(state: dict, training) -> tuple[int, int, dict, dict]:
    """Load a rolling checkpoint into ``training``; returns (epoch, step, best, meta) it was saved at."""
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"], training.aug_generator)
    return state["epoch"], state["step"], state["best"], state["meta"]


def save_best(path: Path, model: torch.nn.Module, meta: dict, config: dict) -> None:
    atomic_save({"model": model.state_dict(), "meta": meta, "config": config}, path)


def load_best(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
    """The weights, metadata and configuration of a ``best.pt`` (or a rolling checkpoint).

    Any other file is refused with a ValueError pointing at ``best.pt``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or non-weights file
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({str(error).splitlines()[0]}); "
                         "export and evaluate the run's best.pt, written by wscfer-train") from error
    missing = [key for key in BEST_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"{path}: not a wscfer-train best.pt, missing {missing}")
    missing = [key for key in contract.KEYS if key not in checkpoint["meta"]]
    if missing:
        raise ValueError(f"{path}: checkpoint meta lacks {missing}")
    return checkpoint["model"], checkpoint["meta"], checkpoint["config"]
