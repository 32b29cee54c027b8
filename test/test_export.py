"""wscfer-export: parity with torch, the model-file contract, fp16/int8 weight storage, atomic writes."""
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from wscfer_ros.perception.classifier import Classifier
from wscfer_train import export as export_module
from wscfer_train.augment import prepare_eval
from wscfer_train.config import load_config
from wscfer_train.data import data_root, load_dataset
from wscfer_train.evaluate import evaluate, load_checkpoint, open_onnx
from wscfer_train.export import FP32_MAX_DIFF, RELATIVE_BOUNDS, export, main, model_metadata
from wscfer_train.model import build_model

FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
CONTRACT_KEYS = {"class_names", "input_size", "color", "mean", "std", "crop_scale"}
JSON_KEYS = {"class_names", "input_size", "mean", "std", "crop_scale", "epochs", "best_epoch", "val_accuracy",
             "val_mean_recall", "val_per_class_recall", "label_noise", "val_dataset"}
FACT_KEYS = {"dataset", "val_dataset", "epochs", "best_epoch", "val_accuracy", "val_mean_recall",
             "val_per_class_recall", "loss", "arch", "label_noise", "precision", "exported_by"}


def write_checkpoint(path, class_names=FER_CLASSES, color="gray", size=48, seed=0, class_counts=None):
    """A ``best.pt`` as wscfer-train writes it, for a tiny ResNet-10 with non-trivial BatchNorm statistics.

    Fresh BatchNorm layers are identities (mean 0, variance 1, the last of
    each block zero-initialised); random statistics make BatchNorm folding
    and weight rounding actually matter.  The classifier is scaled so that
    the logits span several units, as a trained network's do.
    """
    torch.manual_seed(seed)
    cfg = load_config(None, [f"data.size={size}", f"data.color={color}", "model.arch=resnet10", "model.width=8",
                             "model.proj_dim=16", "data.mean=null"])
    cfg["data"]["val"] = {"format": "fer2013_folder", "root": "fer2013/val"}
    channels = 1 if color == "gray" else 3
    model = build_model(cfg["model"], len(class_names), channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
    model.classifier.weight.data *= 5.0
    meta = {"class_names": list(class_names), "input_size": [size, size], "color": color,
            "mean": [0.5] * channels, "std": [0.25] * channels, "crop_scale": 1.25,
            "dataset": "fer2013-folder:train", "epochs": 3, "loss": "wscfer", "arch": "resnet10-w8-imagenet",
            "label_noise": {"fraction": 0.0, "seed": 0, "flipped": 0},
            "val": {"accuracy": 0.61234, "mean_recall": 0.55, "epoch": 2,
                    "per_class_recall": {name: 0.5 for name in class_names}}}
    if class_counts is not None:
        meta["class_counts"] = class_counts
    torch.save({"model": model.state_dict(), "meta": meta, "config": cfg}, path)
    return path


def torch_logits(checkpoint, pixels: np.ndarray) -> np.ndarray:
    """The checkpoint's logits for uint8 images, prepared as in training's evaluation."""
    model, meta, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model(prepare_eval(torch.from_numpy(pixels), meta["mean"], meta["std"])).numpy()


def normalised(pixels: np.ndarray) -> np.ndarray:
    """Gray uint8 [N, H, W] -> the float32 NCHW input of the fixture checkpoint (mean 0.5, std 0.25)."""
    return ((pixels[:, None].astype(np.float32) / 255.0 - 0.5) / 0.25).astype(np.float32)


def faces(count, size=48, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size), dtype=np.uint8)


