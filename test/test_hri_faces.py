"""ROS4HRI's content without ROS: ids, expression names, valence/arousal, regions, face images,
the consumer mode's classifier, and the pipeline settings that change at run time."""
import cv2
import numpy as np
import pytest

from conftest import FER_CLASSES
from wscfer_ros.perception.classifier import Classifier
from wscfer_ros.perception.hri_faces import (EXPRESSION_OF_CLASS, VALENCE_AROUSAL, CroppedFaceClassifier, FaceIds,
                                             TrackedIds, expression_name, face_images, normalized_roi,
                                             valence_arousal)
from wscfer_ros.perception.pipeline import TUNABLE_SETTINGS, Pipeline, PipelineConfig
from wscfer_ros.perception.tracking import FaceTracker

# The values of hri_msgs/Expression's constants (msg/hri_msgs/msg/Expression.msg);
# test_hri_topics checks the generated message has the same.
HRI_EXPRESSIONS = {"neutral", "angry", "sad", "happy", "surprised", "disgusted", "scared"}


def test_every_fer_class_maps_to_an_expression_constant_and_a_point_of_the_plane():
    assert {expression_name(name) for name in FER_CLASSES} == HRI_EXPRESSIONS
    assert set(VALENCE_AROUSAL) == set(FER_CLASSES) == set(EXPRESSION_OF_CLASS)
    assert expression_name("contempt") == "contempt", "a class without a constant keeps its name"


def test_valence_arousal_is_the_expectation_of_the_class_coordinates():
    assert valence_arousal({"happy": 1.0}) == pytest.approx((0.81, 0.51))
    assert valence_arousal({"neutral": 1.0}) == (0.0, 0.0)
    mixed = {"happy": 0.5, "sad": 0.25, "neutral": 0.25}
    assert valence_arousal(mixed) == pytest.approx((0.5 * 0.81 - 0.25 * 0.63,
                                                    0.5 * 0.51 - 0.25 * 0.27))
    # Negative classes are unpleasant, and anger and fear are activated, sadness is not.
    for name in ("angry", "disgust", "fear", "sad"):
        assert valence_arousal({name: 1.0})[0] < 0, name
    assert valence_arousal({"fear": 1.0})[1] > 0 > valence_arousal({"sad": 1.0})[1]
    assert valence_arousal({"contempt": 1.0}) == (0.0, 0.0), "unknown classes add nothing"


def test_face_ids_are_unique_per_process_and_name_topics():
    ids, other_process = FaceIds(), FaceIds()
    assert ids(12) == f"{ids.prefix}_12" and ids(12) == ids(12)
    assert ids(1) != other_process(1)
    assert ids.prefix[0] == "f" and ids.prefix.isalpha() and ids.prefix.islower()
    assert FaceIds("fabcd")(3) == "fabcd_3"


def test_normalized_roi_is_in_the_unit_square():
    assert normalized_roi((160, 120, 320, 240), 640, 480) == (0.25, 0.25, 0.75, 0.75)
    assert normalized_roi((600, 400, 100, 100), 640, 480) == (0.9375, 400 / 480, 1.0, 1.0)


def test_face_images_are_square_centred_and_zero_padded():
    frame = np.full((100, 200, 3), 255, np.uint8)
    frame[40:60, 90:110] = (0, 0, 255)            # a red square in the middle, BGR
    crops = face_images(frame, "bgr", [(90, 40, 20, 20), (0, 0, 20, 40)], size=64)

    assert crops.shape == (2, 64, 64, 3) and crops.dtype == np.uint8
    assert (crops[0, 8:56, 8:56] == (0, 0, 255)).all(), "the box fills the image"
    # A 20x40 box at the corner: a 40x40 square from x = -10, its left quarter outside.
    assert (crops[1, :, :15] == 0).all() and (crops[1, 2:, 17:] == 255).all()
    rgb = face_images(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), "rgb", [(90, 40, 20, 20)], 64)
    assert np.array_equal(rgb, crops[:1]), "always BGR, whatever the frame's colour"


