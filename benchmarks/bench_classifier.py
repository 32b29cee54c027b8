"""Expression classifier alone: latency of one ``Classifier.predict`` call, as a table.

    python benchmarks/bench_classifier.py [--model FILE] [--repeat 200] [--faces 1 4 16]

Measures :class:`wscfer_ros.perception.classifier.Classifier`, the object the node runs
(uint8 crops in, probabilities out: normalisation, ONNX Runtime and softmax),
for 1, 4 and 16 faces per call, CPU provider with 1 and 2 intra-op threads,
and the CUDA provider when a GPU really runs it.

Precision variants are derived from ``--model`` in a temporary folder (from
its float32 weights: a file exported with fp16 or int8 weights is measured
as it is, then widened to fp32 first):

* ``fp16 weights`` and ``int8 weights``: ``wscfer-export``'s storage
  (``store_fp16``, ``store_int8``): smaller files; ONNX Runtime folds the
  casts at load and computes in fp32.
* ``fp16 compute``: every tensor in float16 (ONNX Runtime's float16
  converter, float32 input and output kept).
* ``int8 QDQ``: ONNX Runtime's static quantisation as ``wscfer-export
  --static-int8`` does it (int8 weights and activations, first convolution
  float), calibrated on FER2013 training faces; skipped when they are absent.

``--models`` adds other files as they are (e.g. a distilled student).  A
second table compares ONNX Runtime session options on a raw session of
``--model``, and the cost ``Classifier.predict`` adds around ``session.run``.
A third paces the calls as a camera does (``--rate``, default 30 Hz) with
``busy_wait`` off and on: back-to-back calls hide what busy-waiting costs,
the CPU time its threads burn between frames ("CPU per call" counts this
process's CPU time over the whole interval, spinning included).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (BenchmarkError, add_model_argument, argument_parser, check_positive, machine_description,
                    ms, percentiles, print_table, resolve_model, time_calls)

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
CALIBRATION_IMAGES = 128
TARGET = "target (issue 5): <= 1.5 ms for one face on the 2-core CPU"


def derive_variants(model: Path, precision: str, folder: Path,
                    calibration: str | None) -> tuple[list[tuple[str, Path]], list[str]]:
    """(label, file) of ``model`` and each precision variant of it, written to ``folder``; and notes."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from wscfer_train.export import store_fp16, store_int8

    if precision == "fp32":
        fp32_path, variants, notes = model, [], []
    else:
        fp32_path = folder / "fp32.onnx"
        fold_constants(model, fp32_path)
        variants = [(f"{model.name} ({precision} weights)", model)]
        notes = [f"the variants are derived from {model.name}'s {precision} weights, widened to float32"]
    variants.append(("fp32", fp32_path))
    for label, convert in (("fp16 weights", store_fp16), ("int8 weights", store_int8)):
        model = onnx.load(str(fp32_path))
        convert(model)
        path = folder / (label.replace(" ", "-") + ".onnx")
        onnx.save(model, str(path))
        variants.append((label, path))

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    path = folder / "fp16-compute.onnx"
    onnx.save(model, str(path))
    variants.append(("fp16 compute", path))

    if calibration is None:
        from wscfer_train.data import data_root
        calibration = str(data_root() / "fer2013" / "train")
    try:
        path = folder / "int8-qdq.onnx"
        quantize_qdq(fp32_path, path, calibration_inputs(fp32_path, calibration))
        variants.append(("int8 QDQ", path))
    except (FileNotFoundError, ValueError) as error:
        notes.append(f"int8 QDQ skipped: no calibration faces ({error})")
    return variants, notes


