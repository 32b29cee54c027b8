"""The model-file contract, batched prediction and the execution provider choice."""
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import wscfer_ros
from wscfer_ros.perception import classifier as classifier_module
from wscfer_ros.perception.classifier import Classifier, ModelError, default_model_path, resolve_model_path
from wscfer_ros.perception.contract import KEYS
from conftest import FER_CLASSES, write_tiny_model


def random_crops(count, size=48, channels=None, seed=0):
    shape = (count, size, size) if channels is None else (count, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def reference_probabilities(model_path, planes, mean, std):
    """The tiny model's output computed with numpy alone: normalise, 4x4 mean-pool, linear, softmax.

    ``planes`` is float ``[N, C, H, W]`` in 0..255.
    """
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer}
    x = (planes / 255.0 - np.reshape(mean, (1, -1, 1, 1))) / np.reshape(std, (1, -1, 1, 1))
    n, c, h, w = x.shape
    pooled = x.reshape(n, c, 4, h // 4, 4, w // 4).mean(axis=(3, 5)).reshape(n, -1)
    logits = pooled @ weights["weight"] + weights["bias"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "gray": write_tiny_model(folder / "gray.onnx", metadata={"val_accuracy": "0.71"}),
        "gray3": write_tiny_model(folder / "gray3.onnx", channels=3, color="gray"),
        "rgb": write_tiny_model(folder / "rgb.onnx", size=64, channels=3, color="rgb", crop_scale=1.4,
                                metadata={"mean": json.dumps([0.5, 0.4, 0.3]),
                                          "std": json.dumps([0.2, 0.25, 0.3])}),
    }


@pytest.fixture(scope="module")
def gray_classifier(models):
    return Classifier(str(models["gray"]), providers="cpu")


# --- loading and the contract -------------------------------------------------

def test_contract_is_read_from_the_file(gray_classifier, models):
    assert gray_classifier.model_path == models["gray"]
    assert gray_classifier.class_names == FER_CLASSES
    assert gray_classifier.input_size == (48, 48)
    assert gray_classifier.color == "gray"
    assert gray_classifier.crop_scale == 1.25
    assert gray_classifier.metadata["val_accuracy"] == "0.71"


def assert_model_error(path, *fragments, **kwargs):
    with pytest.raises(ModelError) as error:
        Classifier(str(path), **kwargs)
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(tmp_path):
    assert_model_error(tmp_path / "absent.onnx", "not found")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 40)
    assert_model_error(path, "not a valid ONNX model")


def test_truncated_file(tmp_path, models):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(models["gray"].read_bytes()[:200])
    assert_model_error(path, "not a valid ONNX model")


@pytest.mark.parametrize("key", KEYS)
def test_each_missing_metadata_key(tmp_path, key):
    path = write_tiny_model(tmp_path / f"no_{key}.onnx", metadata={key: None})
    assert_model_error(path, f"'{key}'", "missing")


@pytest.mark.parametrize("key, value, problem", [
    ("class_names", '["angry", "happy"', "not valid JSON"),
    ("class_names", '"angry"', "list"),
    ("class_names", json.dumps(FER_CLASSES[:6] + ["angry"]), "distinct"),
    ("input_size", "48", "[height, width]"),
    ("input_size", "[48, 48.5]", "[height, width]"),
    ("mean", "0.5]", "not valid JSON"),
    ("mean", "[0.5, 0.5, 0.5, 0.5]", "channels"),
    ("std", "[0]", "positive"),
    ("crop_scale", '"big"', "positive JSON number"),
    ("color", "bgr", "gray, rgb"),
])
def test_bad_metadata_values(tmp_path, key, value, problem):
    path = write_tiny_model(tmp_path / "bad.onnx", metadata={key: value})
    assert_model_error(path, f"'{key}'", problem)


def test_class_count_must_match_the_output(tmp_path):
    path = write_tiny_model(tmp_path / "mismatch.onnx", metadata={"class_names": json.dumps(["a", "b"])})
    assert_model_error(path, "7 classes", "lists 2")


def test_input_size_must_match_a_fixed_input(tmp_path):
    path = write_tiny_model(tmp_path / "size.onnx", metadata={"input_size": "[64, 64]"})
    assert_model_error(path, "input height is 48", "64")


def test_rgb_model_needs_three_channels(tmp_path):
    path = write_tiny_model(tmp_path / "rgb1.onnx", channels=1, color="rgb")
    assert_model_error(path, "'rgb' model needs 3")


