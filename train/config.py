"""Training configuration: defaults, a YAML file on top, dotted overrides last.

    wscfer-train --config config/train_fer2013.yaml optim.lr=0.05 loss.aux=supcon

Override values are parsed as YAML (``0.05`` is a float, ``[48, 48]`` a list,
``null`` None).  A key that is not in the defaults is an error, so a typo
never silently trains the wrong thing.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "run": {"name": "wscfer", "out_dir": "runs/wscfer", "seed": 0},
    "data": {
        "train": None,          # reader spec, see wscfer_train.data.load_dataset
        "val": None,
        "size": 48,             # model input size (square), images are stored at this size
        "color": "gray",        # gray | rgb
        "mean": None,           # null: measured on the training images
        "std": None,
        "crop_scale": 1.25,     # written into the exported model for the node's face crops
        "label_noise": 0.0,     # fraction of training labels flipped to another class
        "noise_seed": 0,
        "limit": 0,             # use only the first N training images (0: all); for smoke runs
    },
    "model": {"arch": "resnet18",       # resnet18 | resnet10 | efficientnet_lite0 | faceapi
              "width": 64, "stem": "imagenet",  # ResNets only
              "pretrained": False,      # start from the backbone's published weights (wscfer-fetch-weights)
              "proj_dim": 128, "init": None},
    "loss": {"aux": "wscfer", "tau": 0.1, "tau_c": None, "lambda_aux": 0.5, "lambda_pcl": 0.5,
             "label_smoothing": 0.0,
             "teachers": [],            # best.pt files to distill from (see wscfer_train.distill)
             "distill_weight": 0.5,     # L_cls -> (1 - w) L_cls + w L_kd when there are teachers
             "distill_temperature": 4.0},
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "batch_size": 128,
              "epochs": 30, "warmup_epochs": 1.0},
    "augment": {},              # overrides of wscfer_train.augment.DEFAULTS
    "train": {"device": "auto", "amp": True, "threads": 0,
              "checkpoint_minutes": 10.0,   # a mid-epoch checkpoint at most this long after the last one
              "checkpoint_steps": 0,        # and one every N global steps (0: only by time and at epoch ends)
              "keep_checkpoints": 2,        # rolling checkpoints kept; --resume falls back to an older one
              "eval_batch_size": 512, "max_steps": 0},
}


def _merge(base: dict, update: dict, where: str = "") -> dict:
    for key, value in update.items():
        if key not in base:
            known = ", ".join(sorted(base))
            raise KeyError(f"unknown config key {where}{key!r} (known here: {known})")
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "augment":
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value
    return base


def apply_override(cfg: dict, override: str) -> None:
    """Apply one ``section.key=value`` override in place."""
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value")
    dotted, raw = override.split("=", 1)
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise KeyError(f"unknown config key {dotted!r}")
        node = node[part]
    if leaf not in node and node is not cfg.get("augment"):
        raise KeyError(f"unknown config key {dotted!r}")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        with open(path) as f:
            _merge(cfg, yaml.safe_load(f) or {})
    for override in overrides:
        apply_override(cfg, override)
    return cfg