def fold_constants(model: Path, output: Path) -> None:
    """``model`` with its constant subgraphs folded by ONNX Runtime, saved as ``output``.

    Weights stored as fp16 or int8 and widened by Cast (and Mul) nodes
    become plain float32 weights: the graph ONNX Runtime runs anyway.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(output)
    ort.InferenceSession(str(model), options, providers=[_CPU])


def calibration_inputs(model_path: Path, calibration: str) -> np.ndarray:
    """Real faces normalised as the model expects them, float32 NCHW."""
    from wscfer_ros.perception.classifier import Classifier
    from wscfer_train.export import load_images

    classifier = Classifier(str(model_path), providers="cpu")
    images = load_images(calibration, classifier.input_size[0], classifier.color, CALIBRATION_IMAGES)
    mean = np.asarray(classifier.contract.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(classifier.contract.std, np.float32).reshape(1, -1, 1, 1)
    pixels = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return (pixels.astype(np.float32) / 255.0 - mean) / std


def quantize_qdq(fp32_path: Path, output: Path, inputs: np.ndarray) -> None:
    """ONNX Runtime's static QDQ quantisation, exactly as ``wscfer-export --static-int8`` does it."""
    import onnx
    from wscfer_train.export import quantize_static_int8

    with tempfile.TemporaryDirectory() as work:
        quantized = quantize_static_int8(fp32_path, Path(work), inputs)
    # quantize_static drops the metadata the Classifier needs; copy it over.
    metadata = onnx.load(str(fp32_path), load_external_data=False).metadata_props
    onnx.helper.set_model_props(quantized, {prop.key: prop.value for prop in metadata})
    onnx.save(quantized, str(output))


def random_crops(classifier, faces: int) -> np.ndarray:
    height, width = classifier.input_size
    shape = (faces, height, width) if classifier.color == "gray" else (faces, height, width, 3)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def classifier_rows(variants, providers, faces_list, repeat, warmup) -> tuple[list[list[str]], list[str]]:
    from wscfer_ros.perception.classifier import Classifier, ModelError

    rows, notes = [], []
    for label, path in variants:
        size_mb = path.stat().st_size / 1e6
        for provider, threads in providers:
            try:
                classifier = Classifier(str(path), providers=provider, threads=threads)
            except ModelError as error:
                notes.append(f"{label}: cannot be loaded: {error}")
                break
            if provider == "cuda" and classifier.provider != _CUDA:
                notes.append(f"CUDA rows skipped: {classifier.provider_note}")
                continue
            for faces in faces_list:
                crops = random_crops(classifier, faces)
                samples = time_calls(lambda: classifier.predict(crops), repeat, warmup)
                p50, p95, p99 = percentiles(samples)
                rows.append([label, classifier.provider.replace("ExecutionProvider", ""), f"{size_mb:.1f}",
                             threads or "default", faces, ms(p50), ms(p95), ms(p99), ms(p50 / faces)])
    return rows, sorted(set(notes), key=notes.index)


