"""The model-file contract: what an expression model carries besides its weights.

An ONNX model file's ``metadata_props`` hold the six keys every reader
needs (:data:`KEYS`: ``class_names``, ``input_size``, ``color``, ``mean``,
``std``, ``crop_scale``; JSON except ``color``) and the training facts
(dataset, epochs, validation scores, precision, ...).  A ``wscfer-train``
checkpoint's ``meta`` holds the same six as plain Python values.  This
module is the one place that writes and reads both: ``wscfer-export``
writes with :meth:`Contract.to_props` and :func:`training_facts`, the
classifier reads with :meth:`Contract.from_props`, the trainer, evaluation
and distillation use :meth:`Contract.to_meta` / :meth:`Contract.from_meta`
and :func:`channels`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

#: The colours a model may be trained on (its crops' colour).
COLORS = ("gray", "rgb")
#: The metadata every model file (and every checkpoint's meta) holds.
KEYS = ("class_names", "input_size", "color", "mean", "std", "crop_scale")


class ContractError(ValueError):
    """Metadata that breaks the contract; the message names the key and what is wrong."""


def channels(color: str) -> int:
    """Input channels of a model trained on ``color`` crops: 1 for gray, otherwise 3."""
    return 1 if color == "gray" else 3


@dataclass(frozen=True)
class Contract:
    """The six facts a model's reader needs, checked."""

    class_names: tuple[str, ...]
    input_size: tuple[int, int]          # height, width
    color: str                           # one of COLORS
    mean: tuple[float, ...]              # per channel (or one for all), 0..1 units
    std: tuple[float, ...]
    crop_scale: float                    # enlargement of the detector's box before the square crop

    @property
    def channels(self) -> int:
        return channels(self.color)

    @classmethod
    def from_props(cls, props: dict[str, str]) -> Contract:
        """The contract in an ONNX file's ``metadata_props``; ContractError names the first bad key."""
        for key in KEYS:
            if key not in props:
                raise ContractError(f"metadata key '{key}' is missing (required: {', '.join(KEYS)})")

        def bad(key: str, problem: str) -> ContractError:
            return ContractError(f"metadata '{key}' {problem}: {props[key]!r}")

        def parsed(key: str):
            try:
                return json.loads(props[key])
            except json.JSONDecodeError as error:
                raise bad(key, f"is not valid JSON ({error})") from error

        def numbers(key: str) -> tuple[float, ...]:
            values = parsed(key)
            if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
                raise bad(key, "must be a non-empty JSON list of numbers")
            return tuple(float(v) for v in values)

        color = props["color"].strip()
        if color not in COLORS:
            raise bad("color", f"must be one of {', '.join(COLORS)}")
        class_names = parsed("class_names")
        if (not isinstance(class_names, list) or not class_names
                or not all(isinstance(name, str) and name for name in class_names)
                or len(set(class_names)) != len(class_names)):
            raise bad("class_names", "must be a JSON list of distinct non-empty strings")
        input_size = parsed("input_size")
        if (not isinstance(input_size, list) or len(input_size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
            raise bad("input_size", "must be a JSON list [height, width] of positive integers")
        mean, std = numbers("mean"), numbers("std")
        if any(value <= 0 for value in std):
            raise bad("std", "values must be positive")
        crop_scale = parsed("crop_scale")
        if not _is_number(crop_scale) or crop_scale <= 0:
            raise bad("crop_scale", "must be a positive JSON number")
        return cls(tuple(class_names), (input_size[0], input_size[1]), color, mean, std, float(crop_scale))

    def to_props(self) -> dict[str, str]:
        """The contract as ``metadata_props`` (what :meth:`from_props` reads back)."""
        return {
            "class_names": json.dumps(list(self.class_names)),
            "input_size": json.dumps(list(self.input_size)),
            "color": self.color,
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "crop_scale": json.dumps(float(self.crop_scale)),
        }

    @classmethod
    def from_meta(cls, meta: dict) -> Contract:
        """The contract in a checkpoint's ``meta`` (plain lists and numbers, as :meth:`to_meta` wrote)."""
        return cls(tuple(meta["class_names"]), tuple(meta["input_size"]), meta["color"], tuple(meta["mean"]),
                   tuple(meta["std"]), float(meta["crop_scale"]))

    def to_meta(self) -> dict:
        """The contract as a checkpoint's ``meta`` entries (lists, loadable with ``weights_only=True``)."""
        return {"class_names": list(self.class_names), "input_size": list(self.input_size), "color": self.color,
                "mean": list(self.mean), "std": list(self.std), "crop_scale": self.crop_scale}


def training_facts(meta: dict, *, val_dataset, init: str | None, precision: str) -> dict[str, str]:
    """The ``metadata_props`` that say how a model was made, from a checkpoint's ``meta``.

    ``val_dataset`` is the run's validation reader spec, ``init`` the weights
    it started from (``--init``), ``precision`` how the file stores its
    weights.  Facts the checkpoint does not record are left out.
    """
    val = meta.get("val", {})
    facts = {
        "dataset": meta.get("dataset"),
        "val_dataset": json.dumps(val_dataset) if val_dataset else None,
        "epochs": json.dumps(meta["epochs"]) if "epochs" in meta else None,
        # A run that started from other weights (--init): its epochs are on top of theirs.
        "init": init,
        "teachers": json.dumps(meta["teachers"]) if meta.get("teachers") else None,
        "best_epoch": json.dumps(val["epoch"]) if "epoch" in val else None,
        "val_accuracy": json.dumps(round(val["accuracy"], 4)) if "accuracy" in val else None,
        "val_mean_recall": json.dumps(round(val["mean_recall"], 4)) if "mean_recall" in val else None,
        "val_per_class_recall": json.dumps({name: round(recall, 4) for name, recall
                                            in val["per_class_recall"].items()})
        if "per_class_recall" in val else None,
        "loss": meta.get("loss"),
        "arch": meta.get("arch"),
        "label_noise": json.dumps(meta["label_noise"]) if "label_noise" in meta else None,
        "logit_adjustment": json.dumps(meta["logit_adjustment"]) if meta.get("logit_adjustment") else None,
        "ensemble": json.dumps(meta["ensemble"]) if meta.get("ensemble") else None,
        "precision": precision,
        "exported_by": "wscfer-export",
    }
    return {key: value for key, value in facts.items() if value is not None}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