def test_default_model_path_is_inside_the_package():
    assert default_model_path() == Path(wscfer_ros.__file__).parent / "models" / "default.onnx"


def test_resolve_model_path(tmp_path, monkeypatch, models):
    shipped = tmp_path / "models"
    shipped.mkdir()
    (shipped / "small.onnx").write_bytes(models["gray"].read_bytes())
    monkeypatch.setattr(classifier_module, "default_model_path", lambda: shipped / "default.onnx")
    assert resolve_model_path("") == shipped / "default.onnx"
    assert resolve_model_path("small.onnx") == shipped / "small.onnx"
    assert resolve_model_path("other.onnx") == Path("other.onnx")
    assert resolve_model_path(str(models["gray"])) == models["gray"]


def test_missing_default_model_names_its_path(tmp_path, monkeypatch):
    monkeypatch.setattr(classifier_module, "default_model_path", lambda: tmp_path / "default.onnx")
    with pytest.raises(ModelError) as error:
        Classifier("")
    assert str(tmp_path / "default.onnx") in str(error.value)


# --- prediction ---------------------------------------------------------------

def test_batched_probabilities(gray_classifier):
    probabilities = gray_classifier.predict(random_crops(5))
    assert probabilities.shape == (5, len(FER_CLASSES)) and probabilities.dtype == np.float32
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_gray_model_matches_the_numpy_reference(gray_classifier, models):
    crops = random_crops(4)
    expected = reference_probabilities(models["gray"], crops[:, None].astype(np.float64), [0.5], [0.25])
    np.testing.assert_allclose(gray_classifier.predict(crops), expected, rtol=1e-4, atol=1e-6)