def session_option_rows(fp32_path: Path, faces_list, repeat, warmup) -> list[list[str]]:
    """Raw ONNX Runtime sessions of the fp32 model with different options, and Classifier.predict beside them."""
    import onnxruntime as ort
    from wscfer_ros.perception.classifier import Classifier

    def options(threads=0, spinning=True, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = level
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    settings = [
        ("threads default (0)", options()),
        ("threads 1", options(threads=1)),
        ("threads 2", options(threads=2)),
        ("threads 2, no spin-wait", options(threads=2, spinning=False)),
        ("threads 2, basic graph optimisation", options(threads=2, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)),
        ("threads 2, extended graph optimisation",
         options(threads=2, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)),
    ]
    classifier = Classifier(str(fp32_path), providers="cpu", threads=2)
    rows = []
    for label, opts in settings:
        session = ort.InferenceSession(str(fp32_path), opts, providers=[_CPU])
        name = session.get_inputs()[0].name
        channels = session.get_inputs()[0].shape[1]
        for faces in faces_list:
            batch = np.random.default_rng(0).standard_normal(
                (faces, channels) + classifier.input_size).astype(np.float32)
            samples = time_calls(lambda: session.run(None, {name: batch}), repeat, warmup)
            rows.append([f"session.run, {label}", faces] + [ms(v) for v in percentiles(samples)])
    for faces in faces_list:
        crops = random_crops(classifier, faces)
        samples = time_calls(lambda: classifier.predict(crops), repeat, warmup)
        rows.append(["Classifier.predict, threads 2, no spin-wait (uint8 crops in, probabilities out)", faces]
                    + [ms(v) for v in percentiles(samples)])
    return rows


def paced_rows(model: Path, faces_list, rate: float, calls: int) -> list[list[str]]:
    """Classifier.predict called ``rate`` times a second, busy_wait off and on: latency and CPU per call."""
    from wscfer_ros.perception.classifier import Classifier

    rows = []
    for busy_wait in (False, True):
        classifier = Classifier(str(model), providers="cpu", threads=2, busy_wait=busy_wait)
        for faces in faces_list:
            crops = random_crops(classifier, faces)
            time_calls(lambda: classifier.predict(crops), 0, 5)
            samples, cpu_started = np.empty(calls), time.process_time()
            next_call = time.perf_counter()
            for index in range(calls):
                started = time.perf_counter()
                classifier.predict(crops)
                samples[index] = (time.perf_counter() - started) * 1000.0
                next_call += 1.0 / rate
                time.sleep(max(0.0, next_call - time.perf_counter()))
            cpu_per_call = (time.process_time() - cpu_started) * 1000.0 / calls
            rows.append([f"busy_wait {str(busy_wait).lower()}", faces, ms(np.percentile(samples, 50)),
                         ms(np.percentile(samples, 95)), ms(cpu_per_call)])
    return rows


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    add_model_argument(parser)
    parser.add_argument("--models", nargs="+", default=[], metavar="FILE",
                        help="more ONNX files to measure as they are")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per row (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before each row (default 20)")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 4, 16], help="faces per call")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU intra-op threads")
    parser.add_argument("--calibration", metavar="SPEC_OR_FOLDER",
                        help="faces for the int8 QDQ calibration: a folder of face images or a dataset "
                             "spec as YAML (default: the shared data's fer2013/train)")
    parser.add_argument("--no-variants", action="store_true",
                        help="measure --model (and --models) only, derive no precision variants")
    parser.add_argument("--no-session-options", action="store_true", help="leave out the session-options table")
    parser.add_argument("--rate", type=float, default=30.0, help="calls per second of the paced table (default 30)")
    args = parser.parse_args(argv)
    check_positive(parser, "--repeat", args.repeat)
    check_positive(parser, "--rate", args.rate)
    for value in args.faces:
        check_positive(parser, "--faces", value)
    if any(threads < 0 for threads in args.threads):
        parser.error("--threads must be >= 0 (0 = ONNX Runtime's default)")

    try:
        model = resolve_model(args.model)
        extra = [(Path(name).name, resolve_model(name)) for name in args.models]
        from wscfer_ros.perception.classifier import Classifier
        precision = Classifier(str(model), providers="cpu").metadata.get("precision", "fp32")
        print(machine_description())
        print(f"model: {model} (stored as {precision}); {args.repeat} timed calls per row after "
              f"{args.warmup} untimed; random uint8 crops\n")
        with tempfile.TemporaryDirectory(prefix="wscfer-bench-") as work:
            notes = []
            if args.no_variants or precision not in ("fp32", "fp16", "int8"):
                variants = [(precision, model)]
                if not args.no_variants:
                    notes.append(f"no variants derived: {model.name} computes in {precision}")
            else:
                variants, notes = derive_variants(model, precision, Path(work), args.calibration)
            providers = [("cpu", threads) for threads in args.threads] + [("cuda", 0)]
            rows, load_notes = classifier_rows(variants + extra, providers, args.faces, args.repeat, args.warmup)
            print("Classifier.predict latency per call (ms)\n")
            print_table(["model", "provider", "MB", "threads", "faces", "p50", "p95", "p99", "p50/face"], rows,
                        numeric_from=2)
            for note in notes + load_notes:
                print(f"- {note}")
            print(f"- {TARGET}\n")
            if not args.no_session_options:
                print(f"ONNX Runtime session options, {model.name}, CPU (ms per call)\n")
                print_table(["setting", "faces", "p50", "p95", "p99"],
                            session_option_rows(model, args.faces, args.repeat, args.warmup))
            print(f"\nClassifier.predict paced at {args.rate:g} Hz, CPU, 2 threads, {model.name} "
                  f"({args.repeat} calls per row; ms)\n")
            print_table(["setting", "faces", "p50", "p95", "CPU per call"],
                        paced_rows(model, args.faces, args.rate, args.repeat))
    except BenchmarkError as error:
        print(f"bench_classifier: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
