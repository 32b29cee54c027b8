"""Training configuration: defaults, a YAML file on top, dotted overrides last.

    wscfer-train --config config/train_fer2013.yaml optim.lr=0.05 loss.aux=supcon

Override values are parsed as YAML (``0.05`` is a float, ``[48, 48]`` a list,
``null`` None).  A key that is not in the defaults is an error, so a typo
never silently trains the wrong thing.

A run folder keeps the configuration it was trained with (``config.yaml``);
``--resume`` compares a configuration given again with it
(:func:`differences`): the ``train`` section says how a run is executed
(device, threads, checkpoints, a step limit), not what it trains, so it may
change freely.
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
        "limit": 0,             # use N training images drawn with run.seed (0: all); for smoke runs
    },
    "model": {"arch": "resnet18",       # resnet18 | resnet10 | efficientnet_lite0 | faceapi
              "width": 64, "stem": "imagenet",  # ResNets only
              "pretrained": False,      # start from the backbone's published weights (wscfer-fetch-weights)
              "proj_dim": 128, "init": None},
    # wsc, not wscfer: in docs/ABLATION.md the partial consistency term costs accuracy and recall.
    "loss": {"aux": "wsc", "tau": 0.1, "tau_c": None, "lambda_aux": 0.5, "lambda_pcl": 0.5,
             "pcl_warmup_epochs": 0.0,  # lambda_pcl rises linearly from 0 over this many epochs (0: from the start)
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


# One line each in wscfer-train --help, above the section's keys.
SECTIONS = {
    "run": "the run folder and the seed",
    "data": "datasets, each {format: ..., root: ...} (formats in the README), image size and colour",
    "model": "the network",
    "loss": "the training objective and distillation teachers",
    "optim": "SGD with warm-up and cosine schedule",
    "augment": "changes to the augmentation of the two views",
    "train": "how the run is executed; free to change when resuming",
}
# Keys that may differ from the saved configuration when a run is resumed.
FREE_ON_RESUME = ("run.out_dir", "train.")
# null means "measured on the training images"; the saved configuration holds the measurement.
MEASURED = ("data.mean", "data.std")


class ConfigError(ValueError):
    """A configuration refused before any data is read; the message says which key and why."""


def _merge(base: dict, update: dict, where: str = "") -> dict:
    if not isinstance(update, dict):
        raise ConfigError(f"config section {where.rstrip('.') or 'top level'} must be a mapping, got {update!r}")
    for key, value in update.items():
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {where}{key!r} (known here: {known})")
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "augment":
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value
    return base


def apply_override(cfg: dict, override: str) -> None:
    """Apply one ``section.key=value`` override in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    dotted, raw = override.split("=", 1)
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown config key {dotted!r}")
        node = node[part]
    if leaf not in node and node is not cfg.get("augment"):
        raise ConfigError(f"unknown config key {dotted!r}")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: the value is not YAML ({error.problem})") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """The defaults, then the YAML file at ``path`` (if any), then the overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            _merge(cfg, _read_yaml(Path(path)))
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    for override in overrides:
        apply_override(cfg, override)
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from None


def flatten(cfg: dict, prefix: str = "") -> dict:
    """``{"optim.lr": 0.1, ...}``: one entry per leaf, sections joined with dots."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict):   # an empty one (augment: {}) has no leaves
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(saved: dict, given: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, given value) for each setting that would change what a resumed run trains."""
    saved_flat, given_flat = flatten(saved), flatten(given)
    changed = []
    for key in sorted(saved_flat.keys() | given_flat.keys()):
        old, new = saved_flat.get(key), given_flat.get(key)
        if old == new or key.startswith(FREE_ON_RESUME) or (key in MEASURED and new is None):
            continue
        changed.append((key, old, new))
    return changed


def as_yaml(value) -> str:
    """A value as it would be written in an override: null, true, 0.1, [48, 48], {}."""
    return yaml.safe_dump([value], default_flow_style=True, width=1000).strip()[1:-1]


def config_help(defaults: dict) -> str:
    """Every section and key of ``defaults`` with its default value, for --help."""
    lines = []
    for section, values in defaults.items():
        lines.append(f"  {section}: {SECTIONS.get(section, '')}".rstrip())
        lines += [f"    {key} = {as_yaml(value)}" for key, value in flatten(values, f"{section}.").items()]
    return "\n".join(lines)


def validate(cfg: dict) -> None:
    """ConfigError naming the first key whose value cannot train: run before any data is read.

    Unknown keys are refused where the configuration is read; this checks
    what the defaults cannot: the augmentation's keys, the choices of
    ``data.color``, ``model.arch`` and ``loss.aux``, and the sizes that must
    be positive.
    """
    from wscfer_ros.perception.contract import COLORS

    from .augment import DEFAULTS as AUGMENT_DEFAULTS
    from .losses import AUX_CHOICES
    from .model import ARCHS

    if not isinstance(cfg.get("augment"), dict):
        raise ConfigError(f"augment must be a mapping, got {cfg.get('augment')!r}")
    for key in cfg["augment"]:
        if key not in AUGMENT_DEFAULTS:
            raise ConfigError(f"unknown config key 'augment.{key}' (known here: {', '.join(sorted(AUGMENT_DEFAULTS))})")
    choices = {"data.color": COLORS, "model.arch": ARCHS, "loss.aux": AUX_CHOICES}
    for dotted, allowed in choices.items():
        section, key = dotted.split(".")
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{dotted} must be one of {', '.join(allowed)}, got {as_yaml(cfg[section][key])}")
    for dotted in ("data.size", "optim.batch_size", "optim.epochs"):
        section, key = dotted.split(".")
        value = cfg[section][key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{dotted} must be a positive integer, got {as_yaml(value)}")
    warmup = cfg["loss"]["pcl_warmup_epochs"]
    if not isinstance(warmup, (int, float)) or isinstance(warmup, bool) or not warmup >= 0:
        raise ConfigError(f"loss.pcl_warmup_epochs must be a number of epochs >= 0, got {as_yaml(warmup)}")
    if not isinstance(cfg["optim"]["lr"], (int, float)) or not cfg["optim"]["lr"] > 0:
        raise ConfigError(f"optim.lr must be a positive number, got {as_yaml(cfg['optim']['lr'])}")