def session(path, optimized_copy=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized_copy:
        # Basic level is where ONNX Runtime folds constants; its higher levels add CPU-specific ops.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized_copy)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def fp32_export(checkpoint, tmp_path_factory):
    output = tmp_path_factory.mktemp("fp32") / "model.onnx"
    return export(checkpoint, output), output


def test_fp32_export_matches_torch_at_any_batch_size(checkpoint, fp32_export):
    report, path = fp32_export
    assert report["parity"]["fp32_max_abs_diff"] <= FP32_MAX_DIFF
    assert report["size_bytes"] == path.stat().st_size
    model = session(path)
    (model_input,), outputs = model.get_inputs(), model.get_outputs()
    assert model_input.name == "input" and model_input.type == "tensor(float)"
    assert isinstance(model_input.shape[0], str) and model_input.shape[1:] == [1, 48, 48]
    assert outputs[0].name == "logits" and outputs[0].shape[1] == len(FER_CLASSES)
    for count in (1, 5):
        pixels = faces(count, seed=count)
        logits = model.run(None, {"input": normalised(pixels)})[0]
        assert logits.shape == (count, len(FER_CLASSES))
        np.testing.assert_allclose(logits, torch_logits(checkpoint, pixels), atol=FP32_MAX_DIFF, rtol=0)


def test_batchnorm_is_folded_into_the_convolutions(fp32_export):
    _, path = fp32_export
    operators = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in operators
    assert "BatchNormalization" not in operators


def test_metadata_has_the_contract_and_the_training_facts(fer2013_dir, fp32_export):
    _, path = fp32_export
    props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert CONTRACT_KEYS | FACT_KEYS <= set(props)
    values = {key: json.loads(props[key]) for key in JSON_KEYS}
    assert values["class_names"] == FER_CLASSES
    assert values["input_size"] == [48, 48]
    assert props["color"] == "gray"
    assert values["mean"] == [0.5] and values["std"] == [0.25] and values["crop_scale"] == 1.25
    assert values["best_epoch"] == 2 and values["epochs"] == 3
    # The file's own figures on the run's validation set, not the checkpoint's (0.61234 / 0.55).
    measured = evaluate(open_onnx(path, "cpu"), load_dataset({"format": "fer2013_folder", "root": "fer2013/val"},
                                                            size=48, color="gray", data_root=data_root()))
    assert values["val_accuracy"] == pytest.approx(measured["accuracy"], abs=1e-4) != pytest.approx(0.6123)
    assert values["val_mean_recall"] == pytest.approx(measured["mean_recall"], abs=1e-4)
    assert values["val_per_class_recall"] == pytest.approx(measured["per_class_recall"], abs=1e-4)
    assert values["val_dataset"] == {"format": "fer2013_folder", "root": "fer2013/val"}
    assert props["precision"] == "fp32" and props["exported_by"] == "wscfer-export"
    assert props["dataset"] == "fer2013-folder:train" and props["loss"] == "wscfer"


def test_without_the_validation_set_the_file_carries_no_validation_figures(tmp_path, caplog):
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data"]["val"] = {"format": "fer2013_folder", "root": str(tmp_path / "elsewhere")}
    torch.save(state, checkpoint)
    metadata = export(checkpoint, tmp_path / "m.onnx", precision="fp16")["metadata"]
    assert not {"val_accuracy", "val_mean_recall", "val_per_class_recall"} & set(metadata)
    assert json.loads(metadata["best_epoch"]) == 2
    assert "validation set not found" in caplog.text and "carries no validation figures" in caplog.text
    Classifier(str(tmp_path / "m.onnx"), providers="cpu")      # still a file the node runs


def test_crop_scale_override_replaces_the_checkpoints(checkpoint):
    _, meta, cfg = load_checkpoint(checkpoint)
    assert json.loads(model_metadata(meta, cfg, "fp32")["crop_scale"]) == 1.25
    assert json.loads(model_metadata(meta, cfg, "fp32", crop_scale=1.6)["crop_scale"]) == 1.6


@pytest.mark.parametrize("precision, max_size_ratio", [("fp16", 0.55), ("int8", 0.35)])
def test_reduced_precision_is_smaller_and_agrees_with_torch(checkpoint, fp32_export, tmp_path, precision,
                                                            max_size_ratio):
    path = tmp_path / f"model-{precision}.onnx"
    report = export(checkpoint, path, precision)
    assert report["precision"] == precision
    assert path.stat().st_size < max_size_ratio * fp32_export[1].stat().st_size
    model = session(path)
    assert model.get_inputs()[0].type == "tensor(float)" and model.get_outputs()[0].type == "tensor(float)"
    pixels = faces(32, seed=7)
    logits = model.run(None, {"input": normalised(pixels)})[0]
    reference = torch_logits(checkpoint, pixels)
    assert np.abs(logits - reference).max() <= RELATIVE_BOUNDS[precision] * max(1.0, np.abs(reference).max())
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_weight_conversions_fold_away_when_onnxruntime_loads_the_file(checkpoint, tmp_path, precision):
    path = tmp_path / f"model-{precision}.onnx"
    export(checkpoint, path, precision)
    stored = onnx.load(str(path))
    assert "Cast" in {node.op_type for node in stored.graph.node}
    session(path, optimized_copy=tmp_path / "optimized.onnx")
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not {"Cast", "Mul", "DequantizeLinear"} & {node.op_type for node in optimized.graph.node}
    assert {tensor.data_type for tensor in optimized.graph.initializer} == {onnx.TensorProto.FLOAT}


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_the_node_classifier_runs_the_export(tmp_path, color):
    checkpoint = write_checkpoint(tmp_path / "best.pt", color=color)
    path = tmp_path / "model.onnx"
    export(checkpoint, path, "fp16", crop_scale=1.4)
    classifier = Classifier(str(path), providers="cpu")
    assert classifier.class_names == FER_CLASSES
    assert classifier.input_size == (48, 48) and classifier.color == color and classifier.crop_scale == 1.4
    pixels = np.random.default_rng(3).integers(0, 256, (5, 48, 48) + ((3,) if color == "rgb" else ()), np.uint8)
    probabilities = classifier.predict(pixels)
    expected = torch.softmax(torch.from_numpy(torch_logits(checkpoint, pixels)), 1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=2e-3)


def test_static_int8_calibrates_on_a_folder_of_images(checkpoint, tmp_path):
    folder = tmp_path / "calibration" / "happy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for index in range(24):
        # Larger than the model input and not square: the loader crops and resizes as training does.
        smooth = cv2.GaussianBlur(rng.integers(0, 256, (60, 80), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"{index}.png"), smooth)
    (folder / "notes.txt").write_text("not an image")
    path = tmp_path / "model-qdq.onnx"
    report = export(checkpoint, path, "int8", calibration=str(tmp_path / "calibration"), static_int8=True)
    assert report["precision"] == "int8-static"
    assert report["parity"]["images"] == "24 calibration images"
    assert report["parity"]["max_abs_diff"] <= report["parity"]["bound"]
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(path)).graph.node}
    props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert props["precision"] == "int8-static" and CONTRACT_KEYS <= set(props)
    assert session(path).run(None, {"input": normalised(faces(3))})[0].shape == (3, len(FER_CLASSES))


