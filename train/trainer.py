"""``wscfer-train``: train a WSCFER model, top to bottom.

    wscfer-train --config config/train_fer2013.yaml [key=value ...] [--init weights.pt]
    wscfer-train --resume runs/fer2013_wscfer [key=value ...] [--allow-changes]
    torchrun --nproc_per_node 4 -m wscfer_train.trainer --config ...     # several GPUs (DDP)

Each step takes a batch of stored uint8 images, makes two augmented views of
each on the training device, and minimises L_cls + lambda * L_aux (+ PCL), see
``losses.objective``; with ``loss.teachers``, L_cls is mixed with distillation
towards the teachers' soft targets (``distill.py``). The run folder holds
``config.yaml``, ``run.json`` (data summary, label noise), ``metrics.csv``,
TensorBoard events in ``tb/``, rolling checkpoints in ``checkpoints/`` and
``best.pt`` (the epoch with the best validation accuracy). ``--resume RUN``
continues from the newest readable checkpoint exactly where it stopped: model,
optimiser, schedule, grad scaler, random generators and position in the epoch,
with the configuration saved in the run folder; settings given again must
agree with it (``config.differences``) unless ``--allow-changes``. A new run
never overwrites a folder that holds checkpoints. SIGINT or SIGTERM during
the steps saves a checkpoint at the current step and exits 130 / 143 with the
command that resumes. What the checkpoints hold, and how they are written so
that a crash or ``kill -9`` never leaves half of one: ``checkpoint.py``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import yaml
from tqdm import tqdm

from wscfer_ros.perception import contract

from . import checkpoint
from .augment import DEFAULTS as AUGMENT_DEFAULTS
from .augment import Augment
from .checkpoint import CheckpointError, Checkpoints, write_text_atomic
from .config import DEFAULTS, MEASURED, ConfigError, apply_override, as_yaml, config_help, differences, load_config, validate
from .data import DatasetError, Subset, data_root, flip_labels, load_dataset
from .distill import TeacherError, cached_soft_targets, check_settings
from .evaluate import evaluate_model
from .losses import PARTS, objective, with_pcl_warmup
from .model import arch_name, build_model, load_init, load_pretrained, pretrained_normalisation

log = logging.getLogger("wscfer_train")

CSV_FIELDS = ["epoch", "step", "lr", "loss", "cls", "aux", "pcl", "kd", "images_per_s",
              "val_accuracy", "val_mean_recall", "elapsed_s"]


# ---------------------------------------------------------------- set-up

def setup_device(train_cfg: dict) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when run by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = train_cfg["device"]
    use_cuda = torch.cuda.is_available() if wanted == "auto" else wanted == "cuda"
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if train_cfg["threads"]:
        torch.set_num_threads(train_cfg["threads"])
    if rank > 0:   # one rank tells the user what happens: the others say only what goes wrong
        log.setLevel(logging.WARNING)
    return rank, world, device


def autocast_dtype(amp, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype ``train.amp`` asks for on ``device`` (None: fp32).

    ``true``/``auto``: bf16 where the hardware computes it natively (CUDA with
    bf16, or a CPU with AVX-512 BF16), fp16
    on older GPUs, fp32 elsewhere; ``bf16`` / ``fp16`` force one; ``false`` is fp32.
    """
    if amp in (False, "off"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp not in (True, "auto"):
        raise ValueError(f"train.amp must be true, false, auto, bf16 or fp16, got {amp!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: dict):
    """Training and validation sets, with the configured label noise applied to training."""
    data = cfg["data"]
    root = data_root()
    train = load_dataset(data["train"], size=data["size"], color=data["color"], data_root=root,
                         subset=Subset(data["limit"], cfg["run"]["seed"]))
    val = load_dataset(data["val"], size=data["size"], color=data["color"], data_root=root)
    if val.class_names != train.class_names:   # found now, not by the first evaluation an epoch later
        raise DatasetError(f"the validation set's classes {val.class_names} differ from the training set's "
                           f"{train.class_names}")
    noise = {"fraction": data["label_noise"], "seed": data["noise_seed"], "flipped": 0}
    if data["label_noise"] > 0:
        train.labels, flipped = flip_labels(train.labels, data["label_noise"], len(train.class_names),
                                            data["noise_seed"])
        noise["flipped"] = int(flipped.sum())
    log.info("train: %s", train.summary())
    log.info("val: %s", val.summary())
    if noise["flipped"]:
        log.info("label noise: %d of %d training labels flipped (seed %d)",
                 noise["flipped"], len(train.labels), data["noise_seed"])
    return train, val, noise


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in 0..1 units."""
    pixels = images.reshape(len(images), -1, 1 if images.ndim == 3 else 3).astype(np.float64) / 255.0
    return pixels.mean(axis=(0, 1)).round(4).tolist(), pixels.std(axis=(0, 1)).round(4).tolist()


def make_optimizer(model: torch.nn.Module, optim: dict) -> torch.optim.Optimizer:
    """SGD; no weight decay on BatchNorm parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": optim["weight_decay"]},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["nesterov"])


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Linear warm-up to the base rate, then cosine decay to zero (a LambdaLR factor)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


# ---------------------------------------------------------------- the run folder

def position(epoch: int, step: int, epochs: int, steps_per_epoch: int) -> str:
    """Where a run stands, as the epoch it runs next: "epoch 2/20 with 310 of its 449 steps done"."""
    if epoch >= epochs:
        return f"all {epochs} epochs done"
    return f"epoch {epoch + 1}/{epochs} with {step} of its {steps_per_epoch} steps done"


class RunFolder:
    """What a run keeps in ``run.out_dir``: ``config.yaml``, ``run.json``, ``metrics.csv``, ``tb/``,
    ``checkpoints/`` and ``best.pt`` (their format: ``checkpoint.py``).

    Under torchrun only rank 0 writes (``writes``); every rank reads the
    checkpoint it resumes from.
    """

    def __init__(self, path: Path, keep: int, writes: bool):
        self.path, self.writes = path, writes
        self.checkpoints = Checkpoints(path / "checkpoints", keep)
        self.saved = None    # (path, epoch, step) of the newest checkpoint this process wrote
        self.last_save = time.monotonic()
        self._csv = self._table = self._tensorboard = None

    def resume_point(self, resume: bool, device) -> tuple[Path, dict] | None:
        """The checkpoint to continue from and its path, None for a new run; what cannot be done is refused."""
        if not resume:
            if self.checkpoints.paths():
                raise CheckpointError(f"{self.path} already holds a run (up to {self.checkpoints.paths()[-1].name}): "
                                      f"continue it with --resume {self.path}, or give the new run another "
                                      "run.out_dir")
            return None
        found = self.checkpoints.load_newest(device)
        if found is None:
            raise CheckpointError(f"--resume: {self.path} has no checkpoint yet (the run stopped before its first "
                                  "one); start it again without --resume")
        return found

    def start(self, cfg: dict, summary: dict, completed_epochs: int) -> None:
        """Write the settings and the data summary; open the metrics of the ``completed_epochs`` for appending."""
        if not self.writes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # Atomic: under torchrun the other ranks may be reading config.yaml for --resume.
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        write_text_atomic(self.path / "run.json", json.dumps(summary, indent=2))
        self._tensorboard = tensorboard_writer(self.path / "tb")
        self._csv = open_metrics_csv(self.path / "metrics.csv", completed_epochs)
        self._table = csv.DictWriter(self._csv, CSV_FIELDS)

    def checkpoint_due(self, train_cfg: dict, global_step: int) -> bool:
        """Whether a mid-epoch checkpoint is due after ``global_step`` steps (``train.checkpoint_*``)."""
        every = train_cfg["checkpoint_steps"]
        return (bool(every) and global_step % every == 0) or \
            time.monotonic() - self.last_save > 60 * train_cfg["checkpoint_minutes"]

    def save_checkpoint(self, state: dict) -> None:
        if self.writes:
            self.saved = self.checkpoints.save(state), state["epoch"], state["step"]
        self.last_save = time.monotonic()

    def save_best(self, model: torch.nn.Module, meta: dict, cfg: dict) -> None:
        if self.writes:
            checkpoint.save_best(self.path / "best.pt", model, meta, cfg)

    def record_epoch(self, row: dict, epochs: int) -> None:
        """One row of ``metrics.csv``, its scalars in TensorBoard, and one log line."""
        log.info("epoch %d/%d  loss %.4f  val acc %.4f  mean recall %.4f  %.0f img/s", row["epoch"], epochs,
                 row["loss"], row["val_accuracy"], row["val_mean_recall"], row["images_per_s"])
        if not self.writes:
            return
        self._table.writerow(row)
        self._csv.flush()
        if self._tensorboard is None:
            return
        for key in ("loss", *PARTS, "lr", "images_per_s", "val_accuracy", "val_mean_recall"):
            if row[key] is not None:
                self._tensorboard.add_scalar(key, row[key], row["step"])

    def where_saved(self, epochs: int, steps_per_epoch: int) -> str:
        if self.saved is None:
            return "nothing new to save"
        path, epoch, step = self.saved
        return f"saved {path} ({position(epoch, step, epochs, steps_per_epoch)})"

    def close(self, best: dict, finished: bool) -> None:
        if not self.writes:
            return
        if self._tensorboard is not None:
            self._tensorboard.close()
        self._csv.close()
        if finished:   # best.json marks a finished run (scripts/ablation.py skips those)
            (self.path / "best.json").write_text(json.dumps(best, indent=2))


def tensorboard_writer(path: Path):
    """A TensorBoard writer for the run's scalars, or None where TensorBoard is not installed (a bare
    machine with torch alone): metrics.csv holds the same numbers."""
    try:
        # Imported here: it takes seconds, and only the process that writes the run needs it.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("TensorBoard is not installed: the metrics go to metrics.csv only")
        return None
    return SummaryWriter(str(path))


def open_metrics_csv(path: Path, completed_epochs: int):
    """``metrics.csv`` open for appending, holding only the rows of the first ``completed_epochs``.

    A run killed after writing an epoch's row but before saving that epoch's
    checkpoint repeats the epoch when resumed; its old row goes, so every
    epoch has one row.  A fresh run (0 completed epochs) starts a new file.
    """
    kept = []
    if path.exists():
        with open(path, newline="") as existing:
            kept = [row for row in csv.DictReader(existing) if int(row["epoch"]) <= completed_epochs]
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w", newline="") as rewritten:
        table = csv.DictWriter(rewritten, CSV_FIELDS)
        table.writeheader()
        table.writerows(kept)
    os.replace(partial, path)
    return open(path, "a", newline="")


# ---------------------------------------------------------------- stopping

class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; the message says where."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM during the training steps ask the loop to stop at the next step.

    Before the steps (``stepping`` false: data loading, teachers) a signal
    acts as without the trainer (KeyboardInterrupt, termination): there is
    nothing to save yet.  The first signal puts the previous handlers back,
    so a second Ctrl-C stops at once (checkpoints on disk stay whole: saves
    are atomic).  Handlers can only be set from the main thread; elsewhere
    this does nothing.
    """

    def __init__(self):
        self.received: int | None = None
        self.stepping = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self._restore()
        if not self.stepping:
            signal.raise_signal(signum)   # to the handler that was there before
            return
        self.received = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on one: all ranks stop at the same step."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# ---------------------------------------------------------------- the loop

def gather(tensor: torch.Tensor, world: int, differentiable: bool) -> torch.Tensor:
    """Concatenate a tensor from all ranks (gradients flow back to the local part)."""
    if world == 1:
        return tensor
    if differentiable:
        return torch.cat(dist_fn.all_gather(tensor))
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


@dataclass
class Training:
    """The objects the training steps change, and how a step computes."""
    model: torch.nn.Module
    net: torch.nn.Module               # the model, inside DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: Augment
    aug_generator: torch.Generator
    amp_dtype: torch.dtype | None


def build_training(cfg: dict, class_names: list[str], steps_per_epoch: int, rank: int, world: int, device: torch.device,
                   fresh: bool) -> Training:
    """The model (from its pretrained or ``model.init`` start when ``fresh``), optimiser, schedule, augmentation."""
    data_cfg, optim = cfg["data"], cfg["optim"]
    model = build_model(cfg["model"], len(class_names), contract.channels(data_cfg["color"]))
    if fresh and cfg["model"]["pretrained"]:
        load_pretrained(model)
    if fresh and cfg["model"]["init"]:
        load_init(model, cfg["model"]["init"], class_names)
    model.to(device)
    optimizer = make_optimizer(model, optim)
    schedule = warmup_cosine(optim["epochs"] * steps_per_epoch, int(optim["warmup_epochs"] * steps_per_epoch))
    amp_dtype = autocast_dtype(cfg["train"]["amp"], device)
    return Training(model=model, net=torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model,
                    optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                    scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                    augment=Augment(cfg["augment"], data_cfg["mean"], data_cfg["std"]),
                    aug_generator=torch.Generator(device=device).manual_seed(cfg["run"]["seed"] * 1000 + rank),
                    amp_dtype=amp_dtype)


def model_meta(cfg: dict, train_set, noise: dict, amp_dtype: torch.dtype | None) -> dict:
    """What ``best.pt`` carries into the model file: the contract, and the facts of this training."""
    data_cfg, class_names = cfg["data"], train_set.class_names
    terms = contract.Contract(tuple(class_names), (data_cfg["size"],) * 2, data_cfg["color"],
                              tuple(data_cfg["mean"]), tuple(data_cfg["std"]), data_cfg["crop_scale"])
    return {**terms.to_meta(), "dataset": train_set.name, "epochs": cfg["optim"]["epochs"],
            "loss": cfg["loss"]["aux"], "arch": arch_name(cfg["model"]),
            "precision_trained": str(amp_dtype or torch.float32).split(".")[-1], "label_noise": noise,
            "teachers": cfg["loss"]["teachers"],
            "class_counts": np.bincount(train_set.labels, minlength=len(class_names)).tolist()}


def fill_normalisation(cfg: dict, images: np.ndarray) -> None:
    """Set ``data.mean`` / ``data.std`` where they are null: the pretrained backbone's, else the images' own."""
    data_cfg, model_cfg = cfg["data"], cfg["model"]
    if data_cfg["mean"] is None or data_cfg["std"] is None:
        pretrained = model_cfg["pretrained"] and pretrained_normalisation(model_cfg["arch"], data_cfg["color"])
        data_cfg["mean"], data_cfg["std"] = pretrained or channel_stats(images)


def steps_in_epoch(n_images: int, batch: int, world: int) -> int:
    """Steps of ``batch`` images per rank in one pass over the data (the remainder waits for the next epoch)."""
    if n_images < batch * world:
        raise ValueError(f"{n_images} training images are fewer than one batch of {batch * world}")
    return n_images // (batch * world)


def teacher_targets(cfg: dict, run_dir: Path, train_set, device, report: bool) -> torch.Tensor | None:
    """The teachers' soft targets of every training image (``loss.teachers``), None without teachers."""
    if not cfg["loss"]["teachers"]:
        return None
    return cached_soft_targets(run_dir / "soft_targets.pt", cfg["loss"], train_set, device,
                               cfg["train"]["eval_batch_size"], report=report).to(device)


def starting_point(resumed: tuple[Path, dict] | None, training: Training, meta: dict, epochs: int,
                   steps_per_epoch: int) -> tuple[int, int, dict]:
    """(epoch, step, best metrics) to start from: a resumed checkpoint's, loaded into ``training``, or the
    beginning.  A resumed run keeps the normalisation it was trained with in ``meta``."""
    if resumed is None:
        return 0, 0, {"accuracy": -1.0}
    path, state = resumed
    epoch, step, best, saved_meta = checkpoint.restore(state, training)
    meta["mean"], meta["std"] = saved_meta["mean"], saved_meta["std"]
    log.info("resuming from %s: %s", path, position(epoch, step, epochs, steps_per_epoch))
    return epoch, step, best


def view_pairs(batch: int, rank: int, world: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair, anchors) over the views of all ranks, gathered in rank order, each rank's block being its
    ``batch`` first views then their ``batch`` second views: ``pair[i]`` is the other view of view i,
    ``anchors`` this rank's views."""
    local = 2 * batch
    pair = torch.arange(local * world, device=device)
    pair = pair - pair % local + (pair % local + batch) % local
    return pair, torch.arange(local, device=device) + rank * local


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int, length: int) -> torch.Tensor:
    """This rank's ``length`` indices of the epoch's shuffle, which depends only on the seed and the epoch
    (a resumed run sees the same order)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[rank::world][:length]


def training_step(training: Training, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
                  pair: torch.Tensor, anchors: torch.Tensor, loss_cfg: dict, epochs_done: float, world: int) -> dict:
    """One optimiser step on a batch of uint8 images, ``epochs_done`` into training: two augmented views of
    each, the objective over all ranks' views; returns the loss and its parts, detached."""
    x = torch.cat([training.augment(images, training.aug_generator), training.augment(images, training.aug_generator)])
    y = labels.repeat(2)
    with torch.autocast(x.device.type, dtype=training.amp_dtype, enabled=training.amp_dtype is not None):
        logits, u = training.net(x, with_embedding=True)
    loss, parts = objective(gather(logits.float(), world, True), gather(u.float(), world, True),
                            gather(y, world, False), pair, anchors, with_pcl_warmup(loss_cfg, epochs_done),
                            None if targets is None else targets.repeat(2, 1))
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    training.scaler.step(training.optimizer)
    training.scaler.update()
    training.scheduler.step()
    return {"loss": loss.detach(), **parts}


class EpochTotals:
    """The mean loss parts and the training rate of the steps an epoch has run so far."""

    def __init__(self, images_per_step: int):
        self.images_per_step, self.steps, self.sums = images_per_step, 0, {}
        self.started = self.last = time.monotonic()

    def add(self, parts: dict) -> None:
        for name, value in parts.items():
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.last = time.monotonic()

    def mean(self, name: str) -> float | None:
        return float(self.sums[name]) / self.steps if name in self.sums else None

    def rate(self) -> float:
        """Images per second over the steps (the evaluation after them not counted)."""
        return self.steps * self.images_per_step / (self.last - self.started) if self.steps else 0.0


def epoch_row(epoch: int, steps_per_epoch: int, lr: float, totals: EpochTotals, metrics: dict,
              elapsed: float) -> dict:
    """The ``metrics.csv`` row (CSV_FIELDS) of a finished epoch, numbered from 1."""
    return {"epoch": epoch, "step": epoch * steps_per_epoch, "lr": lr,
            **{name: totals.mean(name) for name in ("loss", *PARTS)},
            "images_per_s": round(totals.rate(), 1), "val_accuracy": metrics["accuracy"],
            "val_mean_recall": metrics["mean_recall"], "elapsed_s": round(elapsed, 1)}


def train(cfg: dict, resume: bool = False) -> dict:
    """Run (or resume) the training described by ``cfg``; returns the best validation metrics.

    SIGINT or SIGTERM during the training steps saves a checkpoint at the
    current step and raises :class:`Interrupted`; before the steps (data
    loading) they act as they would without the trainer.  ``cfg`` is not
    changed: the normalisation measured on the data goes into the run's copy.
    """
    with StopSignals() as signals:
        return _train(copy.deepcopy(cfg), resume, signals)


def _train(cfg: dict, resume: bool, signals: StopSignals) -> dict:
    rank, world, device = setup_device(cfg["train"])
    seed, data_cfg, optim, loss_cfg = cfg["run"]["seed"], cfg["data"], cfg["optim"], cfg["loss"]
    seed_everything(seed + rank)
    folder = RunFolder(Path(cfg["run"]["out_dir"]), cfg["train"]["keep_checkpoints"], writes=rank == 0)
    resumed = folder.resume_point(resume, device)   # before the data: a run that cannot go on stops in seconds
    if loss_cfg["teachers"]:
        check_settings(loss_cfg)
    train_set, val_set, noise = load_data(cfg)
    fill_normalisation(cfg, train_set.images)
    batch = optim["batch_size"]
    steps_per_epoch = steps_in_epoch(len(train_set.labels), batch, world)
    training = build_training(cfg, train_set.class_names, steps_per_epoch, rank, world, device,
                              fresh=resumed is None)
    meta = model_meta(cfg, train_set, noise, training.amp_dtype)
    start_epoch, start_step, best = starting_point(resumed, training, meta, optim["epochs"], steps_per_epoch)
    folder.start(cfg, {"train": train_set.summary(), "val": val_set.summary(), "label_noise": noise,
                       "world_size": world, "device": str(device)}, completed_epochs=start_epoch)
    images, labels = torch.from_numpy(train_set.images).to(device), torch.from_numpy(train_set.labels).to(device)
    targets = teacher_targets(cfg, folder.path, train_set, device, report=rank == 0)
    pair, anchors = view_pairs(batch, rank, world, device)
    steps_this_run, signalled, epochs_done, started = 0, False, start_epoch, time.monotonic()

    def snapshot(epoch: int, step: int) -> dict:
        return checkpoint.rolling_state(training, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
                                        best=best, meta=meta, config=cfg)

    signals.stepping = True
    for epoch in range(start_epoch, optim["epochs"]):
        shard = epoch_order(len(labels), seed, epoch, rank, world, steps_per_epoch * batch).to(device)
        training.net.train()
        totals, stop = EpochTotals(batch * world), False
        bar = tqdm(range(start_step, steps_per_epoch), initial=start_step, total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{optim['epochs']}", disable=rank != 0, unit="step", leave=False)
        for step in bar:
            index = shard[step * batch:(step + 1) * batch]
            totals.add(training_step(training, images[index], labels[index], None if targets is None else
                                     targets[index], pair, anchors, loss_cfg, epoch + step / steps_per_epoch, world))
            steps_this_run += 1
            if (step + 1) % 10 == 0:
                bar.set_postfix(loss=f"{totals.mean('loss'):.3f}", img_s=f"{totals.rate():.0f}")
            if cfg["train"]["max_steps"] and steps_this_run >= cfg["train"]["max_steps"]:
                log.info("stopping after %d steps (train.max_steps)", steps_this_run)
                stop = True
            signalled = any_rank(signals.received is not None, world, device)
            stop = stop or signalled
            global_step = epoch * steps_per_epoch + step + 1
            if step + 1 < steps_per_epoch and (stop or folder.checkpoint_due(cfg["train"], global_step)):
                folder.save_checkpoint(snapshot(epoch, step + 1))
            if stop:   # at an epoch's last step, after the epoch's evaluation and checkpoint below
                break
        bar.close()
        if stop and step + 1 < steps_per_epoch:
            break
        start_step = 0
        metrics = evaluate_model(training.model, val_set, data_cfg["mean"], data_cfg["std"],
                                 cfg["train"]["eval_batch_size"], device)
        folder.record_epoch(epoch_row(epoch + 1, steps_per_epoch, training.scheduler.get_last_lr()[0], totals,
                                      metrics, time.monotonic() - started), optim["epochs"])
        if metrics["accuracy"] > best["accuracy"]:
            best = {"accuracy": metrics["accuracy"], "mean_recall": metrics["mean_recall"],
                    "epoch": epoch + 1, "per_class_recall": metrics["per_class_recall"]}
            folder.save_best(training.model, {**meta, "val": best}, cfg)
        folder.save_checkpoint(snapshot(epoch + 1, 0))
        epochs_done = epoch + 1
        # A signal during the evaluation stops here, the epoch's checkpoint just written.  Not after
        # the last epoch: a collective right before DDP's teardown can deadlock gloo's threads.
        if epochs_done < optim["epochs"]:
            signalled = signalled or any_rank(signals.received is not None, world, device)
        if stop or signalled:
            break
    folder.close(best, finished=epochs_done >= optim["epochs"])
    if world > 1:
        dist.destroy_process_group()
    if signalled and epochs_done < optim["epochs"]:
        signum = signals.received or signal.SIGTERM
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name}: "
                                  f"{folder.where_saved(optim['epochs'], steps_per_epoch)}")
    return best


