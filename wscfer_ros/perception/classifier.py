"""The expression model: an ONNX file run with ONNX Runtime.

Everything needed to run the model comes from the file itself: input float32
NCHW, output 0 the logits ``[N, C]``, and ``metadata_props`` holding the
model-file contract (``contract.py``).  Both are checked at load, so a wrong
file fails at start with a message naming the file, never at the first face.
"""
import ctypes
import importlib.resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import Contract, ContractError

PROVIDER_CHOICES = ("auto", "cpu", "cuda")

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
# ORT's default log level (warnings and worse), and the level that only lets
# fatal messages through.
_ORT_LOG_WARNING = 2
_ORT_LOG_FATAL = 4


class ModelError(ValueError):
    """The model file is missing, corrupt or breaks the model-file contract."""


def default_model_path() -> Path:
    """The model shipped inside the package: ``wscfer_ros/models/default.onnx``."""
    return Path(str(importlib.resources.files("wscfer_ros") / "models" / "default.onnx"))


def resolve_model_path(model_path: str) -> Path:
    """Where a ``model_path`` parameter points.

    Empty means the shipped default; a bare file name that exists in the
    package's ``models/`` folder means that file; anything else is a path.
    """
    if not model_path:
        return default_model_path()
    shipped = default_model_path().parent / model_path
    if Path(model_path).name == model_path and shipped.is_file():
        return shipped
    return Path(model_path).expanduser()


