"""The shipped default model: the contract, its size, and real faces read correctly."""
import json

import cv2
import numpy as np
import onnx
import pytest
from skimage import data as skimage_data

from wscfer_ros.perception.classifier import Classifier, default_model_path
from wscfer_ros.perception.pipeline import Pipeline, PipelineConfig
from wscfer_train.data import data_root, load_dataset
from wscfer_train.evaluate import evaluate, open_onnx

MAX_SHIPPED_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def pipeline():
    # No model given: what the node and wscfer-infer load by default.
    shipped = Pipeline(PipelineConfig(smoothing=0.0))
    yield shipped
    shipped.close()


def labels(pipeline, image_bgr):
    pipeline.reset()
    return [face.label for face in pipeline.process(image_bgr, "bgr").faces]


def test_default_model_follows_the_contract_and_states_its_training():
    path = default_model_path()
    assert path.stat().st_size <= MAX_SHIPPED_BYTES
    classifier = Classifier()
    assert classifier.model_path == path
    assert classifier.class_names == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    metadata = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    for key in ("dataset", "epochs", "val_accuracy", "val_mean_recall", "loss", "arch", "precision"):
        assert key in metadata, key
    assert 0.0 < json.loads(metadata["val_accuracy"]) <= 1.0


@pytest.mark.parametrize("name", ["default.onnx", "accurate.onnx"])
def test_each_shipped_files_validation_figures_are_its_own(name, fer2013_dir):
    """What the metadata says of FER2013 PublicTest is what the file scores there through ONNX Runtime."""
    path = default_model_path().with_name(name)
    metadata = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(metadata["val_dataset"]) == {"format": "fer2013_folder", "root": "fer2013/val"}
    model = open_onnx(path, "cpu")
    measured = evaluate(model, load_dataset(json.loads(metadata["val_dataset"]), size=model.input_size[0],
                                            color=model.color, data_root=data_root()))
    assert json.loads(metadata["val_accuracy"]) == pytest.approx(measured["accuracy"], abs=1e-4)
    assert json.loads(metadata["val_mean_recall"]) == pytest.approx(measured["mean_recall"], abs=1e-4)


def test_astronaut_is_happy(pipeline):
    astronaut_bgr = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    assert labels(pipeline, astronaut_bgr) == ["happy"]


def test_obama_portrait_is_happy(pipeline, media_dir):
    assert labels(pipeline, cv2.imread(str(media_dir / "obama-720p.jpg"))) == ["happy"]


def test_most_of_the_seven_smiling_women_are_happy(pipeline, media_dir):
    found = labels(pipeline, cv2.imread(str(media_dir / "group_2008_007676.jpg")))
    assert len(found) >= 6, found
    assert sum(label == "happy" for label in found) >= 5, found


def test_batched_and_single_face_predictions_agree():
    """One batched call per frame must give each face the answer it gets alone."""
    classifier = Classifier()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, *classifier.input_size), dtype=np.uint8)
    batched = classifier.predict(crops)
    single = np.concatenate([classifier.predict(crops[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
