"""The pipeline end to end on the shared photos and videos, with the tiny model."""
import cv2
import numpy as np
import pytest

from conftest import FER_CLASSES, write_tiny_model
from wscfer_ros.perception.classifier import ModelError
from wscfer_ros.perception.pipeline import Face, Pipeline, PipelineConfig

STAGES = {"detect", "crop", "classify", "track"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def pipeline(model_path):
    pipeline = Pipeline(PipelineConfig(model_path=str(model_path), providers="cpu"))
    yield pipeline
    pipeline.close()


@pytest.fixture
def fresh(pipeline):
    """The shared pipeline with no tracks left over from another test."""
    pipeline.reset()
    return pipeline


def assert_valid_faces(faces, image):
    height, width = image.shape[:2]
    assert len({face.id for face in faces}) == len(faces)
    for face in faces:
        assert isinstance(face, Face)
        x, y, w, h = face.box
        assert 0 <= x < x + w <= width and 0 <= y < y + h <= height
        assert list(face.probabilities) == FER_CLASSES
        assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert face.label == max(face.probabilities, key=face.probabilities.get)
        assert face.score == face.probabilities[face.label]
        assert 0.0 < face.detection_score <= 1.0


@pytest.mark.parametrize("name, min_faces, max_faces", [
    ("obama-720p.jpg", 1, 1),
    ("two_people.jpg", 2, 2),
    ("obama_and_biden.jpg", 2, 3),
    ("group_2008_007676.jpg", 6, 7),
    ("group_2008_004176.jpg", 6, 7),
])
def test_real_photos(fresh, media_dir, name, min_faces, max_faces):
    image = cv2.imread(str(media_dir / name))
    result = fresh.process(image, "bgr")
    assert min_faces <= len(result.faces) <= max_faces
    assert_valid_faces(result.faces, image)
    assert set(result.timings_ms) == STAGES
    assert all(ms >= 0.0 for ms in result.timings_ms.values())


def test_model_settings_come_from_the_file(pipeline):
    assert pipeline.classifier.class_names == FER_CLASSES
    assert pipeline.config.crop_scale == 0.0  # 0 = use the model file's crop_scale


def test_every_colour_layout_gives_the_same_faces(fresh, media_dir):
    bgr = cv2.imread(str(media_dir / "two_people.jpg"))
    reference = fresh.process(bgr, "bgr")
    layouts = {
        "rgb": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
        "bgra": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
        "rgba": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA),
    }
    for color, image in layouts.items():
        fresh.reset()
        result = fresh.process(image, color)
        assert [f.box for f in result.faces] == [f.box for f in reference.faces], color
        for face, expected in zip(result.faces, reference.faces):
            assert face.probabilities == pytest.approx(expected.probabilities, abs=1e-6), color
    fresh.reset()
    assert len(fresh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), "gray").faces) == 2


def test_padded_rows_are_accepted(fresh, media_dir):
    """A view with a row stride wider than the image, as a ROS image with padding gives."""
    bgr = cv2.imread(str(media_dir / "obama-720p.jpg"))
    view = bgr[:, :1200]
    assert not view.flags.c_contiguous
    assert len(fresh.process(view, "bgr").faces) == 1


def test_blank_frame_has_no_faces(fresh):
    result = fresh.process(np.zeros((480, 640, 3), np.uint8), "bgr")
    assert result.faces == []
    assert set(result.timings_ms) == STAGES


def test_ids_stay_stable_over_consecutive_video_frames(fresh, media_dir):
    capture = cv2.VideoCapture(str(media_dir / "woman2.mp4"))
    ids = []
    try:
        for _ in range(8):
            ok, frame = capture.read()
            assert ok
            (face,) = fresh.process(frame, "bgr").faces
            ids.append(face.id)
    finally:
        capture.release()
    assert len(set(ids)) == 1


def test_reset_forgets_the_tracks(fresh, media_dir):
    image = cv2.imread(str(media_dir / "obama-720p.jpg"))
    (first,) = fresh.process(image, "bgr").faces
    (same,) = fresh.process(image, "bgr").faces
    fresh.reset()
    (after_reset,) = fresh.process(image, "bgr").faces
    assert same.id == first.id
    assert after_reset.id != first.id


@pytest.mark.parametrize("image, color", [
    (np.zeros((48, 64, 3), np.float32), "bgr"),
    (np.zeros((48, 64, 3), np.uint16), "bgr"),
    (np.zeros((48, 64), np.uint8), "bgr"),
    (np.zeros((48, 64, 3), np.uint8), "gray"),
    (np.zeros((48, 64, 4), np.uint8), "rgb"),
    (np.zeros((48, 64, 3), np.uint8), "bgra"),
    (np.zeros((48, 64, 3), np.uint8), "yuv422"),
    (np.zeros((0, 0, 3), np.uint8), "bgr"),
    (np.zeros((2, 48, 64, 3), np.uint8), "bgr"),
    ([[0, 0], [0, 0]], "gray"),
])
def test_bad_arrays_are_rejected(pipeline, image, color):
    with pytest.raises(ValueError):
        pipeline.process(image, color)


def test_alignment_and_crop_scale_options(model_path, media_dir):
    config = PipelineConfig(model_path=str(model_path), providers="cpu", align=True, crop_scale=1.6,
                            smoothing=0.0)
    aligned = Pipeline(config)
    try:
        image = cv2.imread(str(media_dir / "group_2008_007676.jpg"))
        result = aligned.process(image, "bgr")
    finally:
        aligned.close()
    assert 6 <= len(result.faces) <= 7
    assert_valid_faces(result.faces, image)


def test_bad_model_raises_model_error(tmp_path):
    path = write_tiny_model(tmp_path / "no_color.onnx", metadata={"color": None})
    with pytest.raises(ModelError, match="color"):
        Pipeline(PipelineConfig(model_path=str(path)))


def test_negative_crop_scale_is_rejected(model_path):
    with pytest.raises(ValueError, match="crop_scale"):
        Pipeline(PipelineConfig(model_path=str(model_path), crop_scale=-1.0))


@pytest.fixture(scope="module")
def shipped_pipeline():
    pipeline = Pipeline(PipelineConfig(providers="cpu"))
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("name", ["two_people.jpg", "obama_and_biden.jpg"])
def test_a_frame_larger_than_the_detector_needs_gives_the_same_faces(shipped_pipeline, media_dir, name):
    """The photo upscaled to 4000 pixels wide: the same faces and labels, boxes in its own pixels."""
    photo = cv2.imread(str(media_dir / name))
    scale = 4000 / photo.shape[1]
    large = cv2.resize(photo, (4000, round(photo.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    shipped_pipeline.reset()
    original = shipped_pipeline.process(photo, "bgr").faces
    shipped_pipeline.reset()
    enlarged = shipped_pipeline.process(large, "bgr").faces

    assert len(enlarged) == len(original) >= 2
    assert_valid_faces(enlarged, large)
    for face in original:
        match = min(enlarged, key=lambda f: abs(f.box[0] / scale - face.box[0]))
        assert np.array(match.box) / scale == pytest.approx(face.box, abs=4)
        assert match.label == face.label