def test_a_broken_conversion_fails_the_parity_check_and_writes_nothing(checkpoint, tmp_path, monkeypatch,
                                                                      capsys):
    real_store_fp16 = export_module.store_fp16

    def store_fp16_and_double_the_classifier(model):
        real_store_fp16(model)
        gemm_weight = next(node for node in model.graph.node if node.op_type == "Gemm").input[1]
        cast = next(node for node in model.graph.node if node.output[0] == gemm_weight)
        stored = next(tensor for tensor in model.graph.initializer if tensor.name == cast.input[0])
        stored.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(stored) * 2, stored.name))

    monkeypatch.setattr(export_module, "store_fp16", store_fp16_and_double_the_classifier)
    output = tmp_path / "out" / "model.onnx"
    assert main([str(checkpoint), str(output), "--precision", "fp16"]) != 0
    assert "disagrees with torch" in capsys.readouterr().err
    assert list(output.parent.iterdir()) == []


def test_cli_prints_the_report(checkpoint, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    assert main([str(checkpoint), str(output), "--precision", "int8", "--crop-scale", "1.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(output) and report["size_bytes"] == output.stat().st_size
    assert report["precision"] == "int8" and report["metadata"]["crop_scale"] == "1.5"
    assert report["parity"]["max_abs_diff"] <= report["parity"]["bound"]


def test_bad_requests_are_refused_with_a_reason(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(checkpoint), str(tmp_path / "m.onnx"), "--static-int8"])
    assert "--static-int8 needs --precision int8 and --calibration" in capsys.readouterr().err
    assert main([str(checkpoint), str(tmp_path / "m.onnx"), "--calibration", "no/such/folder"]) == 1
    assert "neither a folder nor a dataset spec" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "junk.pt"), str(tmp_path / "m.onnx")]) == 1
    assert "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_weights_a_run_started_from_and_its_teachers_are_named_in_the_metadata(checkpoint):
    _, meta, cfg = load_checkpoint(checkpoint)
    assert "init" not in model_metadata(meta, cfg, "fp32") and "teachers" not in model_metadata(meta, cfg, "fp32")
    staged = {**cfg, "model": {**cfg["model"], "init": "runs/stage1/best.pt"}}
    assert model_metadata(meta, staged, "fp32")["init"] == "runs/stage1/best.pt"
    distilled = {**meta, "teachers": ["runs/a/best.pt", "runs/b/best.pt"]}
    assert json.loads(model_metadata(distilled, cfg, "fp32")["teachers"]) == ["runs/a/best.pt", "runs/b/best.pt"]


