"""``wscfer-export``: a ``wscfer-train`` checkpoint -> the ONNX file the node runs.

    wscfer-export runs/fer2013_wscfer/best.pt model.onnx
    wscfer-export runs/fer2013_wscfer/best.pt model-fp16.onnx --precision fp16
    wscfer-export runs/fer2013_wscfer/best.pt model-int8.onnx --precision int8 \\
        --calibration "{format: fer2013_folder, root: fer2013/train}"
    wscfer-export runs/fer2013_wscfer/best.pt model-qdq.onnx --precision int8 --static-int8 \\
        --calibration "{format: fer2013_folder, root: fer2013/train}"

The file follows the node's model-file contract: input ``input`` float32
NCHW with a dynamic batch, output ``logits`` [N, C], and ``metadata_props``
with class_names, input_size, color, mean, std and crop_scale, plus the
training facts (dataset, epochs, best epoch, validation accuracy and mean
recall, loss, architecture, label noise, precision).  BatchNorm is folded
into the convolutions.  The validation figures are the file's own: the file
as it is written (its weights as stored, with any logit adjustment or peer)
is run through the node's classifier on the run's validation set.  Where
that set is not on the machine, the file carries no validation figures
rather than the checkpoint's.

``--precision`` chooses how the weights are stored; compute, input and output
stay float32 in every case:

* ``fp32``: as trained.
* ``fp16``: each weight tensor in float16 followed by a Cast to float32, about
  half the size.
* ``int8``: each weight tensor as per-output-channel symmetric int8 and a
  float32 scale, dequantised by Cast and Mul, about a quarter of the size.
* ``int8 --static-int8``: ONNX Runtime's static quantisation (QDQ: weights and
  activations), calibrated on real face images; the first convolution stays
  float.  It computes in int8, which is not faster on every CPU (on a 2-core
  x86 machine it took 1.4x the time of fp32 per face); measure before
  shipping it.

``--logit-adjustment TAU`` subtracts TAU * log(training class prior) from
the classifier's bias before export (post-hoc logit adjustment, Menon et al.,
ICLR 2021): rare classes (disgust) are predicted more often, which raises
the mean per-class recall; TAU = 1 targets the balanced error.

``--peer NAME[:WEIGHT]`` (repeatable) exports an ensemble: the network's
class probabilities averaged with those of published peers (face-api,
human-models), each run inside the graph with its own preprocessing
(``ensemble.py``).

The casts and multiplications of fp16 and int8 have constant inputs, so ONNX
Runtime folds them when it loads the file and runs the same float32 graph
with rounded weights.

Before the file is written, ONNX Runtime (CPU) and torch compute the logits
of the same images (``--calibration`` images when given, else random ones).
The fp32 graph must agree within 1e-3; the stored file within a bound
relative to the largest logit, by precision (see ``RELATIVE_BOUNDS``).
A failed check exits non-zero and leaves no file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

from wscfer_ros.perception import contract

from .augment import prepare_eval
from .data import IMAGE_SUFFIXES, SkipImage, decode_image, data_root, load_dataset
from .ensemble import Ensemble, parse_peer
from .evaluate import evaluate, load_checkpoint, open_onnx
from .registry import FetchError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
FP32_MAX_DIFF = 1e-3
# Bound on max |logit difference| between the stored file and torch, as a
# fraction of the largest |logit| torch gives on the same images (at least 1).
# fp16 rounds each weight by at most 2^-11 of its value, int8 by at most
# 1/254 of its channel's largest weight, static int8 rounds activations too.
# Measured: 0.03 %, 0.7-0.9 % and 2-5 % on FER2013 ResNet-18s (width 32,
# after 1 and 2 epochs); up to 0.06 %, 1.1 % and 12 % on the random 8-wide
# networks of the tests.  The bounds sit well above both, so a failure means
# a broken conversion, not rounding.
RELATIVE_BOUNDS = {"fp16": 0.005, "int8": 0.05, "int8-static": 0.25}
PARITY_IMAGES = 64
CALIBRATION_IMAGES = 256
# ORT's log level that keeps only errors: its warnings about the optimiser are noise here.
_ORT_ERRORS_ONLY = 3


class ExportError(RuntimeError):
    """The export ran but its result is wrong (parity check failed, weights out of range)."""


class _Logits(torch.nn.Module):
    """``forward(x) -> logits`` only, so the tracer sees no Python flag argument."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def export(checkpoint: str | Path, output: str | Path, precision: str = "fp32", calibration: str | None = None,
           crop_scale: float | None = None, opset: int = 17, *, static_int8: bool = False,
           calibration_count: int = CALIBRATION_IMAGES, logit_adjustment: float = 0.0,
           peers: tuple[tuple[str, float], ...] = ()) -> dict:
    """Export ``checkpoint`` (a ``best.pt``) to the ONNX file ``output``; returns the report.

    ``calibration`` names real face images (a dataset spec as YAML, or a
    folder searched recursively), used for the parity check and, with
    ``static_int8``, to calibrate the activation ranges.  ``crop_scale``
    overrides the checkpoint's; ``logit_adjustment`` is TAU above; ``peers``
    (name, weight) pairs make the file an ensemble (``--peer``).  Raises
    ExportError when the parity check fails, ValueError / FileNotFoundError
    for bad arguments or inputs.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if static_int8 and (precision != "int8" or not calibration):
        raise ValueError("static int8 quantisation needs precision 'int8' and calibration images")
    if crop_scale is not None and not crop_scale > 0:
        raise ValueError(f"crop_scale must be positive, got {crop_scale}")
    stored_as = "int8-static" if static_int8 else precision
    output = Path(output)
    model, meta, cfg = load_checkpoint(checkpoint)
    if logit_adjustment:
        meta = adjust_logits(model, meta, logit_adjustment)
    if peers:
        model = Ensemble(model, meta["mean"], meta["std"], meta["class_names"], list(peers)).eval()
        meta = {**meta, "ensemble": [{"peer": name, "weight": weight} for name, weight in peers]}
    height, width = meta["input_size"]
    channels = contract.channels(meta["color"])

    if calibration:
        images = load_images(calibration, height, meta["color"], calibration_count)
        parity_source = f"{min(len(images), PARITY_IMAGES)} calibration images"
    else:
        # Without real faces, uniform noise still exercises every weight of the network.
        shape = (PARITY_IMAGES, height, width) + ((3,) if channels == 3 else ())
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        parity_source = f"{PARITY_IMAGES} random images"
    inputs = prepare_eval(torch.from_numpy(images), meta["mean"], meta["std"]).numpy()
    parity_inputs = inputs[:PARITY_IMAGES]
    with torch.no_grad():
        reference = model(torch.from_numpy(parity_inputs)).numpy()

    with tempfile.TemporaryDirectory(prefix="wscfer-export-") as work:
        fp32_path = Path(work) / "fp32.onnx"
        _torch_to_onnx(model, fp32_path, (channels, height, width), opset)
        fp32_size = fp32_path.stat().st_size
        fp32_diff = float(np.abs(onnx_logits(fp32_path, parity_inputs) - reference).max())
        log.info("parity fp32 graph: max |logit diff| %.3g (bound %.0e)", fp32_diff, FP32_MAX_DIFF)
        if not fp32_diff <= FP32_MAX_DIFF:
            raise ExportError(f"the ONNX graph disagrees with torch: max |logit diff| {fp32_diff:.3g} "
                              f"> {FP32_MAX_DIFF:.0e} on {parity_source}")
        if stored_as == "int8-static":
            stored = quantize_static_int8(fp32_path, Path(work), inputs)
        else:
            stored = onnx.load(str(fp32_path))
            if precision == "fp16":
                store_fp16(stored)
            elif precision == "int8":
                store_int8(stored)
        # The classifier that measures the file reads its contract from the metadata, so it goes in twice.
        helper.set_model_props(stored, model_metadata(meta, cfg, stored_as, crop_scale))
        meta = {**meta, "val": measure_file(stored, Path(work) / "measured.onnx", meta, cfg)}
        metadata = model_metadata(meta, cfg, stored_as, crop_scale)
        helper.set_model_props(stored, metadata)
        onnx.checker.check_model(stored)
        diff, bound, agreement = _write_checked(stored, output, parity_inputs, reference, stored_as)

    return {
        "output": str(output), "precision": stored_as, "size_bytes": output.stat().st_size,
        "fp32_size_bytes": fp32_size,
        "parity": {"images": parity_source, "fp32_max_abs_diff": fp32_diff, "fp32_bound": FP32_MAX_DIFF,
                   "max_abs_diff": diff, "bound": bound, "argmax_agreement": agreement},
        "metadata": metadata,
    }


def adjust_logits(model: torch.nn.Module, meta: dict, tau: float) -> dict:
    """Shift the classifier's bias by -tau * log(prior) in place; returns the meta that records it.

    The prior is the class frequency of the run's training labels
    (``meta["class_counts"]``, written by wscfer-train).
    """
    counts = meta.get("class_counts")
    if counts is None:
        raise ValueError("--logit-adjustment needs the training class counts, which this checkpoint does not "
                         "record (it predates them): train it again with wscfer-train")
    counts = torch.tensor(counts, dtype=torch.float32)
    if len(counts) != len(meta["class_names"]) or not bool((counts > 0).all()):
        raise ValueError(f"--logit-adjustment: every class needs training images, the counts are "
                         f"{dict(zip(meta['class_names'], counts.int().tolist()))}")
    with torch.no_grad():
        model.classifier.bias -= tau * torch.log(counts / counts.sum())
    return {**meta, "logit_adjustment": tau}


def measure_file(stored: onnx.ModelProto, path: Path, meta: dict, cfg: dict) -> dict:
    """``meta["val"]`` for the file about to be written, saved to ``path`` and run by the node's classifier
    on the run's validation set; without that set on this machine only the best epoch is kept."""
    checkpoint_val = meta.get("val", {})
    kept = {"epoch": checkpoint_val["epoch"]} if "epoch" in checkpoint_val else {}
    data = cfg["data"]
    try:
        if not data.get("val"):
            raise FileNotFoundError("the run names none")
        val_set = load_dataset(data["val"], size=data["size"], color=data["color"], data_root=data_root())
    except FileNotFoundError as error:
        log.warning("validation set not found (%s): the file carries no validation figures", error)
        return kept
    onnx.save(stored, str(path))
    metrics = evaluate(open_onnx(path, "cpu"), val_set)
    log.info("the file as written: validation accuracy %.4f, mean recall %.4f (the checkpoint: %.4f, %.4f)",
             metrics["accuracy"], metrics["mean_recall"], checkpoint_val.get("accuracy", float("nan")),
             checkpoint_val.get("mean_recall", float("nan")))
    return {**kept, **{key: metrics[key] for key in ("accuracy", "mean_recall", "per_class_recall")}}


