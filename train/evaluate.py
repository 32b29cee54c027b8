"""Evaluation of a model on a labelled face dataset, and the ``wscfer-eval`` command.

    wscfer-eval runs/fer2013_wscfer/best.pt --config config/train_fer2013.yaml --out runs/eval
    wscfer-eval model.onnx --format fer2013_folder --root fer2013/val --out runs/eval
    wscfer-eval model.onnx --format rafdb --root raf-basic --option split=test

The model is a ``best.pt`` written by ``wscfer-train`` or an ONNX file
following the node's model-file contract; an ONNX file is run exactly as the
node runs it, through :class:`wscfer_ros.perception.classifier.Classifier`.  The dataset
is decoded at the model's own input size and colour, and its classes are
matched to the model's by name.  One forward pass per image, no test-time
augmentation.  Prints accuracy, mean per-class recall and per-class recall;
``--out`` also writes ``metrics.json`` (with the confusion matrix) and
``confusion.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from tqdm import tqdm

from wscfer_ros.perception import contract

from .augment import prepare_eval
from .checkpoint import load_best
from .config import load_config
from .data import FaceDataset, data_root, load_dataset
from .metrics import confusion_matrix, summarize
from .model import WSCFERNet, build_model

log = logging.getLogger(__name__)

@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int,
                   device: torch.device) -> np.ndarray:
    """Logits for uint8 images, one forward pass per image (no test-time augmentation)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        outputs.append(model(prepare_eval(batch, mean, std)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs).numpy()


def evaluate_model(model, dataset, mean, std, batch_size: int, device) -> dict:
    """Accuracy, mean per-class recall, per-class recall and confusion matrix on ``dataset``."""
    predictions = predict_logits(model, dataset.images, mean, std, batch_size, device).argmax(1)
    confusion = confusion_matrix(dataset.labels, predictions, len(dataset.class_names))
    return summarize(confusion, dataset.class_names)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[WSCFERNet, dict, dict]:
    """The network of a ``best.pt`` (format: ``checkpoint.py``) in eval mode, its ``meta`` and its training config."""
    weights, meta, cfg = load_best(path, device)
    model = build_model(cfg["model"], len(meta["class_names"]), contract.channels(meta["color"]))
    model.load_state_dict(weights)
    return model.to(device).eval(), meta, cfg


@dataclass
class EvalModel:
    """A model ready for evaluation: what it expects, and a batched scoring function.

    ``predict`` takes uint8 images ``[N, H, W]`` or ``[N, H, W, 3]`` in
    ``color`` at ``input_size`` and returns scores ``[N, C]`` (logits or
    probabilities) whose arg-max is the predicted class.
    """

    path: Path
    kind: str                                   # "checkpoint" | "onnx"
    class_names: list[str]
    input_size: tuple[int, int]
    color: str
    predict: Callable[[np.ndarray], np.ndarray]


def open_checkpoint(path: str | Path, device: str = "auto") -> EvalModel:
    """A ``best.pt`` as an :class:`EvalModel`, on ``device`` ("auto": CUDA when available)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    model, meta, _ = load_checkpoint(path, torch_device)

    def predict(images: np.ndarray) -> np.ndarray:
        return predict_logits(model, images, meta["mean"], meta["std"], len(images), torch_device)

    return EvalModel(Path(path), "checkpoint", list(meta["class_names"]), tuple(meta["input_size"]),
                     meta["color"], predict)


def open_onnx(path: str | Path, providers: str = "auto") -> EvalModel:
    """An ONNX model file as an :class:`EvalModel`, run by the node's own classifier."""
    # Imported here so that evaluating checkpoints does not need onnxruntime.
    from wscfer_ros.perception.classifier import Classifier

    classifier = Classifier(str(Path(path).resolve()), providers=providers)
    log.info("%s: %s", path, classifier.provider_note)
    return EvalModel(Path(path), "onnx", list(classifier.class_names), classifier.input_size,
                     classifier.color, classifier.predict)


def open_model(path: str | Path, device: str = "auto", providers: str = "auto") -> EvalModel:
    """A ``.onnx`` file or a ``wscfer-train`` checkpoint, told apart by the file name's suffix."""
    return open_onnx(path, providers) if Path(path).suffix.lower() == ".onnx" else open_checkpoint(path, device)


def class_index_map(dataset_classes: list[str], model_classes: list[str]) -> np.ndarray:
    """For each dataset class, the index of the model's class of the same name.

    Classes the model has and the dataset lacks are allowed (predicting them
    is simply wrong); a dataset class the model does not know is an error.
    """
    unknown = [name for name in dataset_classes if name not in model_classes]
    if unknown:
        raise ValueError(f"the dataset's classes {unknown} are not among the model's classes {model_classes}; "
                         "a model can only be evaluated on classes it was trained on")
    return np.array([model_classes.index(name) for name in dataset_classes], np.int64)


def evaluate(model: EvalModel, dataset: FaceDataset, batch_size: int = 256) -> dict:
    """Metrics of ``model`` on ``dataset``, over the model's classes (see :func:`metrics.summarize`)."""
    to_model_class = class_index_map(dataset.class_names, model.class_names)
    expected = model.input_size + ((3,) if model.color == "rgb" else ())
    if dataset.images.shape[1:] != expected:
        raise ValueError(f"{dataset.name}: images are {list(dataset.images.shape[1:])}, the model takes "
                         f"{list(expected)} ({model.color})")
    predictions = np.empty(len(dataset), np.int64)
    with tqdm(total=len(dataset), desc=f"evaluating on {dataset.name}", unit="img", file=sys.stderr,
              disable=None) as progress:
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            predictions[start:stop] = model.predict(dataset.images[start:stop]).argmax(1)
            progress.update(stop - start)
    confusion = confusion_matrix(to_model_class[dataset.labels], predictions, len(model.class_names))
    return summarize(confusion, model.class_names)


def format_table(metrics: dict) -> str:
    """Per-class support and recall, then accuracy and mean recall, as aligned text."""
    width = max(len("class"), *map(len, metrics["per_class_recall"]))
    lines = [f"{'class':<{width}}  {'support':>7}  {'recall':>6}"]
    for name, recall in metrics["per_class_recall"].items():
        support = metrics["support"][name]
        lines.append(f"{name:<{width}}  {support:>7}  {recall:>6.4f}" if support else
                     f"{name:<{width}}  {support:>7}  {'-':>6}")
    lines.append(f"accuracy {metrics['accuracy']:.4f}  mean recall {metrics['mean_recall']:.4f}  "
                 f"({sum(metrics['support'].values())} images)")
    return "\n".join(lines)


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, path: str | Path) -> None:
    """Row-normalised confusion matrix with the counts, saved as a PNG picture."""
    # Figure without pyplot: no global backend state, renders with Agg on headless machines.
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion)
    support = confusion.sum(1, keepdims=True)
    rates = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    count = len(class_names)
    figure = Figure(figsize=(1.0 + 0.9 * count, 1.0 + 0.8 * count), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    for row in range(count):
        for column in range(count):
            axes.text(column, row, f"{rates[row, column]:.2f}\n({confusion[row, column]})", ha="center",
                      va="center", fontsize=8, color="white" if rates[row, column] > 0.5 else "black")
    axes.set_xticks(range(count), class_names, rotation=45, ha="right")
    axes.set_yticks(range(count), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    figure.savefig(path, dpi=120)


def write_results(out_dir: str | Path, metrics: dict, model: EvalModel, dataset: FaceDataset) -> dict:
    """``metrics.json`` and ``confusion.png`` in ``out_dir``; returns the JSON written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"model": str(model.path), "model_kind": model.kind, "dataset": dataset.name,
              "images": len(dataset), "dropped": dataset.dropped, "class_names": model.class_names, **metrics}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    title = (f"{model.path.name} on {dataset.name}\n"
             f"accuracy {metrics['accuracy']:.4f}, mean recall {metrics['mean_recall']:.4f}")
    plot_confusion(np.array(metrics["confusion"]), model.class_names, title, out_dir / "confusion.png")
    return record


def dataset_spec(args: argparse.Namespace) -> dict:
    """The dataset spec from ``--config`` (its data.val or data.train) or from ``--format``/``--root``."""
    if args.config:
        spec = load_config(args.config)["data"][args.config_data]
        if not spec:
            raise ValueError(f"{args.config} has no data.{args.config_data} dataset")
        return dict(spec)
    spec = {"format": args.format, "root": args.root}
    for option in args.option:
        key, separator, value = option.partition("=")
        if not separator or not key:
            raise ValueError(f"--option {option!r} is not of the form key=value")
        spec[key] = yaml.safe_load(value)
    return spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wscfer-eval", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a wscfer-train best.pt or an .onnx model file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="training YAML: evaluate on its dataset (data.val by default)")
    source.add_argument("--format", help="dataset format (see wscfer_train.data), with --root")
    parser.add_argument("--config-data", choices=("val", "train"), default="val",
                        help="which dataset of --config (default: val)")
    parser.add_argument("--root", help="dataset root, relative to WSCFER_DATA unless absolute")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a reader option (YAML value), e.g. split=test or usage=PrivateTest; repeatable")
    parser.add_argument("--out", help="folder for metrics.json and confusion.png")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument("--device", default="auto", help="checkpoints: auto | cpu | cuda (default: auto)")
    parser.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto",
                        help="ONNX files: ONNX Runtime execution provider (default: auto)")
    args = parser.parse_args(argv)
    if args.format and not args.root:
        parser.error("--format needs --root")
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        model = open_model(args.model, args.device, args.providers)
        height, width = model.input_size
        if height != width:
            raise ValueError(f"{args.model}: input size {height}x{width} is not square; the dataset "
                             "readers produce square faces")
        dataset = load_dataset(dataset_spec(args), size=height, color=model.color, data_root=data_root())
        metrics = evaluate(model, dataset, args.batch_size)
    except (OSError, ValueError, KeyError) as error:
        print(f"wscfer-eval: error: {error}", file=sys.stderr)
        return 1
    print(format_table(metrics))
    if args.out:
        write_results(args.out, metrics, model, dataset)
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'confusion.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