def test_tracked_ids_reports_who_appeared_and_who_left():
    tracked = TrackedIds()
    assert tracked.update(["a", "b", "a"]) == (["a", "b"], [])
    assert tracked.update(["b", "c"]) == (["c"], ["a"])
    assert tracked.update([]) == ([], ["b", "c"])
    assert tracked.ids == []


@pytest.fixture
def classifier(tiny_model):
    return Classifier(str(tiny_model), "cpu")


def test_cropped_faces_are_classified_whole_and_smoothed_per_id(classifier, media_dir):
    frame = cv2.imread(str(media_dir / "obama-720p.jpg"))
    face = cv2.resize(frame[100:500, 450:850], (128, 128))
    other = cv2.resize(frame[0:300, 0:300], (96, 96))
    faces = CroppedFaceClassifier(classifier, smoothing=0.5)

    first = faces.classify({"a": (face, "bgr"), "b": (cv2.cvtColor(other, cv2.COLOR_BGR2GRAY),
                                                      "gray")})
    raw_other = classifier.predict(
        cv2.resize(cv2.cvtColor(other, cv2.COLOR_BGR2GRAY), classifier.input_size[::-1])[None])[0]
    second = faces.classify({"b": (face, "bgr")})

    assert set(first) == {"a", "b"} and faces.tracked_faces == 2
    for expression in first.values():
        assert expression.label in FER_CLASSES
        assert sum(expression.probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert expression.score == max(expression.probabilities.values())
    assert [first["b"].probabilities[n] for n in FER_CLASSES] == pytest.approx(raw_other, abs=0.02)
    smoothed = [0.5 * first["b"].probabilities[n] + 0.5 * first["a"].probabilities[n]
                for n in FER_CLASSES]
    assert [second["b"].probabilities[n] for n in FER_CLASSES] == pytest.approx(smoothed, abs=1e-5)
    faces.forget("b")
    assert faces.classify({"b": (face, "bgr")})["b"].probabilities == \
        pytest.approx(first["a"].probabilities), "a forgotten id starts again"
    with pytest.raises(ValueError, match="smoothing must be in"):
        faces.tune(1.0)


def test_tracker_settings_change_between_frames_and_bad_ones_change_nothing():
    tracker = FaceTracker(smoothing=0.0)
    box, first, second = np.array([[0, 0, 10, 10]]), np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    tracker.update(box, first)
    tracker.configure(0.3, 15, 0.75)
    _, smoothed = tracker.update(box, second)
    assert smoothed[0] == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError, match="iou_threshold"):
        tracker.configure(0.0, 15, 0.2)
    assert (tracker.iou_threshold, tracker.smoothing) == (0.3, 0.75)
    assert tracker.track_ids == [1]


def test_pipeline_tune_applies_detection_limits_at_the_next_frame(tiny_model, media_dir):
    frame = cv2.imread(str(media_dir / "two_people.jpg"))
    pipeline = Pipeline(PipelineConfig(model_path=str(tiny_model), providers="cpu"))
    try:
        assert len(pipeline.process(frame, "bgr").faces) == 2
        pipeline.tune(max_faces=1)
        assert len(pipeline.process(frame, "bgr").faces) == 1
        pipeline.tune(min_detection_confidence=1.0, max_faces=10)
        result = pipeline.process(frame, "bgr")
        assert result.faces == [] and len(result.tracked_ids) == 2, \
            "no face passes; the tracks wait max_missed_frames"
        with pytest.raises(ValueError, match="smoothing must be in"):
            pipeline.tune(min_detection_confidence=0.5, smoothing=1.5)
        assert pipeline.config.min_detection_confidence == 1.0, "nothing changed"
        with pytest.raises(ValueError, match="cannot change model_path"):
            pipeline.tune(model_path="other.onnx")
        pipeline.tune(min_detection_confidence=0.5)
        assert len(pipeline.process(frame, "bgr").faces) == 2
        assert set(TUNABLE_SETTINGS) < {f for f in PipelineConfig.__dataclass_fields__}
    finally:
        pipeline.close()
