"""Face ids across frames and smoothing of the probabilities."""
import numpy as np
import pytest

from wscfer_ros.perception.tracking import FaceTracker, iou_matrix

HAPPY = np.array([[0.1, 0.8, 0.1]], np.float32)
SAD = np.array([[0.7, 0.1, 0.2]], np.float32)


def test_iou_matrix_known_values():
    boxes_a = [[0, 0, 10, 10], [100, 100, 10, 10]]
    boxes_b = [[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 5, 5]]
    expected = np.array([[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou_matrix(boxes_a, boxes_b), expected)
    assert iou_matrix(np.zeros((0, 4)), boxes_b).shape == (0, 3)


def test_id_stays_with_a_moving_face():
    tracker = FaceTracker(smoothing=0.0)
    ids = [tracker.update([[100 + 6 * step, 80 + 2 * step, 60, 60]], HAPPY)[0][0] for step in range(20)]
    assert len(set(ids)) == 1


def test_ids_follow_the_boxes_not_the_order():
    tracker = FaceTracker()
    left, right = [10, 10, 50, 50], [300, 20, 60, 60]
    first, _ = tracker.update([left, right], np.vstack([HAPPY, SAD]))
    swapped, _ = tracker.update([[302, 21, 60, 60], [12, 10, 50, 50]], np.vstack([SAD, HAPPY]))
    assert first[0] != first[1]
    assert list(swapped) == [first[1], first[0]]


def test_new_face_gets_a_new_id():
    tracker = FaceTracker()
    (old,), _ = tracker.update([[10, 10, 50, 50]], HAPPY)
    ids, _ = tracker.update([[12, 10, 50, 50], [400, 10, 50, 50]], np.vstack([HAPPY, SAD]))
    assert ids[0] == old
    assert ids[1] != old


def test_id_survives_up_to_max_missed_frames():
    tracker = FaceTracker(max_missed_frames=3)
    box = [[50, 50, 80, 80]]
    (first,), _ = tracker.update(box, HAPPY)
    for _ in range(3):
        tracker.update(np.zeros((0, 4)), np.zeros((0, 3)))
    (again,), _ = tracker.update(box, HAPPY)
    assert again == first


def test_id_expires_after_max_missed_frames():
    tracker = FaceTracker(max_missed_frames=3, smoothing=0.9)
    box = [[50, 50, 80, 80]]
    (first,), _ = tracker.update(box, HAPPY)
    for _ in range(4):
        tracker.update(np.zeros((0, 4)), np.zeros((0, 3)))
    (later,), probabilities = tracker.update(box, SAD)
    assert later != first
    np.testing.assert_array_equal(probabilities, SAD)  # nothing carried over from the expired track


def test_ids_are_never_reused_after_reset():
    tracker = FaceTracker()
    (first,), _ = tracker.update([[0, 0, 40, 40]], HAPPY)
    tracker.reset()
    (after_reset,), _ = tracker.update([[0, 0, 40, 40]], HAPPY)
    assert after_reset > first


def test_smoothing_zero_returns_raw_probabilities():
    tracker = FaceTracker(smoothing=0.0)
    tracker.update([[0, 0, 40, 40]], HAPPY)
    _, probabilities = tracker.update([[1, 0, 40, 40]], SAD)
    np.testing.assert_array_equal(probabilities, SAD)


def test_smoothing_blends_with_the_past():
    tracker = FaceTracker(smoothing=0.75)
    _, first = tracker.update([[0, 0, 40, 40]], HAPPY)
    np.testing.assert_array_equal(first, HAPPY)
    _, second = tracker.update([[1, 0, 40, 40]], SAD)
    np.testing.assert_allclose(second, 0.75 * HAPPY + 0.25 * SAD, rtol=1e-6)
    _, third = tracker.update([[2, 0, 40, 40]], SAD)
    np.testing.assert_allclose(third, 0.75 * second + 0.25 * SAD, rtol=1e-6)
    np.testing.assert_allclose(third.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{"smoothing": 1.0}, {"smoothing": -0.1}, {"max_missed_frames": -1},
                                    {"iou_threshold": 0.0}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        FaceTracker(**kwargs)


def test_faces_that_come_and_go_never_pile_up_tracks():
    """A crowd passing by for hours: expired tracks are freed, only live ones are kept."""
    tracker = FaceTracker(max_missed_frames=2)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        count = int(rng.integers(0, 4))
        boxes = np.column_stack([rng.integers(0, 600, count), rng.integers(0, 400, count),
                                 np.full(count, 40), np.full(count, 40)])
        tracker.update(boxes, np.tile(HAPPY, (count, 1)))
        assert tracker.track_count <= 3 * (tracker.max_missed_frames + 1)
    for _ in range(tracker.max_missed_frames + 1):
        tracker.update(np.zeros((0, 4)), np.zeros((0, 3)))
    assert tracker.track_count == 0