def test_rgb_model_matches_the_numpy_reference(models):
    crops = random_crops(3, size=64, channels=3)
    model = Classifier(str(models["rgb"]), providers="cpu")
    planes = crops.transpose(0, 3, 1, 2).astype(np.float64)
    expected = reference_probabilities(models["rgb"], planes, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    np.testing.assert_allclose(model.predict(crops), expected, rtol=1e-4, atol=1e-6)


def test_batch_gives_the_same_answer_as_single_crops(gray_classifier):
    crops = random_crops(6, seed=3)
    batched = gray_classifier.predict(crops)
    singles = np.vstack([gray_classifier.predict(crops[i:i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-7)


def test_a_gray_model_refuses_rgb_crops(gray_classifier):
    """Crops come in the model's colour (crop_faces makes them so): a conversion here would be a second one."""
    with pytest.raises(ValueError, match=r"crops for this gray model must be \[N, 48, 48\], got \[3, 48, 48, 3\]"):
        gray_classifier.predict(random_crops(3, channels=3))


def test_three_channel_gray_model_gets_the_gray_crop_replicated(models):
    crops = random_crops(2)
    model = Classifier(str(models["gray3"]), providers="cpu")
    planes = np.repeat(crops[:, None].astype(np.float64), 3, axis=1)
    expected = reference_probabilities(models["gray3"], planes, [0.5] * 3, [0.25] * 3)
    np.testing.assert_allclose(model.predict(crops), expected, rtol=1e-4, atol=1e-6)


def test_an_rgb_model_refuses_gray_crops(models):
    model = Classifier(str(models["rgb"]), providers="cpu")
    with pytest.raises(ValueError, match=r"crops for this rgb model must be \[N, 64, 64, 3\]"):
        model.predict(random_crops(2, size=64))


def test_fixed_batch_model_is_fed_one_crop_at_a_time(tmp_path, gray_classifier, models):
    model = onnx.load(str(models["gray"]))
    for value_info in (model.graph.input[0], model.graph.output[0]):
        value_info.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "batch1.onnx"
    onnx.save(model, str(path))
    fixed = Classifier(str(path), providers="cpu")
    crops = random_crops(3, seed=7)
    np.testing.assert_allclose(fixed.predict(crops), gray_classifier.predict(crops), rtol=1e-6)


def test_no_crops_gives_no_rows(gray_classifier):
    assert gray_classifier.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, len(FER_CLASSES))


@pytest.mark.parametrize("crops", [
    np.zeros((2, 48, 48), np.float32),
    np.zeros((2, 32, 32), np.uint8),
    np.zeros((2, 48, 48, 4), np.uint8),
    np.zeros((48, 48), np.uint8),
])
def test_bad_crops_are_rejected(gray_classifier, crops):
    with pytest.raises(ValueError):
        gray_classifier.predict(crops)


# --- execution providers ------------------------------------------------------

def test_auto_provider_reports_its_choice_without_warning(models, capfd):
    model = Classifier(str(models["gray"]), providers="auto")
    assert model.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert model.provider in model.provider_note
    assert model.provider_warning is None
    # ORT's own multi-line fallback log is replaced by the one-line note.
    assert "onnxruntime" not in capfd.readouterr().err


def test_explicit_cuda_without_cuda_warns(models):
    model = Classifier(str(models["gray"]), providers="cuda")
    if model.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA really works on this machine")
    assert model.provider == "CPUExecutionProvider"
    assert "CUDA" in model.provider_warning and "CPUExecutionProvider" in model.provider_warning


def test_onnxruntime_without_cuda_support(models, monkeypatch):
    monkeypatch.setattr(classifier_module.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    auto = Classifier(str(models["gray"]), providers="auto")
    assert auto.provider == "CPUExecutionProvider"
    assert "no CUDA support" in auto.provider_note and auto.provider_warning is None
    cuda = Classifier(str(models["gray"]), providers="cuda")
    assert "no CUDA support" in cuda.provider_warning


def recorded_provider_requests(monkeypatch) -> list:
    """The providers each InferenceSession the classifier opens is asked for."""
    requests = []
    session = classifier_module.ort.InferenceSession

    def recording(*args, providers, **kwargs):
        requests.append(list(providers))
        return session(*args, providers=providers, **kwargs)
    monkeypatch.setattr(classifier_module.ort, "InferenceSession", recording)
    return requests


def test_without_an_nvidia_driver_cuda_is_never_asked_for(models, monkeypatch, capfd):
    monkeypatch.setattr(classifier_module, "_cuda_device_count", lambda: None)
    requests = recorded_provider_requests(monkeypatch)
    auto = Classifier(str(models["gray"]), providers="auto")
    cuda = Classifier(str(models["gray"]), providers="cuda")

    assert requests == [["CPUExecutionProvider"]] * 2
    assert auto.provider_note == ("no NVIDIA driver on this machine (libcuda.so.1 not found); "
                                  "using CPUExecutionProvider")
    assert auto.provider_warning is None
    assert cuda.provider_warning == f"CUDA was requested: {auto.provider_note}"
    assert capfd.readouterr().err == ""


def test_a_gpu_without_working_cuda_libraries_falls_back_to_cpu_in_one_sentence(models, monkeypatch,
                                                                                capfd):
    """The driver reports a GPU, so ORT is asked for CUDA; its library errors are not shown."""
    monkeypatch.setattr(classifier_module, "_cuda_device_count", lambda: 1)
    requests = recorded_provider_requests(monkeypatch)
    model = Classifier(str(models["gray"]), providers="cuda")
    if model.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA really works on this machine")

    assert requests == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    assert model.provider == "CPUExecutionProvider"
    assert model.provider_warning.startswith("CUDA was requested: CUDAExecutionProvider failed to "
                                             "start on the GPU (this onnxruntime needs the CUDA ")
    assert capfd.readouterr().err == ""


def test_cpu_on_request(models):
    model = Classifier(str(models["gray"]), providers="cpu", threads=1)
    assert model.provider == "CPUExecutionProvider"
    assert "requested" in model.provider_note and model.provider_warning is None


@pytest.mark.parametrize("kwargs", [{"providers": "tpu"}, {"threads": -1}])
def test_bad_settings_are_rejected(models, kwargs):
    with pytest.raises(ValueError):
        Classifier(str(models["gray"]), **kwargs)


def idle_cpu_seconds_after_calls(classifier: Classifier, calls: int = 5, pause_s: float = 0.1) -> float:
    """CPU time this process spends in the pauses of ``calls`` predictions, each followed by ``pause_s`` of sleep."""
    crops = np.zeros((4, *classifier.input_size), np.uint8)
    classifier.predict(crops)
    idle = 0.0
    for _ in range(calls):
        classifier.predict(crops)
        started = time.process_time()
        time.sleep(pause_s)
        idle += time.process_time() - started
    return idle


def test_onnx_runtime_threads_rest_between_frames_unless_busy_wait_is_asked_for():
    """ONNX Runtime's threads spin between calls by default: at camera rate they never rest.

    Summed over several pauses and compared with each other, so that a busy
    machine (which gives the spinning threads less CPU) cannot make it fail.
    """
    resting = idle_cpu_seconds_after_calls(Classifier(threads=2))
    spinning = idle_cpu_seconds_after_calls(Classifier(threads=2, busy_wait=True))
    assert resting < 0.015, resting
    assert spinning > 4 * resting + 0.01, (spinning, resting)
