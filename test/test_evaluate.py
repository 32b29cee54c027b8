"""wscfer-eval: checkpoints and their ONNX exports score alike, classes match by name, results on disk."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from test_export import write_checkpoint
from wscfer_train.data import FaceDataset, load_dataset
from wscfer_train.evaluate import EvalModel, evaluate, main, open_checkpoint, open_onnx
from wscfer_train.export import export

# Folder name -> class, deliberately not in alphabetical or canonical order.
CLASS_MAP = {"smiling": "happy", "cross": "angry", "calm": "neutral", "scared": "fear"}


def write_faces(root: Path, per_class=6, size=48, seed=0) -> dict:
    """A folder-per-class dataset of blurred noise faces; returns its ``folder`` spec."""
    rng = np.random.default_rng(seed)
    for folder in CLASS_MAP:
        (root / folder).mkdir(parents=True)
        for index in range(per_class):
            image = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 2)
            cv2.imwrite(str(root / folder / f"{index}.png"), image)
    return {"format": "folder", "root": str(root), "class_map": CLASS_MAP}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    checkpoint = write_checkpoint(folder / "best.pt", seed=3)
    onnx_path = folder / "model.onnx"
    export(checkpoint, onnx_path)
    return checkpoint, onnx_path


@pytest.fixture(scope="module")
def dataset_spec(tmp_path_factory):
    return write_faces(tmp_path_factory.mktemp("faces"))


def test_checkpoint_and_its_onnx_export_score_alike(models, dataset_spec):
    checkpoint, onnx_path = models
    dataset = load_dataset(dataset_spec, size=48, color="gray", data_root=Path("/"))
    from_checkpoint, from_onnx = open_checkpoint(checkpoint, "cpu"), open_onnx(onnx_path, "cpu")
    probabilities = torch.softmax(torch.from_numpy(from_checkpoint.predict(dataset.images)), 1).numpy()
    np.testing.assert_allclose(from_onnx.predict(dataset.images), probabilities, atol=1e-5)
    by_checkpoint = evaluate(from_checkpoint, dataset, batch_size=7)
    by_onnx = evaluate(from_onnx, dataset, batch_size=5)
    assert by_onnx["confusion"] == by_checkpoint["confusion"]
    assert by_onnx["accuracy"] == by_checkpoint["accuracy"]
    assert sum(map(sum, by_onnx["confusion"])) == len(dataset)


def test_dataset_classes_are_matched_to_the_models_by_name():
    model_classes = ["neutral", "sad", "happy", "angry"]
    # Each image holds its own index, so the stand-in model can look up its answer.
    images = np.broadcast_to(np.arange(6, dtype=np.uint8)[:, None, None], (6, 8, 8)).copy()
    dataset = FaceDataset(images=images, labels=np.array([0, 0, 1, 1, 2, 2]),
                          class_names=["angry", "happy", "neutral"], name="fixture")
    answers = np.array([model_classes.index(dataset.class_names[label]) for label in dataset.labels])
    answers[5] = model_classes.index("sad")   # right on every image but the last neutral one

    def predict(batch):
        return np.eye(len(model_classes))[answers[batch[:, 0, 0]]]

    metrics = evaluate(EvalModel(Path("fixture"), "checkpoint", model_classes, (8, 8), "gray", predict), dataset,
                       batch_size=4)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    assert metrics["per_class_recall"] == {"neutral": 0.5, "sad": 0.0, "happy": 1.0, "angry": 1.0}
    # "sad" has no images, so it does not count in the mean recall.
    assert metrics["mean_recall"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert metrics["support"] == {"neutral": 2, "sad": 0, "happy": 2, "angry": 2}


def test_cli_writes_metrics_and_the_confusion_picture(models, dataset_spec, tmp_path, capsys):
    checkpoint, onnx_path = models
    out = tmp_path / "eval"
    option = "class_map=" + json.dumps(CLASS_MAP)
    assert main([str(checkpoint), "--format", "folder", "--root", dataset_spec["root"], "--option", option,
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.4f}" in printed and "scared" not in printed
    assert metrics["model_kind"] == "checkpoint" and metrics["images"] == 24
    assert metrics["class_names"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 24
    assert metrics["support"]["fear"] == 6 and metrics["support"]["sad"] == 0
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 24)
    picture = cv2.imread(str(out / "confusion.png"))
    assert picture is not None and min(picture.shape[:2]) > 300

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": dataset_spec, "val": dataset_spec}}))
    assert main([str(onnx_path), "--config", str(config), "--out", str(tmp_path / "onnx-eval")]) == 0
    from_onnx = json.loads((tmp_path / "onnx-eval" / "metrics.json").read_text())
    assert from_onnx["model_kind"] == "onnx"
    assert from_onnx["confusion"] == metrics["confusion"]


def test_a_class_the_model_does_not_know_is_a_clear_error(tmp_path, dataset_spec, capsys):
    checkpoint = write_checkpoint(tmp_path / "best.pt", class_names=["angry", "happy", "neutral"])
    assert main([str(checkpoint), "--format", "folder", "--root", dataset_spec["root"],
                 "--option", "class_map=" + json.dumps(CLASS_MAP)]) == 1
    error = capsys.readouterr().err
    assert "['fear']" in error and "not among the model's classes" in error


def test_a_training_state_checkpoint_is_refused_with_a_pointer_to_best_pt(tmp_path, dataset_spec, capsys):
    state = tmp_path / "ckpt-000000010.pt"
    torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}}, state)
    assert main([str(state), "--format", "folder", "--root", dataset_spec["root"],
                 "--option", "class_map=" + json.dumps(CLASS_MAP)]) == 1
    assert "best.pt" in capsys.readouterr().err
