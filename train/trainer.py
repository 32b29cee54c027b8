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
command that resumes. A checkpoint is written to a temporary file and renamed,
so a crash or ``kill -9`` never leaves half of one; a corrupt one is reported
and the one before it used. Every file the trainer writes loads with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import yaml
from tqdm import tqdm

from wscfer_ros.perception import contract

from .augment import DEFAULTS as AUGMENT_DEFAULTS
from .augment import Augment
from .config import DEFAULTS, MEASURED, ConfigError, apply_override, as_yaml, config_help, differences, load_config, validate
from .data import DatasetError, Subset, data_root, flip_labels, load_dataset
from .distill import TeacherError, cached_soft_targets, check_settings
from .evaluate import evaluate_model
from .losses import objective
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


def load_data(cfg: dict, rank: int):
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
    if rank == 0:
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


# ---------------------------------------------------------------- checkpoints

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


class CheckpointError(RuntimeError):
    """The run folder does not allow what was asked: nothing to resume, or a run a new one would overwrite."""


class Checkpoints:
    """Rolling training checkpoints ``ckpt-<step>.pt``: the newest ``keep`` are kept."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep
        folder.mkdir(parents=True, exist_ok=True)

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("ckpt-*.pt"))

    def save(self, state: dict) -> Path:
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


def position(epoch: int, step: int, epochs: int, steps_per_epoch: int) -> str:
    """Where a run stands, as the epoch it runs next: "epoch 2/20 with 310 of its 449 steps done"."""
    if epoch >= epochs:
        return f"all {epochs} epochs done"
    return f"epoch {epoch + 1}/{epochs} with {step} of its {steps_per_epoch} steps done"


def checkpoint_due(train_cfg: dict, global_step: int, last_save: float) -> bool:
    """Whether a mid-epoch checkpoint is due after ``global_step`` steps (``train.checkpoint_*``)."""
    every = train_cfg["checkpoint_steps"]
    return (bool(every) and global_step % every == 0) or \
        time.monotonic() - last_save > 60 * train_cfg["checkpoint_minutes"]


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


def train(cfg: dict, resume: bool = False) -> dict:
    """Run (or resume) the training described by ``cfg``; returns the best validation metrics.

    SIGINT or SIGTERM during the training steps saves a checkpoint at the
    current step and raises :class:`Interrupted`; before the steps (data
    loading) they act as they would without the trainer.
    """
    with StopSignals() as signals:
        return _train(cfg, resume, signals)


def _train(cfg: dict, resume: bool, signals: StopSignals) -> dict:
    rank, world, device = setup_device(cfg["train"])
    seed = cfg["run"]["seed"]
    seed_everything(seed + rank)
    out_dir = Path(cfg["run"]["out_dir"])
    checkpoints = Checkpoints(out_dir / "checkpoints", cfg["train"]["keep_checkpoints"])
    # Before the data: a run that cannot resume stops in seconds, not after decoding the dataset.
    resumed_from, state = None, None
    if resume:
        found = checkpoints.load_newest(device)
        if found is None:
            raise CheckpointError(f"--resume: {out_dir} has no checkpoint yet (the run stopped before its first "
                                  "one); start it again without --resume")
        resumed_from, state = found
    elif checkpoints.paths():
        raise CheckpointError(f"{out_dir} already holds a run (up to {checkpoints.paths()[-1].name}): continue "
                              f"it with --resume {out_dir}, or give the new run another run.out_dir")
    if cfg["loss"]["teachers"]:
        check_settings(cfg["loss"])
    train_set, val_set, noise = load_data(cfg, rank)
    data_cfg, optim, loss_cfg = cfg["data"], cfg["optim"], cfg["loss"]
    if data_cfg["mean"] is None or data_cfg["std"] is None:
        pretrained = cfg["model"]["pretrained"] and pretrained_normalisation(cfg["model"]["arch"], data_cfg["color"])
        data_cfg["mean"], data_cfg["std"] = pretrained or channel_stats(train_set.images)
    class_names = train_set.class_names
    in_channels = contract.channels(data_cfg["color"])

    model = build_model(cfg["model"], len(class_names), in_channels)
    if cfg["model"]["pretrained"] and not resume:
        load_pretrained(model)
    if cfg["model"]["init"] and not resume:
        load_init(model, cfg["model"]["init"])
    model.to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    batch = optim["batch_size"]
    steps_per_epoch = len(train_set.labels) // (batch * world)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set.labels)} training images are fewer than one batch of {batch * world}")
    total_steps = optim["epochs"] * steps_per_epoch
    optimizer = make_optimizer(model, optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, int(optim["warmup_epochs"] * steps_per_epoch)))
    amp_dtype = autocast_dtype(cfg["train"]["amp"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    augment = Augment(cfg["augment"], data_cfg["mean"], data_cfg["std"])
    aug_generator = torch.Generator(device=device).manual_seed(seed * 1000 + rank)

    meta = {**contract.Contract(tuple(class_names), (data_cfg["size"],) * 2, data_cfg["color"], tuple(data_cfg["mean"]),
                                tuple(data_cfg["std"]), data_cfg["crop_scale"]).to_meta(),
            "dataset": train_set.name, "epochs": optim["epochs"], "loss": loss_cfg["aux"],
            "arch": arch_name(cfg["model"]), "precision_trained": str(amp_dtype or torch.float32).split(".")[-1],
            "label_noise": noise, "teachers": loss_cfg["teachers"],
            "class_counts": np.bincount(train_set.labels, minlength=len(class_names)).tolist()}
    start_epoch, start_step, best = 0, 0, {"accuracy": -1.0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], aug_generator)
        start_epoch, start_step, best = state["epoch"], state["step"], state["best"]
        meta["mean"], meta["std"] = state["meta"]["mean"], state["meta"]["std"]
        if rank == 0:
            log.info("resuming from %s: %s", resumed_from,
                     position(start_epoch, start_step, optim["epochs"], steps_per_epoch))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Atomic: under torchrun the other ranks may be reading config.yaml for --resume.
        write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        write_text_atomic(out_dir / "run.json", json.dumps(
            {"train": train_set.summary(), "val": val_set.summary(), "label_noise": noise,
             "world_size": world, "device": str(device)}, indent=2))
    writer = csv_file = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))
        csv_file = open_metrics_csv(out_dir / "metrics.csv", completed_epochs=start_epoch)
        csv_log = csv.DictWriter(csv_file, CSV_FIELDS)

    def snapshot(epoch: int, step: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_states(aug_generator),
                "epoch": epoch, "step": step, "global_step": epoch * steps_per_epoch + step,
                "best": best, "meta": meta, "config": cfg}

    images = torch.from_numpy(train_set.images).to(device)
    labels = torch.from_numpy(train_set.labels).to(device)
    targets = None
    if loss_cfg["teachers"]:
        targets = cached_soft_targets(out_dir / "soft_targets.pt", loss_cfg, train_set, device,
                                      cfg["train"]["eval_batch_size"], report=rank == 0).to(device)
    local = 2 * batch
    pair = torch.arange(local * world, device=device)
    pair = pair - pair % local + (pair % local + batch) % local     # the other view, within each rank's block
    anchors = torch.arange(local, device=device) + rank * local
    steps_this_run, max_steps = 0, cfg["train"]["max_steps"]
    stop = stopped_mid_epoch = signalled = False
    epochs_done = start_epoch
    saved = None    # (path, epoch, step) of the newest checkpoint this process wrote
    last_save = time.monotonic()
    started = time.monotonic()

    signals.stepping = True
    for epoch in range(start_epoch, optim["epochs"]):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        shard = order[rank::world][: steps_per_epoch * batch].to(device)
        net.train()
        sums, count, tick = {}, 0, time.monotonic()
        bar = tqdm(range(start_step, steps_per_epoch), initial=start_step, total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{optim['epochs']}", disable=rank != 0, unit="step", leave=False)
        for step in bar:
            index = shard[step * batch:(step + 1) * batch]
            x = torch.cat([augment(images[index], aug_generator), augment(images[index], aug_generator)])
            y = labels[index].repeat(2)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, u = net(x, with_embedding=True)
            loss, parts = objective(gather(logits.float(), world, True), gather(u.float(), world, True),
                                    gather(y, world, False), pair, anchors, loss_cfg,
                                    None if targets is None else targets[index].repeat(2, 1))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for name, value in {"loss": loss.detach(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            steps_this_run += 1
            if rank == 0 and (step + 1) % 10 == 0:
                rate = count * batch * world / (time.monotonic() - tick)
                bar.set_postfix(loss=f"{float(sums['loss']) / count:.3f}", img_s=f"{rate:.0f}")
            reached_max = bool(max_steps) and steps_this_run >= max_steps
            if reached_max:
                log.info("stopping after %d steps (train.max_steps)", steps_this_run)
            signalled = any_rank(signals.received is not None, world, device)
            stop = reached_max or signalled
            # At an epoch's last step the stop waits for the epoch's evaluation and checkpoint below.
            stopped_mid_epoch = stop and step + 1 < steps_per_epoch
            if rank == 0 and step + 1 < steps_per_epoch and (
                    stop or checkpoint_due(cfg["train"], epoch * steps_per_epoch + step + 1, last_save)):
                saved = checkpoints.save(snapshot(epoch, step + 1)), epoch, step + 1
                last_save = time.monotonic()
            if stopped_mid_epoch:
                break
        bar.close()
        if stopped_mid_epoch:
            break
        rate = count * batch * world / (time.monotonic() - tick) if count else 0.0
        start_step = 0
        metrics = evaluate_model(model, val_set, data_cfg["mean"], data_cfg["std"],
                                 cfg["train"]["eval_batch_size"], device)
        if rank == 0:
            means = {name: float(total) / max(count, 1) for name, total in sums.items()}
            row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                   "loss": means.get("loss"), "cls": means.get("cls"),
                   "aux": means.get("wsc", means.get("simclr", means.get("supcon"))), "pcl": means.get("pcl"),
                   "kd": means.get("kd"),
                   "images_per_s": round(rate, 1), "val_accuracy": metrics["accuracy"],
                   "val_mean_recall": metrics["mean_recall"], "elapsed_s": round(time.monotonic() - started, 1)}
            csv_log.writerow(row)
            csv_file.flush()
            for key in ("loss", "cls", "aux", "pcl", "kd", "lr", "images_per_s", "val_accuracy", "val_mean_recall"):
                if row[key] is not None:
                    writer.add_scalar(key, row[key], row["step"])
            log.info("epoch %d/%d  loss %.4f  val acc %.4f  mean recall %.4f  %.0f img/s", epoch + 1,
                     optim["epochs"], row["loss"] or 0.0, metrics["accuracy"], metrics["mean_recall"], rate)
            if metrics["accuracy"] > best["accuracy"]:
                best = {"accuracy": metrics["accuracy"], "mean_recall": metrics["mean_recall"],
                        "epoch": epoch + 1, "per_class_recall": metrics["per_class_recall"]}
                atomic_save({"model": model.state_dict(), "meta": {**meta, "val": best}, "config": cfg},
                            out_dir / "best.pt")
            saved = checkpoints.save(snapshot(epoch + 1, 0)), epoch + 1, 0
            last_save = time.monotonic()
        epochs_done = epoch + 1
        # A signal during the evaluation stops here, the epoch's checkpoint just written.  Not after
        # the last epoch: a collective right before DDP's teardown can deadlock gloo's threads.
        if epochs_done < optim["epochs"]:
            signalled = signalled or any_rank(signals.received is not None, world, device)
        if stop or signalled:
            break
    if rank == 0:
        writer.close()
        csv_file.close()
        if epochs_done >= optim["epochs"]:   # best.json marks a finished run (scripts/ablation.py skips those)
            (out_dir / "best.json").write_text(json.dumps(best, indent=2))
    if world > 1:
        dist.destroy_process_group()
    if signalled and epochs_done < optim["epochs"]:
        signum = signals.received or signal.SIGTERM
        where = "nothing new to save" if saved is None else \
            f"saved {saved[0]} ({position(saved[1], saved[2], optim['epochs'], steps_per_epoch)})"
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name}: {where}")
    return best


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
                             "listed")
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