EXAMPLES = """\
examples:
  wscfer-train --config config/train_fer2013.yaml
  wscfer-train --config config/train_fer2013.yaml optim.epochs=3 data.limit=2000    # a quick try
  wscfer-train --resume runs/fer2013_wscfer                                        # after a stop
  wscfer-train --resume runs/fer2013_wscfer --allow-changes optim.epochs=30        # train it longer
  torchrun --nproc_per_node 4 -m wscfer_train.trainer --config config/train_fer2013.yaml

Ctrl-C or SIGTERM saves a checkpoint at the current step and prints the command
that resumes (exit status 130 or 143). The run folder (run.out_dir) holds
config.yaml, metrics.csv, TensorBoard events (tb/), checkpoints/ and best.pt.

settings and their defaults (a --config file replaces them, key=value replaces
both; values are YAML):
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wscfer-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a facial-expression model with WSCFER (cross-entropy, weak supervised\n"
                    "contrastive and partial consistency losses) on the CPU, a GPU or several.",
        epilog=EXAMPLES + config_help({**DEFAULTS, "augment": AUGMENT_DEFAULTS}))
    parser.add_argument("--config", metavar="FILE",
                        help="YAML settings of a new run (see config/train_*.yaml); with --resume it is only "
                             "compared with the run's saved settings")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue the run in folder RUN from its newest checkpoint, with the settings "
                             "saved there")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: settings given again (--config, key=value) replace the saved ones "
                             "where they differ; without it a difference is an error (train.* settings may "
                             "always change)")
    parser.add_argument("--init", metavar="WEIGHTS",
                        help="a .pt file to start the backbone from: matching layers are loaded, the others "
                             "listed; the heads too when the file names the same classes (a best.pt, or "
                             "scripts/checkpoint_from_onnx.py's output)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings that replace the config file's, e.g. optim.epochs=5 data.limit=2000")
    return parser


def run_config(args: argparse.Namespace) -> dict:
    """The settings to train with: --config and overrides for a new run, the run's saved ones for --resume.

    On --resume, settings given again are compared with the saved ones; a
    difference outside ``train.*`` is an error unless --allow-changes, which
    logs each change.  The run folder given is the run's ``run.out_dir``; a
    saved ``train.max_steps`` is not carried over.
    """
    if not args.resume:
        cfg = load_config(args.config, args.overrides)
        if args.init:
            cfg["model"]["init"] = args.init
        return cfg
    saved_file = Path(args.resume) / "config.yaml"
    if not saved_file.is_file():
        raise CheckpointError(f"--resume {args.resume}: no run there ({saved_file} not found)")
    saved = load_config(saved_file)   # defaults first: keys added since the run started get theirs
    if args.config:
        given = load_config(args.config, args.overrides)
    else:
        given = json.loads(json.dumps(saved))
        given["train"]["max_steps"] = 0   # a step limit was for the process that saved the run, not for its sequel
        for override in args.overrides:
            apply_override(given, override)
    if args.init:
        given["model"]["init"] = args.init
    changed = differences(saved, given)
    if changed and not args.allow_changes:
        listed = "; ".join(f"{key} is {as_yaml(old)} in the run, {as_yaml(new)} given" for key, old, new in changed)
        raise ConfigError(f"--resume {args.resume}: {listed}; leave them out to continue the run as it was, or add "
                          "--allow-changes to continue it with the given values")
    for key, old, new in changed:
        log.info("--allow-changes: %s %s -> %s", key, as_yaml(old), as_yaml(new))
    for key in MEASURED:
        section, name = key.split(".")
        if given[section][name] is None:
            given[section][name] = saved[section][name]
    given["run"]["out_dir"] = args.resume
    return given


def resume_command(run_dir: str) -> str:
    """The command line that continues the run in ``run_dir``, started the way this process was."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        program = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "1"), "-m",
                   "wscfer_train.trainer"]
    elif Path(sys.argv[0]).name == "wscfer-train":
        program = [sys.argv[0]]
    else:
        program = [sys.executable, "-m", "wscfer_train.trainer"]
    return shlex.join(program + ["--resume", run_dir])


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config and not args.resume:
        parser.error("give --config FILE to start a run, or --resume RUN to continue one")
    if args.allow_changes and not args.resume:
        parser.error("--allow-changes goes with --resume")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    rank = int(os.environ.get("RANK", "0"))
    cfg = None
    try:
        cfg = run_config(args)
        validate(cfg)
        best = train(cfg, resume=bool(args.resume))
    except Interrupted as stop:
        if rank == 0:
            log.warning("%s; resume with: %s", stop, resume_command(cfg["run"]["out_dir"]))
        return 128 + stop.signum
    except KeyboardInterrupt:
        # Before the first step or during the save after a second Ctrl-C; saves are atomic.
        if rank == 0:
            log.warning("stopped by Ctrl-C outside the training steps: nothing new was saved")
        return 128 + signal.SIGINT
    except (ConfigError, CheckpointError, DatasetError, TeacherError, FileNotFoundError) as error:
        # The user's settings, data or run folder, not a bug: one line saying what, no traceback.
        log.error("%s", error)
        return 1
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
