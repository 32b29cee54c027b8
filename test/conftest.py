"""Shared fixtures: where the real data lives, a tiny ONNX model, an isolated ROS set-up.

Data is found through ``WSCFER_DATA`` (default ``../shared/data`` beside the
repository root); tests that need it skip with the reason when it is absent.
A ROS test module uses ``ros_dir`` (its own ROS domain and log folder),
``model_file`` and ``client``.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from wscfer_ros.perception.contract import Contract

REPO_ROOT = Path(__file__).resolve().parents[1]
FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def data_root() -> Path:
    return Path(os.environ.get("WSCFER_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set WSCFER_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return _require(data_root() / "media")


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    return _require(data_root() / "fer2013")


@pytest.fixture(scope="session")
def muxspace_dir() -> Path:
    return _require(data_root() / "muxspace")


def write_tiny_model(path: Path, *, size=48, channels=1, color="gray", classes=FER_CLASSES,
                     crop_scale=1.25, metadata=None) -> Path:
    """A real ONNX classifier small enough to build in a test: mean-pool then a linear layer.

    Follows the model-file contract (float32 NCHW input with a dynamic batch,
    logits [N, C] as output 0, the contract's metadata); the weights are
    seeded, so its outputs are deterministic but meaningless.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(channels * 4 * 4, len(classes))).astype(np.float32)
    bias = np.zeros(len(classes), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[size // 4] * 2,
                             strides=[size // 4] * 2),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(classes)])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = Contract(tuple(classes), (size, size), color, (0.5,) * channels, (0.25,) * channels,
                     crop_scale).to_props()
    props.update(metadata or {})
    onnx.helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    onnx.save(model, str(path))
    return path


def announcing(encoded: bytes, width: int, height: int) -> bytes:
    """A PNG or (baseline) JPEG whose header is changed to announce ``width`` x ``height`` pixels."""
    patched = bytearray(encoded)
    if patched.startswith(b"\x89PNG"):
        patched[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")   # IHDR
    else:
        frame = patched.index(b"\xff\xc0")   # start of frame: precision, height, width
        patched[frame + 5:frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(patched)


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_tiny_model(tmp_path / "tiny.onnx")


@pytest.fixture(scope="module")
def ros_dir(tmp_path_factory):
    """The module's own ROS domain and log folder (see ros_helpers.isolated_ros)."""
    from ros_helpers import isolated_ros

    directory = tmp_path_factory.mktemp("ros")
    with isolated_ros(directory / "log"):
        yield directory


@pytest.fixture(scope="module")
def model_file(ros_dir) -> Path:
    """The tiny model, for the nodes a ROS test module starts."""
    return write_tiny_model(ros_dir / "tiny.onnx")


@pytest.fixture(scope="module")
def client(ros_dir):
    """The test's own rclpy node in the module's ROS domain."""
    from ros_helpers import RosClient

    ros_client = RosClient("wscfer_test_client")
    yield ros_client
    ros_client.close()
