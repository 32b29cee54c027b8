"""The JSON message of the expressions topic and the debug drawing."""
import json

import numpy as np

from wscfer_ros.perception.output import SCHEMA_VERSION, draw_faces, frame_message, largest_face
from wscfer_ros.perception.pipeline import Face, FrameResult

CLASSES = ["angry", "happy", "neutral"]


def make_face(face_id, box, probabilities=(0.1, 0.7, 0.2)):
    probabilities = np.asarray(probabilities, np.float32)
    best = int(probabilities.argmax())
    return Face(id=face_id, box=box, detection_score=np.float32(0.93), label=CLASSES[best],
                score=probabilities[best], probabilities=dict(zip(CLASSES, probabilities)))


def make_message(faces):
    return frame_message(FrameResult(faces, {"detect": 1.0}), stamp_sec=1700000000, stamp_nanosec=5000,
                         frame_id="camera", width=640, height=480, latency_ms=4.2345)


def test_message_has_exactly_the_documented_shape():
    message = make_message([make_face(3, (212, 80, 96, 96))])
    assert set(message) == {"schema", "stamp", "frame_id", "width", "height", "latency_ms", "faces"}
    assert message["schema"] == SCHEMA_VERSION == 1
    assert message["stamp"] == {"sec": 1700000000, "nanosec": 5000}
    assert (message["frame_id"], message["width"], message["height"]) == ("camera", 640, 480)
    assert isinstance(message["latency_ms"], float)
    (face,) = message["faces"]
    assert set(face) == {"id", "box", "detection_score", "label", "score", "probabilities"}
    assert face["id"] == 3 and type(face["id"]) is int
    assert face["box"] == [212, 80, 96, 96] and all(type(v) is int for v in face["box"])
    assert type(face["detection_score"]) is float and face["detection_score"] == 0.93
    assert face["label"] == "happy" and type(face["score"]) is float and face["score"] == 0.7
    assert list(face["probabilities"]) == CLASSES
    assert all(type(p) is float for p in face["probabilities"].values())


def test_message_survives_a_json_round_trip():
    message = make_message([make_face(1, (0, 0, 50, 50)), make_face(2, (100, 20, 60, 60), (0.5, 0.2, 0.3))])
    assert json.loads(json.dumps(message)) == message


def test_no_faces_gives_an_empty_list():
    message = make_message([])
    assert message["faces"] == []
    assert json.loads(json.dumps(message))["faces"] == []


def test_largest_face_by_box_area():
    small, large = make_face(1, (0, 0, 40, 40)), make_face(2, (100, 0, 30, 90))
    assert largest_face(FrameResult([small, large], {})) is large
    assert largest_face(FrameResult([], {})) is None


def text_height(canvas, box):
    """Rows above the box that hold the drawn label."""
    x, y, w, _ = box
    band = canvas[:y, x:x + w].any(axis=(1, 2))
    return int(band.sum())


def test_draw_faces_returns_an_annotated_copy():
    image = np.zeros((200, 300, 3), np.uint8)
    result = FrameResult([make_face(1, (100, 60, 80, 80))], {})
    canvas = draw_faces(image, result)
    assert not image.any()  # the input is untouched
    assert canvas.shape == image.shape and canvas.dtype == np.uint8
    assert canvas[60:141, 100].any() and canvas[60, 100:181].any()  # box edges drawn
    assert text_height(canvas, (100, 60, 80, 80)) > 0  # label above the box


def test_label_grows_with_the_box():
    image = np.zeros((600, 800, 3), np.uint8)
    small_box, large_box = (50, 200, 40, 40), (300, 200, 320, 320)
    small = draw_faces(image, FrameResult([make_face(1, small_box)], {}))
    large = draw_faces(image, FrameResult([make_face(1, large_box)], {}))
    assert text_height(large, large_box) > 1.5 * text_height(small, small_box)


def test_gray_frames_are_drawn_in_colour():
    gray = np.zeros((100, 100), np.uint8)
    canvas = draw_faces(gray, FrameResult([make_face(1, (20, 30, 40, 40))], {}), "gray")
    assert canvas.shape == (100, 100, 3) and not gray.any()
    assert (canvas[30:71, 20] != canvas[30:71, 20, :1]).any()   # the box is coloured, not gray


def test_label_goes_inside_a_box_at_the_top_edge():
    canvas = draw_faces(np.zeros((200, 200, 3), np.uint8), FrameResult([make_face(1, (50, 0, 100, 100))], {}))
    assert canvas[5:15, 55:140].any()  # away from the box edges