def model_metadata(meta: dict, cfg: dict, precision: str, crop_scale: float | None = None) -> dict[str, str]:
    """The ``metadata_props`` of the exported file: the contract's keys, then the training facts."""
    scale = crop_scale if crop_scale is not None else meta["crop_scale"]
    return {**contract.Contract.from_meta({**meta, "crop_scale": scale}).to_props(),
            **contract.training_facts(meta, val_dataset=cfg.get("data", {}).get("val"), init=cfg.get("model", {}).get("init"),
                             precision=precision)}


def store_fp16(model: onnx.ModelProto) -> None:
    """Store every weight tensor as float16 followed by a Cast back to float32 (in place)."""
    casts = []
    for weight in _weight_initializers(model.graph):
        name = weight.name
        values = numpy_helper.to_array(weight)
        if np.abs(values).max() > np.finfo(np.float16).max:
            raise ExportError(f"weight {name} exceeds the float16 range; export in fp32 or int8")
        weight.CopyFrom(numpy_helper.from_array(values.astype(np.float16), name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT))
    _prepend_nodes(model.graph, casts)


def store_int8(model: onnx.ModelProto) -> None:
    """Store every weight tensor as per-output-channel symmetric int8 with a float32 scale (in place).

    The weight is rebuilt as ``Cast(q, float) * scale``.  DequantizeLinear
    would say the same in one node, but ONNX Runtime keeps DequantizeLinear
    nodes unfolded (its QDQ fusions look for them) and then cannot prepare
    the convolutions' weights at load: measured 1.5x slower per face.
    """
    nodes = []
    for weight in _weight_initializers(model.graph):
        name = weight.name
        values = numpy_helper.to_array(weight)
        channels = values.reshape(len(values), -1)
        scale = np.abs(channels).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        scale = scale.astype(np.float32).reshape((-1,) + (1,) * (values.ndim - 1))
        quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
        weight.CopyFrom(numpy_helper.from_array(quantized, name + "_int8"))
        model.graph.initializer.append(numpy_helper.from_array(scale, name + "_scale"))
        nodes += [helper.make_node("Cast", [name + "_int8"], [name + "_int8_as_float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [name + "_int8_as_float", name + "_scale"], [name])]
    _prepend_nodes(model.graph, nodes)


def load_images(source: str, size: int, color: str, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` uint8 face images, ``size`` x ``size`` in ``color``, drawn at random with ``seed``.

    ``source`` is a dataset spec as YAML (``"{format: fer2013_folder, root:
    fer2013/train}"``, roots relative to WSCFER_DATA) or a folder searched
    recursively for image files.  Images are decoded and resized as the
    dataset readers do for training.
    """
    rng = np.random.default_rng(seed)
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        files = [files[index] for index in sorted(rng.permutation(len(files))[:count])]
        images, unreadable = [], []
        for path in files:
            try:
                images.append(decode_image(path, size, color, None))
            except SkipImage:
                unreadable.append(path)
        if unreadable:
            log.warning("%d unreadable calibration image(s) left out, e.g. %s", len(unreadable), unreadable[0])
        if not images:
            raise ValueError(f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
        return np.stack(images)
    spec = yaml.safe_load(source)
    if not isinstance(spec, dict):
        raise ValueError(f"calibration {source!r} is neither a folder nor a dataset spec such as "
                         "'{format: fer2013_folder, root: fer2013/train}'")
    dataset = load_dataset(spec, size=size, color=color, data_root=data_root())
    return dataset.images[np.sort(rng.permutation(len(dataset))[:count])]


def onnx_logits(path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Output 0 of the ONNX file for float32 ``inputs``, with ONNX Runtime on the CPU."""
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERRORS_ONLY
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _torch_to_onnx(model: torch.nn.Module, path: Path, input_shape: tuple[int, int, int], opset: int) -> None:
    """Trace ``model`` in eval mode to ``path``; constant folding folds BatchNorm into the convolutions.

    The TorchScript exporter (``dynamo=False``) is used because torch's
    default exporter needs the ``onnxscript`` package, which is not a
    dependency; torch marks the TorchScript one deprecated, hence the
    silenced warnings.
    """
    example = torch.zeros((2,) + input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The contract fixes the input size, so sizes the tracer turns into constants are constants.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")   # a slice it leaves to ORT
        torch.onnx.export(_Logits(model).eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    left = [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "BatchNormalization"]
    if left:
        raise ExportError(f"BatchNormalization nodes were not folded: {left}")


def quantize_static_int8(fp32_path: Path, work: Path, inputs: np.ndarray) -> onnx.ModelProto:
    """ONNX Runtime's static QDQ quantisation (per-channel int8 weights, int8 activations) calibrated on ``inputs``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(np.array_split(inputs, max(1, len(inputs) // 32)))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared, quantized = work / "prepared.onnx", work / "int8-static.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    # The first convolution stays float: rounding the normalised pixels and its
    # few input-channel weights to int8 alone moved the logits by 11 % of their
    # range on a FER2013 model; all other layers quantised together move them by 2 %.
    first_layer = [node.name for node in onnx.load(str(prepared)).graph.node if INPUT_NAME in node.input]
    quantize_static(str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=first_layer)
    return onnx.load(str(quantized))


def _write_checked(model: onnx.ModelProto, output: Path, inputs: np.ndarray, reference: np.ndarray,
                   stored_as: str) -> tuple[float, float, float]:
    """Save ``model`` next to ``output``, check its logits against ``reference``, then rename it into place.

    Returns the max |logit difference|, its bound, and the fraction of
    images with the same arg-max as torch.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    try:
        onnx.save(model, str(temporary))
        logits = onnx_logits(temporary, inputs)
        diff = float(np.abs(logits - reference).max())
        bound = FP32_MAX_DIFF if stored_as == "fp32" else \
            RELATIVE_BOUNDS[stored_as] * max(1.0, float(np.abs(reference).max()))
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        log.info("parity %s file: max |logit diff| %.3g (bound %.3g), arg-max agreement %.1f %%",
                 stored_as, diff, bound, 100 * agreement)
        if not diff <= bound:
            raise ExportError(f"the {stored_as} file disagrees with torch: max |logit diff| {diff:.3g} "
                              f"> bound {bound:.3g} (arg-max agreement {100 * agreement:.1f} %)")
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    return diff, bound, agreement


def _weight_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The float32 initializers of at least two dimensions: convolution and linear weights, not biases."""
    return [tensor for tensor in graph.initializer if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) >= 2]


def _prepend_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Put ``nodes`` first, so that they come before every node that reads their outputs."""
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wscfer-export", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="best.pt written by wscfer-train")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="weight storage (default fp32)")
    parser.add_argument("--static-int8", action="store_true",
                        help="with --precision int8: quantise activations too (QDQ), calibrated on --calibration")
    parser.add_argument("--calibration", metavar="SPEC_OR_FOLDER",
                        help="real face images: a dataset spec as YAML or a folder of images; used for the "
                             "parity check and the static int8 calibration (default: random images for parity)")
    parser.add_argument("--calibration-count", type=int, default=CALIBRATION_IMAGES,
                        help=f"images drawn from --calibration (default {CALIBRATION_IMAGES})")
    parser.add_argument("--crop-scale", type=float, help="override the checkpoint's crop_scale in the metadata")
    parser.add_argument("--logit-adjustment", type=float, default=0.0, metavar="TAU",
                        help="subtract TAU * log(training class prior) from the logits (see above; default 0)")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME[:WEIGHT]",
                        help="average the network's probabilities with a published peer's "
                             "(face-api, human-models; weight default 1, the network's is 1); repeatable")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    args = parser.parse_args(argv)
    if args.static_int8 and (args.precision != "int8" or not args.calibration):
        parser.error("--static-int8 needs --precision int8 and --calibration")
    if args.calibration_count < 1:
        parser.error("--calibration-count must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        report = export(args.checkpoint, args.output, args.precision, args.calibration, args.crop_scale, args.opset,
                        static_int8=args.static_int8, calibration_count=args.calibration_count,
                        logit_adjustment=args.logit_adjustment, peers=tuple(parse_peer(p) for p in args.peer))
    except (ExportError, OSError, ValueError, FetchError) as error:
        print(f"wscfer-export: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