def test_logit_adjustment_subtracts_the_log_prior_and_reports_the_exported_networks_accuracy(fer2013_dir, tmp_path):
    counts = [40, 5, 40, 70, 50, 30, 50]
    checkpoint = write_checkpoint(tmp_path / "best.pt", class_counts=counts)
    report = export(checkpoint, tmp_path / "adjusted.onnx", logit_adjustment=1.0)
    export(checkpoint, tmp_path / "plain.onnx")

    inputs = {"input": normalised(faces(8))}
    adjusted, plain = (session(tmp_path / name).run(None, inputs)[0] for name in ("adjusted.onnx", "plain.onnx"))
    shift = adjusted - plain
    np.testing.assert_allclose(shift, np.broadcast_to(-np.log(np.array(counts) / sum(counts)), shift.shape), atol=1e-4)
    metadata = report["metadata"]
    assert json.loads(metadata["logit_adjustment"]) == 1.0
    val = load_dataset({"format": "fer2013_folder", "root": "fer2013/val"}, size=48, color="gray",
                       data_root=data_root())
    measured = evaluate(open_onnx(tmp_path / "adjusted.onnx", "cpu"), val)
    assert json.loads(metadata["val_accuracy"]) == pytest.approx(measured["accuracy"], abs=1e-4)
    assert json.loads(metadata["val_mean_recall"]) == pytest.approx(measured["mean_recall"], abs=1e-4)


def test_logit_adjustment_without_training_class_counts_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="needs the training class counts"):
        export(checkpoint, tmp_path / "m.onnx", logit_adjustment=1.0)
    assert not (tmp_path / "m.onnx").exists()


def test_an_ensemble_with_a_peer_is_one_file_whose_validation_figures_are_its_own(fer2013_dir, tmp_path):
    """--peer human-models: the file averages both networks' probabilities; its metadata says so."""
    from wscfer_train.peers import load_peer
    from wscfer_train.registry import FetchError

    try:
        peer = load_peer("human-models")
    except FetchError as error:
        pytest.skip(f"human-models weights unavailable: {error}")
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    report = export(checkpoint, tmp_path / "ensemble.onnx", precision="fp16", peers=(("human-models", 1.0),))

    pixels = faces(6)
    own = torch.softmax(torch.from_numpy(torch_logits(checkpoint, pixels)), 1).numpy()
    theirs = torch.softmax(torch.from_numpy(peer.logits(pixels, FER_CLASSES)), 1).numpy()
    probabilities = Classifier(str(tmp_path / "ensemble.onnx"), providers="cpu").predict(pixels)
    np.testing.assert_allclose(probabilities, (own + theirs) / 2, atol=2e-3)

    metadata = report["metadata"]
    assert json.loads(metadata["ensemble"]) == [{"peer": "human-models", "weight": 1.0}]
    val = load_dataset({"format": "fer2013_folder", "root": "fer2013/val"}, size=48, color="gray",
                       data_root=data_root())
    measured = evaluate(open_onnx(tmp_path / "ensemble.onnx", "cpu"), val)
    assert json.loads(metadata["val_accuracy"]) == pytest.approx(measured["accuracy"], abs=2e-3)
    assert measured["accuracy"] > 0.5          # the peer carries the random network


def test_an_unknown_peer_is_refused_with_its_name(checkpoint, tmp_path, capsys):
    assert main([str(checkpoint), str(tmp_path / "m.onnx"), "--peer", "nobody"]) == 1
    assert "unknown peer 'nobody'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