class Classifier:
    """Runs the expression model on batches of face crops.

    ``providers`` is ``"auto"`` (CUDA when a session really runs on it, else
    CPU), ``"cpu"`` or ``"cuda"``; ``threads`` sets ONNX Runtime's intra-op
    threads (0 keeps its default).  ``busy_wait`` lets those threads spin
    between calls, as ONNX Runtime does by default: each call is a little
    faster, but at camera rate the threads never rest and a call costs many
    times its own CPU time (the paced table of ``benchmarks/bench_classifier.py``
    in ``benchmarks/results.md``), taking a core that a robot's other
    processes need; off by default.  After construction, ``provider`` is the
    execution provider in use, ``provider_note`` one sentence saying why, and
    ``provider_warning`` is set only when CUDA was asked for explicitly and
    is not in use.
    """

    def __init__(self, model_path: str = "", providers: str = "auto", threads: int = 0, busy_wait: bool = False):
        if providers not in PROVIDER_CHOICES:
            raise ValueError(f"providers must be one of {', '.join(PROVIDER_CHOICES)}, got {providers!r}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.model_path = resolve_model_path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if busy_wait else "0")
        cuda_unusable = None if providers == "cpu" else _why_cuda_cannot_run()
        self._session = self._open_session(options, try_cuda=providers != "cpu" and cuda_unusable is None)
        self.provider = self._session.get_providers()[0]
        self.provider_note, self.provider_warning = _describe_provider(providers, self.provider,
                                                                       cuda_unusable)

        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        try:
            self.contract = Contract.from_props(self.metadata)
        except ContractError as error:
            raise ModelError(f"{self.model_path}: {error}") from error.__cause__
        self.class_names = list(self.contract.class_names)
        self.input_size = self.contract.input_size
        self.color = self.contract.color
        self.crop_scale = self.contract.crop_scale
        self._check_signature()
        channels = self._input_channels
        mean = np.asarray(self.contract.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.contract.std, np.float32).reshape(1, -1, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        self._scale = np.broadcast_to(1.0 / (255.0 * std), (1, channels, 1, 1)).astype(np.float32)
        self._offset = np.broadcast_to(-mean / std, (1, channels, 1, 1)).astype(np.float32)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float32, rows sum to 1) for uint8 crops.

        ``crops`` are at ``input_size`` in the model's ``color``: ``[N, H, W]``
        for a gray model, ``[N, H, W, 3]`` (RGB) for an rgb one, as
        ``crops.crop_faces`` and ``colours.convert_crops`` make them.
        """
        crops = self._checked_crops(crops)
        count = len(crops)
        if count == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        pixels = crops[:, None] if crops.ndim == 3 else crops.transpose(0, 3, 1, 2)
        height, width = self.input_size
        batch = np.empty((count, self._input_channels, height, width), np.float32)
        np.multiply(pixels, self._scale, out=batch)
        batch += self._offset
        return _softmax(self._run(batch))

    def warm_up(self) -> None:
        """Run the model once, so the first real frame does not pay for ORT's lazy set-up."""
        height, width = self.input_size
        shape = (1, height, width) if self.color == "gray" else (1, height, width, 3)
        self.predict(np.zeros(shape, np.uint8))

    def _open_session(self, options: ort.SessionOptions, try_cuda: bool) -> ort.InferenceSession:
        # When CUDA cannot start (a GPU without the CUDA/cuDNN libraries this
        # onnxruntime was built for), ORT's global logger prints several lines
        # of library errors; the provider note says the same in one sentence.
        if try_cuda:
            ort.set_default_logger_severity(_ORT_LOG_FATAL)
        try:
            return ort.InferenceSession(str(self.model_path), sess_options=options,
                                        providers=[_CUDA, _CPU] if try_cuda else [_CPU])
        except Exception as error:  # ORT raises several unrelated types for a bad file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"{self.model_path}: not a valid ONNX model ({reason})") from error
        finally:
            if try_cuda:
                ort.set_default_logger_severity(_ORT_LOG_WARNING)

    def _check_signature(self) -> None:
        model_input = self._session.get_inputs()[0]
        if model_input.type != "tensor(float)" or len(model_input.shape) != 4:
            raise ModelError(f"{self.model_path}: input '{model_input.name}' must be a float32 NCHW "
                             f"tensor, got {model_input.type} with shape {model_input.shape}")
        batch, channels, height, width = model_input.shape
        allowed_channels = (1, 3) if self.color == "gray" else (3,)
        if channels not in allowed_channels:
            raise ModelError(f"{self.model_path}: input channel dimension is {channels!r}, a "
                             f"'{self.color}' model needs {' or '.join(map(str, allowed_channels))}")
        for name, dim, size in (("height", height, self.input_size[0]), ("width", width, self.input_size[1])):
            if isinstance(dim, int) and dim != size:
                raise ModelError(f"{self.model_path}: input {name} is {dim} but metadata "
                                 f"input_size says {size}")
        for key, values in (("mean", self.contract.mean), ("std", self.contract.std)):
            if len(values) not in (1, channels):
                raise ModelError(f"{self.model_path}: metadata '{key}' has {len(values)} values, the model has "
                                 f"{channels} channels: {self.metadata[key]!r}")

        output = self._session.get_outputs()[0]
        if len(output.shape) != 2:
            raise ModelError(f"{self.model_path}: output '{output.name}' must be logits [N, C], "
                             f"got shape {output.shape}")
        if isinstance(output.shape[1], int) and output.shape[1] != len(self.class_names):
            raise ModelError(f"{self.model_path}: output has {output.shape[1]} classes but "
                             f"class_names lists {len(self.class_names)}")
        self._input_name = model_input.name
        self._input_channels = channels
        # A model exported with a fixed batch is fed in chunks of that size.
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed_batch is None:
            logits = self._session.run(None, {self._input_name: batch})[0]
        else:
            chunks = []
            for start in range(0, len(batch), self._fixed_batch):
                chunk = batch[start:start + self._fixed_batch]
                padded = np.zeros((self._fixed_batch,) + batch.shape[1:], np.float32)
                padded[:len(chunk)] = chunk
                chunks.append(self._session.run(None, {self._input_name: padded})[0][:len(chunk)])
            logits = np.concatenate(chunks)
        if logits.shape != (len(batch), len(self.class_names)):
            raise ModelError(f"{self.model_path}: output shape {logits.shape} does not match "
                             f"{len(batch)} crops x {len(self.class_names)} class_names")
        return logits

    def _checked_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        expected = (self.input_size[0], self.input_size[1])
        if crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8, got {crops.dtype}")
        shape = [expected[0], expected[1]] + ([] if self.color == "gray" else [3])
        if crops.ndim != len(shape) + 1 or list(crops.shape[1:]) != shape:
            raise ValueError(f"crops for this {self.color} model must be [N, {', '.join(map(str, shape))}], "
                             f"got {list(crops.shape)}")
        return crops


def _why_cuda_cannot_run() -> str | None:
    """Why the CUDA provider cannot run on this machine; None when it may.

    onnxruntime-gpu lists CUDAExecutionProvider as available everywhere, and
    asking it for CUDA without a GPU only costs a failed library load and
    ORT's error messages; the NVIDIA driver says in microseconds whether
    there is a GPU.
    """
    if _CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA support"
    gpus = _cuda_device_count()
    if gpus is None:
        return "no NVIDIA driver on this machine (libcuda.so.1 not found)"
    if gpus == 0:
        return "the NVIDIA driver reports no usable GPU"
    return None


def _cuda_device_count() -> int | None:
    """GPUs the NVIDIA driver reports (0 if it fails to start), or None without a driver."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _describe_provider(requested: str, used: str, cuda_unusable: str | None) -> tuple[str, str | None]:
    """The provider note and, when CUDA was asked for and not obtained, the warning."""
    if used == _CUDA:
        return f"using {_CUDA}", None
    if requested == "cpu":
        return f"using {_CPU} as requested", None
    reason = cuda_unusable or (f"CUDAExecutionProvider failed to start on the GPU (this onnxruntime "
                               f"needs the CUDA {_ort_cuda_version()} and cuDNN libraries)")
    note = f"{reason}; using {used}"
    return note, (f"CUDA was requested: {note}" if requested == "cuda" else None)


def _ort_cuda_version() -> str:
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return "?"
    return str(getattr(build_and_package_info, "cuda_version", "?"))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)
