"""``wscfer-train``: train a WSCFER model, top to bottom.

    wscfer-train --config config/train_fer2013.yaml [key=value ...] [--resume] [--init weights.pt]
    torchrun --nproc_per_node 4 -m wscfer_train.trainer --config ...     # several GPUs (DDP)

Each step takes a batch of stored uint8 images, makes two augmented views of
each on the training device, and minimises L_cls + lambda * L_aux (+ PCL), see
``losses.objective``; with ``loss.teachers``, L_cls is mixed with distillation
towards the teachers' soft targets (``distill.py``). The run folder holds
``config.yaml``, ``run.json`` (data summary, label noise), ``metrics.csv``,
TensorBoard events in ``tb/``, rolling checkpoints in ``checkpoints/`` and
``best.pt`` (the epoch with the best validation accuracy). ``--resume``
continues from the newest readable checkpoint exactly where it stopped: model,
optimiser, schedule, grad scaler, random generators and position in the epoch.
A checkpoint is written to a temporary file and renamed, so a crash or
``kill -9`` never leaves half of one; a corrupt one is reported and the one
before it used. Every file the trainer writes loads with
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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import yaml
from tqdm import tqdm

from .augment import Augment
from .config import load_config
from .data import DatasetError, data_root, flip_labels, load_dataset
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
    train = load_dataset(data["train"], size=data["size"], color=data["color"], data_root=root)
    val = load_dataset(data["val"], size=data["size"], color=data["color"], data_root=root)
    if val.class_names != train.class_names:   # found now, not by the first evaluation an epoch later
        raise DatasetError(f"the validation set's classes {val.class_names} differ from the training set's "
                           f"{train.class_names}")
    if data["limit"]:
        keep = np.random.default_rng(cfg["run"]["seed"]).permutation(len(train.labels))[: data["limit"]]
        train.images, train.labels = train.images[keep], train.labels[keep]
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

def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """No checkpoint of the run can be resumed from."""


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

    def load_newest(self, device) -> dict | None:
        """The newest checkpoint that loads (weights-only); None when there is none at all.

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
            log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["step"])
            return state
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


def checkpoint_due(train_cfg: dict, global_step: int, last_save: float) -> bool:
    """Whether a mid-epoch checkpoint is due after ``global_step`` steps (``train.checkpoint_*``)."""
    every = train_cfg["checkpoint_steps"]
    return (bool(every) and global_step % every == 0) or \
        time.monotonic() - last_save > 60 * train_cfg["checkpoint_minutes"]


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
    """Run (or resume) the training described by ``cfg``; returns the best validation metrics."""
    rank, world, device = setup_device(cfg["train"])
    seed = cfg["run"]["seed"]
    seed_everything(seed + rank)
    out_dir = Path(cfg["run"]["out_dir"])
    checkpoints = Checkpoints(out_dir / "checkpoints", cfg["train"]["keep_checkpoints"])
    # Before the data: a run that cannot resume stops in seconds, not after decoding the dataset.
    state = checkpoints.load_newest(device) if resume else None
    if resume and state is None:
        log.info("--resume: no checkpoint in %s, starting from scratch", checkpoints.folder)
    if cfg["loss"]["teachers"]:
        check_settings(cfg["loss"])
    train_set, val_set, noise = load_data(cfg, rank)
    data_cfg, optim, loss_cfg = cfg["data"], cfg["optim"], cfg["loss"]
    if data_cfg["mean"] is None or data_cfg["std"] is None:
        pretrained = cfg["model"]["pretrained"] and pretrained_normalisation(cfg["model"]["arch"], data_cfg["color"])
        data_cfg["mean"], data_cfg["std"] = pretrained or channel_stats(train_set.images)
    class_names = train_set.class_names
    in_channels = 1 if data_cfg["color"] == "gray" else 3

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

    meta = {"class_names": class_names, "input_size": [data_cfg["size"]] * 2, "color": data_cfg["color"],
            "mean": data_cfg["mean"], "std": data_cfg["std"], "crop_scale": data_cfg["crop_scale"],
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
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (out_dir / "run.json").write_text(json.dumps(
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
    steps_this_run, max_steps, interrupted = 0, cfg["train"]["max_steps"], False
    last_save = time.monotonic()
    started = time.monotonic()

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
            interrupted = bool(max_steps) and steps_this_run >= max_steps
            if rank == 0 and step + 1 < steps_per_epoch and (
                    interrupted or checkpoint_due(cfg["train"], epoch * steps_per_epoch + step + 1, last_save)):
                checkpoints.save(snapshot(epoch, step + 1))
                last_save = time.monotonic()
            if interrupted:
                log.info("stopping after %d steps (train.max_steps)", steps_this_run)
                break
        bar.close()
        if interrupted:
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
            checkpoints.save(snapshot(epoch + 1, 0))
            last_save = time.monotonic()
    if rank == 0:
        writer.close()
        csv_file.close()
        if not interrupted:   # best.json marks a finished run (scripts/ablation.py skips those)
            (out_dir / "best.json").write_text(json.dumps(best, indent=2))
    if world > 1:
        dist.destroy_process_group()
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wscfer-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (see config/train_*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    parser.add_argument("--init", help="state_dict to initialise the backbone from (reported key by key)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.05")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(args.config, args.overrides)
    if args.init:
        cfg["model"]["init"] = args.init
    try:
        best = train(cfg, resume=args.resume)
    except (CheckpointError, DatasetError, TeacherError, FileNotFoundError) as error:
        # The user's data or run folder, not a bug: one line saying what, no traceback.
        log.error("%s", error)
        return 1
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
