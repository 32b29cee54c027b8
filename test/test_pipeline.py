"""The pipeline end to end on the shared photos and videos, with the tiny model."""
import cv2
import numpy as np
import pytest

from conftest import FER_CLASSES, write_tiny_model
from wscfer_ros.perception.classifier import ModelError
from wscfer_ros.perception.colours import to_rgb
from wscfer_ros.perception.crops import crop_faces
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


def crops_seen_by_the_classifier(pipeline, image):
    """The faces of ``image`` and the crops the pipeline gave its classifier for them."""
    seen = []
    predict = pipeline.classifier.predict
    pipeline.classifier.predict = lambda crops: seen.append(crops.copy()) or predict(crops)
    try:
        result = pipeline.process(image, "bgr")
    finally:
        pipeline.classifier.predict = predict
    return result.faces, seen[0]


def expected_crops(pipeline, image, faces, crop_scale, eyes=None):
    boxes = np.array([face.box for face in faces], np.float64)
    return crop_faces(to_rgb(image, "bgr"), boxes, pipeline.classifier.input_size, crop_scale,
                      pipeline.classifier.color, eyes)


@pytest.mark.parametrize("file_scale, setting, used", [(1.0, 0.0, 1.0), (2.0, 0.0, 2.0), (2.0, 1.4, 1.4)])
def test_the_crops_use_the_model_file_s_crop_scale_unless_one_is_set(tmp_path, media_dir, file_scale,
                                                                     setting, used):
    model = write_tiny_model(tmp_path / "tiny.onnx", crop_scale=file_scale)
    pipeline = Pipeline(PipelineConfig(model_path=str(model), providers="cpu", crop_scale=setting))
    image = cv2.imread(str(media_dir / "two_people.jpg"))
    try:
        faces, crops = crops_seen_by_the_classifier(pipeline, image)
        assert len(faces) == 2
        np.testing.assert_array_equal(crops, expected_crops(pipeline, image, faces, used))
        other = 1.7 if used != 1.7 else 1.2
        assert not np.array_equal(crops, expected_crops(pipeline, image, faces, other))
    finally:
        pipeline.close()


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


def test_align_levels_the_crop_of_a_rolled_face(model_path, media_dir):
    """Rolling a face by 25 degrees barely changes its crop when aligned, and changes it much when not."""
    upright = cv2.imread(str(media_dir / "obama-720p.jpg"))
    height, width = upright.shape[:2]
    rolled = cv2.warpAffine(upright, cv2.getRotationMatrix2D((width / 2, height / 2), 25, 1.0), (width, height),
                            borderMode=cv2.BORDER_REPLICATE)
    crops = {}
    for align in (False, True):
        pipeline = Pipeline(PipelineConfig(model_path=str(model_path), providers="cpu", align=align))
        try:
            for name, image in (("upright", upright), ("rolled", rolled)):
                faces, crops[name, align] = crops_seen_by_the_classifier(pipeline, image)
                assert len(faces) == 1, name
        finally:
            pipeline.close()

    def difference(a, b):
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())

    rolling_aligned = difference(crops["rolled", True], crops["upright", True])
    rolling_unaligned = difference(crops["rolled", False], crops["upright", False])
    # Not 0: the detector's box of the rolled face is larger and shifted. Without alignment the ratio is 1.
    assert rolling_aligned < 0.75 * rolling_unaligned, (rolling_aligned, rolling_unaligned)


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
