"""scripts/checkpoint_from_onnx.py: weights recovered from an exported file compute what the file computes."""
import importlib.util
from pathlib import Path

import onnx
import pytest
import torch

from conftest import write_tiny_model
from test_export import write_checkpoint
from wscfer_ros.perception.contract import Contract
from wscfer_train.augment import prepare_eval
from wscfer_train.config import load_config
from wscfer_train.export import export, load_images, onnx_logits
from wscfer_train.model import WSCFERNet, build_model, load_init

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recover():
    spec = importlib.util.spec_from_file_location("checkpoint_from_onnx",
                                                  REPO_ROOT / "scripts" / "checkpoint_from_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recovered(recover, fer2013_dir, tmp_path_factory):
    """An fp16 export of a ResNet with non-trivial BatchNorm, and the weights recovered from it."""
    folder = tmp_path_factory.mktemp("recover")
    export(write_checkpoint(folder / "best.pt"), folder / "model.onnx", precision="fp16")
    assert recover.main([str(folder / "model.onnx"), str(folder / "weights.pt"),
                         "--calibration", str(fer2013_dir / "train"), "--count", "512"]) == 0
    return folder / "model.onnx", folder / "weights.pt"


def file_contract(model_file: Path) -> Contract:
    return Contract.from_props({prop.key: prop.value for prop in onnx.load(model_file).metadata_props})


def class_names(model_file: Path) -> list[str]:
    return list(file_contract(model_file).class_names)


def network(weights: Path, names: list[str]) -> WSCFERNet:
    """The recovered weights as a run's ``model.init`` loads them."""
    model = build_model(load_config(None, ["model.arch=resnet10", "model.width=8"])["model"], 7, 1)
    load_init(model, str(weights), names)
    return model


def real_faces(fer2013_dir, model_file):
    """256 validation faces prepared as the file's contract says."""
    contract = file_contract(model_file)
    images = load_images(str(fer2013_dir / "val"), 48, "gray", 256, seed=3)
    return prepare_eval(torch.from_numpy(images), contract.mean, contract.std)


def test_eval_mode_reproduces_the_files_logits(recovered, fer2013_dir):
    model_file, weights = recovered
    faces = real_faces(fer2013_dir, model_file)
    with torch.no_grad():
        logits = network(weights, class_names(model_file)).eval()(faces)
    assert (logits - torch.from_numpy(onnx_logits(model_file, faces.numpy()))).abs().max() < 1e-4


def test_training_mode_on_a_batch_of_real_faces_keeps_the_files_predictions(recovered, fer2013_dir):
    """BatchNorm's batch statistics must not move the activations away from the folded network's."""
    model_file, weights = recovered
    faces = real_faces(fer2013_dir, model_file)
    model = network(weights, class_names(model_file))
    with torch.no_grad():
        reference = model.eval()(faces)
        training = model.train()(faces)
    assert (training.argmax(1) == reference.argmax(1)).float().mean() > 0.9
    assert (training - reference).abs().mean() < 0.1 * reference.abs().mean()


def test_init_from_the_recovered_weights_loads_the_backbone_and_the_classifier(recovered):
    """A warm restart keeps the file's head; the projection head is not in the file, so it is left as built."""
    model = build_model(load_config(None, ["model.arch=resnet10", "model.width=8"])["model"], 7, 1)
    report = load_init(model, str(recovered[1]), class_names(recovered[0]))
    assert report["mismatched"] == [] and report["unexpected"] == []
    assert {"classifier.weight", "classifier.bias"} <= set(report["matched"])
    assert report["missing"] and all(name.startswith("projection.") for name in report["missing"])


def test_init_for_classes_in_another_order_leaves_the_classifier_as_built(recovered):
    model = build_model(load_config(None, ["model.arch=resnet10", "model.width=8"])["model"], 7, 1)
    built = model.classifier.weight.clone()
    report = load_init(model, str(recovered[1]), class_names(recovered[0])[::-1])
    assert report["missing"] == [] and {"classifier.weight", "classifier.bias"} <= set(report["unexpected"])
    assert torch.equal(model.classifier.weight, built)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("given", ["tiny model", "ensemble", "missing file", "not onnx"])
def test_a_file_that_is_not_a_resnet_export_is_refused_in_one_line(recover, tmp_path, capsys, given):
    model_file = {"tiny model": lambda: write_tiny_model(tmp_path / "tiny.onnx"),
                  "ensemble": lambda: REPO_ROOT / "wscfer_ros" / "models" / "accurate.onnx",
                  "missing file": lambda: tmp_path / "missing.onnx",
                  "not onnx": lambda: write_text(tmp_path / "notes.onnx", "no model here"),
                  }[given]()
    assert recover.main([str(model_file), str(tmp_path / "weights.pt")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error:") and error.count("\n") == 1
    assert not (tmp_path / "weights.pt").exists()
