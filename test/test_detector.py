"""Face detection on the shared photos (face counts from PROVENANCE.md there)."""
import cv2
import numpy as np
import pytest

from wscfer_ros.perception.detector import (FULL_RANGE_HOLD_FRAMES, FULL_RANGE_PROBE_FRAMES, MAX_DETECTION_SIDE,
                                            START_UP_NOISE, Detection, FaceDetector, _not_covered,
                                            _start_up_noise_dropped)
from wscfer_ros.perception.pipeline import PipelineConfig


def load_rgb(media_dir, name):
    return cv2.cvtColor(cv2.imread(str(media_dir / name)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def shared_detector():
    detector = FaceDetector(PipelineConfig().detector)
    yield detector
    detector.close()


@pytest.fixture
def default_detector(shared_detector):
    """The default detector, without memory of the frames other tests gave it."""
    shared_detector.reset()
    return shared_detector


def assert_inside_frame(faces, image):
    height, width = image.shape[:2]
    for face in faces:
        x, y, w, h = face.box
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
        assert 0.0 < face.score <= 1.0


@pytest.mark.parametrize("name, count, min_width, max_width", [
    ("obama-720p.jpg", 1, 150, 250),
    ("two_people.jpg", 2, 140, 210),
])
def test_close_faces(default_detector, media_dir, name, count, min_width, max_width):
    image = load_rgb(media_dir, name)
    faces = default_detector.detect(image)
    assert len(faces) == count
    assert all(min_width <= face.box[2] <= max_width for face in faces)
    assert_inside_frame(faces, image)


def test_obama_and_biden(default_detector, media_dir):
    """The two adults' faces (about 200 px), and with the default tiling the girl's below them, in shadow."""
    image = load_rgb(media_dir, "obama_and_biden.jpg")
    faces = default_detector.detect(image)
    adults = [face for face in faces if face.box[1] < 600 and 150 <= face.box[2] <= 280]
    girl = [face for face in faces if face.box[1] > 900 and 120 <= face.box[2] <= 220]
    assert len(adults) == 2 and len(girl) == 1 and len(faces) == 3
    assert_inside_frame(faces, image)


@pytest.mark.parametrize("name, min_width, max_width", [
    ("group_2008_007676.jpg", 30, 75),
    ("group_2008_004176.jpg", 20, 60),
])
def test_group_photos_find_at_least_six_of_seven(default_detector, media_dir, name, min_width, max_width):
    image = load_rgb(media_dir, name)
    faces = default_detector.detect(image)
    assert 6 <= len(faces) <= 7
    assert all(min_width <= face.box[2] <= max_width for face in faces)
    assert_inside_frame(faces, image)


def test_eyes_lie_in_the_box_person_right_eye_on_image_left(default_detector, media_dir):
    for face in default_detector.detect(load_rgb(media_dir, "two_people.jpg")):
        x, y, w, h = face.box
        for eye_x, eye_y in (face.right_eye, face.left_eye):
            assert x <= eye_x <= x + w and y <= eye_y <= y + h / 2
        assert face.right_eye[0] < face.left_eye[0]


def test_faces_come_best_score_first(default_detector, media_dir):
    scores = [face.score for face in default_detector.detect(load_rgb(media_dir, "group_2008_004176.jpg"))]
    assert scores == sorted(scores, reverse=True)


def test_no_face_in_a_blank_frame(default_detector):
    assert default_detector.detect(np.full((360, 640, 3), 128, np.uint8)) == []


def test_max_faces_keeps_the_best(default_detector, media_dir):
    image = load_rgb(media_dir, "group_2008_004176.jpg")
    detector = FaceDetector(PipelineConfig().detector, max_faces=3)
    try:
        kept = detector.detect(image)
    finally:
        detector.close()
    assert kept == default_detector.detect(image)[:3]


def test_min_face_size_drops_small_faces(media_dir):
    """The faces of this group photo are 28-45 px wide; the close face of obama-720p is about 190 px."""
    detector = FaceDetector("auto", min_face_size=60)
    try:
        assert detector.detect(load_rgb(media_dir, "group_2008_004176.jpg")) == []
        assert len(detector.detect(load_rgb(media_dir, "obama-720p.jpg"))) == 1
    finally:
        detector.close()


@pytest.mark.parametrize("mode", ["short", "full"])
def test_single_model_modes_find_a_close_face(media_dir, mode):
    detector = FaceDetector(mode)
    try:
        assert len(detector.detect(load_rgb(media_dir, "obama-720p.jpg"))) == 1
    finally:
        detector.close()


def test_only_short_range_faces_no_full_range_face_covers_are_added():
    full = [Detection((100, 100, 50, 50), 0.8, (110.0, 115.0), (140.0, 115.0))]
    same_face = Detection((98, 102, 54, 54), 0.95, (110.0, 115.0), (140.0, 115.0))
    other_face = Detection((400, 100, 120, 120), 0.9, (430.0, 140.0), (490.0, 140.0))
    assert _not_covered([same_face, other_face], full) == [other_face]
    assert _not_covered([other_face], []) == [other_face]


@pytest.mark.parametrize("kwargs", [{"mode": "tiny"}, {"min_confidence": 1.5}, {"max_faces": 0},
                                    {"min_face_size": -1}, {"tiling": -1}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        FaceDetector(**kwargs)


def test_auto_keeps_the_full_range_model_for_a_group_then_tries_short_range_again(media_dir, monkeypatch):
    """A group scene pays for the full-range model only, not short + full on every frame."""
    detector = FaceDetector("auto")
    calls = []
    for name in ("_detect_short_range", "_detect_full_range"):
        method = getattr(detector, name)
        monkeypatch.setattr(detector, name, lambda *args, method=method, name=name: calls.append(name) or method(*args))
    group = load_rgb(media_dir, "group_2008_004176.jpg")
    found = [len(detector.detect(group)) for _ in range(FULL_RANGE_HOLD_FRAMES + 2)]
    detector.close()
    assert min(found) >= 6
    assert calls[:2] == ["_detect_short_range", "_detect_full_range"]          # the fallback
    assert calls[2:2 + FULL_RANGE_HOLD_FRAMES] == ["_detect_full_range"] * FULL_RANGE_HOLD_FRAMES
    assert calls[2 + FULL_RANGE_HOLD_FRAMES] == "_detect_short_range"           # then short range again


def test_reset_forgets_the_full_range_hold(media_dir, monkeypatch):
    detector = FaceDetector("auto")
    detector.detect(load_rgb(media_dir, "group_2008_004176.jpg"))
    detector.reset()
    short_calls = []
    method = detector._detect_short_range
    monkeypatch.setattr(detector, "_detect_short_range", lambda *args: short_calls.append(1) or method(*args))
    assert len(detector.detect(load_rgb(media_dir, "obama-720p.jpg"))) == 1
    detector.close()
    assert short_calls == [1]


@pytest.mark.parametrize("mode", ["short", "full"])
def test_min_confidence_holds_in_both_models_and_changes_at_run_time(media_dir, mode):
    image = load_rgb(media_dir, "two_people.jpg")
    detector = FaceDetector(mode, min_confidence=0.5)
    try:
        scores = [face.score for face in detector.detect(image)]
        assert len(scores) == 2
        detector.set_limits(min(scores) + 0.01, 10, 16)
        assert [face.score for face in detector.detect(image)] == pytest.approx([max(scores)],
                                                                                 abs=0.01)
        detector.set_limits(0.5, 1, 16)
        assert len(detector.detect(image)) == 1, "max_faces"
        with pytest.raises(ValueError, match="min_face_size must be >= 0"):
            detector.set_limits(0.5, 1, -1)
    finally:
        detector.close()


def test_auto_finds_portrait_close_ups_that_the_full_range_model_misses(muxspace_dir):
    """Head-and-shoulders photos: the short-range model scores many below its trust threshold, and
    the full-range model finds no face in them; ``auto`` keeps the short-range faces then."""
    files = sorted((muxspace_dir / "happy").glob("*.jpg"))[:40]
    detector = FaceDetector("auto")
    found = []
    for path in files:
        detector.reset()
        found.append(bool(detector.detect(load_rgb(path.parent, path.name))))
    detector.close()
    assert sum(found) >= 0.95 * len(files), f"faces found in {sum(found)} of {len(files)} portraits"


def test_a_close_up_the_full_range_model_misses_does_not_hold_the_full_range_model(monkeypatch):
    """An unsure short-range face and nothing from the full-range model: the face stays, and the
    next frame tries the short-range model again instead of the full-range one that saw nothing."""
    detector = FaceDetector("auto")
    unsure = Detection((10, 10, 200, 200), 0.6, (60.0, 80.0), (150.0, 80.0))
    calls = []
    monkeypatch.setattr(detector, "_detect_short_range", lambda *args: calls.append("short") or [unsure])
    monkeypatch.setattr(detector, "_detect_full_range", lambda *args: calls.append("full") or [])
    frame = np.zeros((240, 320, 3), np.uint8)
    assert [detector.detect(frame) for _ in range(3)] == [[unsure]] * 3
    detector.close()
    assert calls == ["short", "full"] * 3


@pytest.mark.parametrize("mode", ["auto", "short", "full"])
def test_starting_the_models_prints_nothing(capfd, mode):
    detector = FaceDetector(mode)
    detector.warm_up()
    detector.close()
    assert capfd.readouterr().err == ""


def test_only_mediapipes_start_up_noise_is_dropped(capfd):
    import os

    with _start_up_noise_dropped():
        for noise in START_UP_NOISE:
            os.write(2, f"W0000 00:00:17 123 some.cc:85] {noise}: details\n".encode())
        os.write(2, b"a real error\n")
    assert capfd.readouterr().err == "a real error\n"


def test_a_large_frame_reaches_the_models_downscaled_and_its_boxes_come_back_in_its_pixels(
        media_dir, monkeypatch):
    group = load_rgb(media_dir, "group_2008_004176.jpg")
    scale = 4000 / group.shape[1]
    large = cv2.resize(group, (4000, round(group.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    detector = FaceDetector("auto", tiling=0)   # the whole frame's two runs only
    seen = []   # (width, height) of what each model was given
    short, full = detector._short_range.detect, detector._full_range.process
    monkeypatch.setattr(detector._short_range, "detect",
                        lambda image: seen.append((image.width, image.height)) or short(image))
    monkeypatch.setattr(detector._full_range, "process",
                        lambda image: seen.append(image.shape[1::-1]) or full(image))
    original = detector.detect(group)
    detector.reset()
    seen.clear()
    enlarged = detector.detect(large)
    detector.close()

    assert len(seen) == 2, "auto falls back to the full-range model on this group"
    assert all(max(size) == MAX_DETECTION_SIDE for size in seen), seen
    assert_inside_frame(enlarged, large)
    assert len(enlarged) == len(original) >= 6
    for face in original:
        match = min(enlarged, key=lambda f: abs(f.box[0] / scale - face.box[0]) + abs(f.box[1] / scale - face.box[1]))
        assert np.array(match.box) / scale == pytest.approx(face.box, abs=3)
        assert np.array(match.right_eye) / scale == pytest.approx(face.right_eye, abs=3)


def _scripted(monkeypatch, detector, short_faces, full_faces):
    """Make the detector's two models return these faces; the list of calls it makes."""
    calls = []
    monkeypatch.setattr(detector, "_detect_short_range", lambda *args: calls.append("short") or list(short_faces))
    monkeypatch.setattr(detector, "_detect_full_range", lambda *args: calls.append("full") or list(full_faces))
    return calls


def test_auto_tries_the_full_range_model_now_and_then_beside_a_sure_close_face(monkeypatch):
    """Distant faces beside a close one are looked for: first frame, then every FULL_RANGE_PROBE_FRAMES."""
    detector = FaceDetector("auto")
    close = Detection((200, 100, 220, 220), 0.95, (260.0, 180.0), (360.0, 180.0))
    calls = _scripted(monkeypatch, detector, [close], [])
    frame = np.zeros((480, 640, 3), np.uint8)
    assert all(detector.detect(frame) == [close] for _ in range(2 * FULL_RANGE_PROBE_FRAMES + 3))
    detector.close()
    frames_with_full = [index for index, calls_of_frame in enumerate(_frames(calls)) if "full" in calls_of_frame]
    assert frames_with_full == [0, FULL_RANGE_PROBE_FRAMES + 1, 2 * FULL_RANGE_PROBE_FRAMES + 2]


def _frames(calls):
    """The calls grouped per frame (each frame starts with the short-range model here)."""
    frames = []
    for call in calls:
        if call == "short":
            frames.append([])
        frames[-1].append(call)
    return frames


def test_auto_keeps_a_close_face_and_the_distant_faces_beside_it_on_every_frame(monkeypatch):
    """The full-range model finds the distant faces but not the close one: both models run on every frame
    (hold or not), and every frame has all three faces."""
    detector = FaceDetector("auto")
    close = Detection((200, 100, 220, 220), 0.95, (260.0, 180.0), (360.0, 180.0))
    distant = [Detection((10, 40, 40, 40), 0.9, (20.0, 55.0), (40.0, 55.0)),
               Detection((590, 40, 40, 40), 0.9, (600.0, 55.0), (620.0, 55.0))]
    calls = _scripted(monkeypatch, detector, [close], distant)
    frame = np.zeros((480, 640, 3), np.uint8)
    found = [detector.detect(frame) for _ in range(2 * FULL_RANGE_HOLD_FRAMES + 3)]
    detector.close()
    assert all(sorted(faces, key=lambda f: f.box) == sorted([close, *distant], key=lambda f: f.box)
               for faces in found)
    assert _frames(calls) == [["short", "full"]] * len(found)
