"""ROS4HRI (REP-155) over ROS: typed hri_msgs topics, the consumer mode, run-time parameters.

The node runs in its own process; this test process is the ROS4HRI client:
it follows ``/humans/faces/tracked`` and subscribes to each face's topics
when its id appears, as libhri and pyhri do.  The node runs the tiny model of
conftest (real MediaPipe detection, meaningless labels).
"""
import json
from pathlib import Path

import cv2
import hri_msgs
import numpy as np
import pytest
from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, SetParameters
from sensor_msgs.msg import Image

from ros_helpers import (RELIABLE, STARTUP_TIMEOUT_S, TEST_PARAMETERS, NodeProcess,
                         NodeUnderTest, image_message)
from test_hri_faces import HRI_EXPRESSIONS
from wscfer_ros.perception.hri_faces import face_images

MISSED_FRAMES = 3
# RIHS01 type hashes of our build of ROS4HRI's definitions.  The hash covers the fields
# and their types; msg/hri_msgs has exactly the fields and constants of
# ros4hri/hri_msgs' own files (compared line by line, comments aside), so the
# distribution's package hashes the same and typed consumers built against it match.
TYPE_HASHES = {
    "Expression": "RIHS01_411b88e0604397d44775d8ec6a4bc69398fb0dfbfe864c33a40fa99ee85f1b00",
    "IdsList": "RIHS01_7e0812d1ac945c98fd3e393568d581ad0ab567f37b24eff633eab778c1bfe62d",
    "NormalizedRegionOfInterest2D":
        "RIHS01_2e50c93f1ca166ee77af9a5424dc951ae4e452b740162a7f83c082d917dcaff5",
}


def test_the_messages_are_ros4hri_s():
    assert Expression.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "expression": "string", "valence": "float",
        "arousal": "float", "confidence": "float"}
    assert IdsList.get_fields_and_field_types() == {"header": "std_msgs/Header",
                                                    "ids": "sequence<string>"}
    assert NormalizedRegionOfInterest2D.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "xmin": "float", "ymin": "float", "xmax": "float",
        "ymax": "float", "c": "float"}
    constants = {getattr(Expression, name) for name in dir(Expression)
                 if name.isupper() and isinstance(getattr(Expression, name), str)}
    assert HRI_EXPRESSIONS <= constants and len(constants) == 25
    # <prefix>/lib/pythonX.Y/site-packages/hri_msgs/__init__.py -> <prefix>/share/hri_msgs
    share = Path(hri_msgs.__file__).parents[4] / "share" / "hri_msgs"
    for name, expected in TYPE_HASHES.items():
        description = json.loads((share / "msg" / f"{name}.json").read_text())
        hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
        assert hashes[f"hri_msgs/msg/{name}"] == expected, name


@pytest.fixture(scope="module")
def video(media_dir) -> list[np.ndarray]:
    """The first 40 frames of a woman talking to the camera (one face in each)."""
    capture = cv2.VideoCapture(str(media_dir / "woman2.mp4"))
    frames = [capture.read()[1] for _ in range(40)]
    capture.release()
    assert all(frame is not None for frame in frames)
    return frames


def start_node(ros_dir, name: str, *ros_args: str) -> NodeProcess:
    return NodeProcess("node", list(ros_args), ros_dir / f"{name}.log")


class FaceClient:
    """What a ROS4HRI consumer does: follow ``tracked``, subscribe to each face's subtopics."""

    def __init__(self, client, subtopics: dict[str, type]):
        self.client = client
        self.subtopics = subtopics
        self.tracked = []
        self.received: dict[str, dict[str, list]] = {}
        self._subscriptions = {}
        self.tracked_subscription = client.node.create_subscription(IdsList, "/humans/faces/tracked",
                                                        self._on_tracked, RELIABLE)

    def _on_tracked(self, message: IdsList) -> None:
        self.tracked.append(message)
        for face_id in message.ids:
            if face_id not in self._subscriptions:
                self.received[face_id] = {subtopic: [] for subtopic in self.subtopics}
                self._subscriptions[face_id] = [
                    self.client.node.create_subscription(
                        message_type, f"/humans/faces/{face_id}/{subtopic}",
                        self.received[face_id][subtopic].append, RELIABLE)
                    for subtopic, message_type in self.subtopics.items()]

    def matched(self, face_id: str) -> bool:
        return face_id in self._subscriptions and all(
            subscription.get_publisher_count() > 0 for subscription in self._subscriptions[face_id])

    def publishers(self, face_id: str) -> int:
        """Publishers the ROS graph knows on the face's subtopics."""
        return sum(self.client.node.count_publishers(f"/humans/faces/{face_id}/{subtopic}")
                   for subtopic in self.subtopics)

    def close(self) -> None:
        self.client.node.destroy_subscription(self.tracked_subscription)
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                self.client.node.destroy_subscription(subscription)


def test_faces_of_a_video_appear_get_an_expression_per_frame_and_leave(client, ros_dir,
                                                                        model_file, video):
    process = start_node(ros_dir, "camera_node", "-p", f"model_path:={model_file}",
                         "-p", "publish_cropped:=true",
                         "-p", f"max_missed_frames:={MISSED_FRAMES}", *TEST_PARAMETERS)
    node = NodeUnderTest(client, process)
    faces = FaceClient(client, {"expression": Expression, "roi": NormalizedRegionOfInterest2D,
                                "cropped": Image})
    try:
        node.wait_until_subscribed()
        client.spin_until(lambda: faces.tracked_subscription.get_publisher_count() > 0, "tracked is matched",
                          STARTUP_TIMEOUT_S, processes=(process,))
        # The first frame: the face appears in tracked, with the JSON id in its REP-155 id.
        answer = node.send_and_wait(image_message(video[0]), stamp=100)
        node.wait_until(lambda: any(m.header.stamp.sec == 100 for m in faces.tracked),
                        "tracked of the first frame")
        first = next(m for m in faces.tracked if m.header.stamp.sec == 100)
        assert len(first.ids) == 1 and first.ids[0].endswith(f"_{answer['faces'][0]['id']}")
        face_id = first.ids[0]
        node.wait_until(lambda: faces.matched(face_id), f"{face_id}'s topics are matched")

        # Once subscribed: one expression, roi and cropped image per frame, with its stamp.
        stamps = list(range(200, 220))
        answers = [node.send_and_wait(image_message(frame), stamp)
                   for stamp, frame in zip(stamps, video[1:])]
        topics = faces.received[face_id]
        node.wait_until(lambda: all(stamps[-1] in [m.header.stamp.sec for m in topics[subtopic]]
                                    for subtopic in topics), "the messages of the last frame")
        height, width = video[0].shape[:2]
        for subtopic, messages in topics.items():
            seen = [m.header.stamp.sec for m in messages if m.header.stamp.sec >= 200]
            assert seen == stamps, subtopic
        for answer, expression, roi, cropped in zip(answers, *(
                [m for m in topics[s] if m.header.stamp.sec >= 200]
                for s in ("expression", "roi", "cropped"))):
            (json_face,) = answer["faces"]
            assert expression.expression in HRI_EXPRESSIONS
            assert expression.confidence == pytest.approx(json_face["score"], abs=1e-4)
            assert -1 <= expression.valence <= 1 and -1 <= expression.arousal <= 1
            x, y, w, h = json_face["box"]
            assert (roi.xmin, roi.ymin, roi.xmax, roi.ymax) == pytest.approx(
                (x / width, y / height, (x + w) / width, (y + h) / height), abs=1e-6)
            assert roi.c == pytest.approx(json_face["detection_score"], abs=1e-4)
            assert (cropped.encoding, cropped.width, cropped.height) == ("bgr8", 128, 128)
        assert all(m.ids == [face_id] for m in faces.tracked if m.header.stamp.sec >= 200)

        # The face leaves: kept for MISSED_FRAMES frames, then dropped with its publishers.
        empty = np.full_like(video[0], 128)
        for index in range(MISSED_FRAMES + 1):
            assert node.send_and_wait(image_message(empty), stamp=300 + index)["faces"] == []
        node.wait_until(lambda: any(m.header.stamp.sec == 300 + MISSED_FRAMES
                                    for m in faces.tracked), "tracked of the last empty frame")
        by_stamp = {m.header.stamp.sec: m.ids for m in faces.tracked}
        assert [by_stamp[300 + i] for i in range(MISSED_FRAMES + 1)] == \
            [[face_id]] * MISSED_FRAMES + [[]]
        node.wait_until(lambda: faces.publishers(face_id) == 0,
                        f"the node destroys {face_id}'s publishers")
        node.wait_until(lambda: node.counts().get("ROS4HRI publishers") == "0",
                        "diagnostics count no per-face publisher")
    finally:
        faces.close()
        node.close()
        assert process.stop() == 0
    assert "Traceback" not in process.output()


class ParameterClient:
    def __init__(self, client, node_name: str, process):
        self.client, self.process = client, process
        self._set = client.node.create_client(SetParameters, f"{node_name}/set_parameters")
        self._describe = client.node.create_client(DescribeParameters,
                                                   f"{node_name}/describe_parameters")
        for service in (self._set, self._describe):
            client.spin_until(service.service_is_ready, f"{service.srv_name} is available",
                              STARTUP_TIMEOUT_S, processes=(process,))

    def _call(self, service, request):
        future = service.call_async(request)
        self.client.spin_until(future.done, f"{service.srv_name} answers", processes=(self.process,))
        return future.result()

    def set(self, name: str, value):
        kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}[type(value)]
        field = {ParameterType.PARAMETER_BOOL: "bool_value",
                 ParameterType.PARAMETER_INTEGER: "integer_value",
                 ParameterType.PARAMETER_DOUBLE: "double_value",
                 ParameterType.PARAMETER_STRING: "string_value"}[kind]
        parameter = Parameter(name=name, value=ParameterValue(type=kind, **{field: value}))
        return self._call(self._set, SetParameters.Request(parameters=[parameter])).results[0]

    def read_only(self, names: list[str]) -> list[bool]:
        response = self._call(self._describe, DescribeParameters.Request(names=names))
        return [descriptor.read_only for descriptor in response.descriptors]

    def close(self) -> None:
        self.client.node.destroy_client(self._set)
        self.client.node.destroy_client(self._describe)


def test_thresholds_change_at_run_time_and_the_rest_is_read_only(client, ros_dir, model_file,
                                                                 video):
    process = start_node(ros_dir, "parameter_node", "-r", "__ns:=/params",
                         "-p", f"model_path:={model_file}", "-p", "publish_ros4hri:=false",
                         *TEST_PARAMETERS)
    node = NodeUnderTest(client, process, namespace="/params")
    parameters = ParameterClient(client, "/params/wscfer_node", process)
    try:
        node.wait_until_subscribed()
        assert parameters.read_only(["model_path", "input", "publish_cropped", "smoothing",
                                     "min_detection_confidence", "no_image_warn_after"]) == \
            [True, True, True, False, False, False]
        refused = parameters.set("model_path", "other.onnx")
        assert not refused.successful and "read-only" in refused.reason
        assert len(node.send_and_wait(image_message(video[0]), stamp=1)["faces"]) == 1

        assert parameters.set("min_detection_confidence", 1.0).successful
        assert node.send_and_wait(image_message(video[1]), stamp=2)["faces"] == []
        bad = parameters.set("smoothing", 1.0)
        assert not bad.successful and bad.reason == "smoothing must be in [0, 1), got 1.0"
        assert parameters.set("min_detection_confidence", 0.5).successful
        assert len(node.send_and_wait(image_message(video[2]), stamp=3)["faces"]) == 1
        assert not parameters.set("no_image_warn_after", -1.0).successful
    finally:
        parameters.close()
        node.close()
        assert process.stop() == 0


def face_crop(media_dir, box) -> Image:
    """A ROS4HRI ``cropped`` image (128x128 bgr8) of one face of a real photo."""
    frame = cv2.imread(str(media_dir / "two_people.jpg"))
    message = image_message(face_images(frame, "bgr", [box])[0])
    message.header.frame_id = "test_detector"
    return message


class Detector:
    """The test's stand-in for hri_face_detect: ``tracked`` and each face's ``cropped``."""

    def __init__(self, client, process):
        self.client, self.process = client, process
        self.tracked = client.node.create_publisher(IdsList, "/humans/faces/tracked", RELIABLE)
        self.cropped = {}
        self.expressions: dict[str, list[Expression]] = {}
        self._subscriptions = []

    def track(self, ids: list[str], stamp: int) -> None:
        message = IdsList(ids=ids)
        message.header.stamp.sec = stamp
        self.tracked.publish(message)

    def follow(self, face_id: str) -> None:
        """Publish face_id's images and hear its expressions once both are matched."""
        self.cropped[face_id] = self.client.node.create_publisher(
            Image, f"/humans/faces/{face_id}/cropped", RELIABLE)
        self.expressions[face_id] = []
        subscription = self.client.node.create_subscription(
            Expression, f"/humans/faces/{face_id}/expression", self.expressions[face_id].append,
            RELIABLE)
        self._subscriptions.append(subscription)
        self.client.spin_until(
            lambda: self.cropped[face_id].get_subscription_count() > 0
            and subscription.get_publisher_count() > 0,
            f"the node follows {face_id}", STARTUP_TIMEOUT_S, processes=(self.process,))

    def send(self, face_id: str, image: Image, stamp: int) -> None:
        image.header.stamp.sec = stamp
        self.cropped[face_id].publish(image)

    def close(self) -> None:
        self.client.node.destroy_publisher(self.tracked)
        for publisher in self.cropped.values():
            self.client.node.destroy_publisher(publisher)
        for subscription in self._subscriptions:
            self.client.node.destroy_subscription(subscription)


@pytest.fixture(scope="module")
def consumer_node(ros_dir, model_file):
    """The node as hri_emotion_recognizer: ROS4HRI faces in, expressions out."""
    process = start_node(ros_dir, "consumer_node", "-r", "__ns:=/consumer",
                         "-p", f"model_path:={model_file}", "-p", "input:=ros4hri",
                         "-p", "max_faces:=4", *TEST_PARAMETERS)
    yield process
    process.stop()


@pytest.fixture
def consumer(client, consumer_node):
    node = NodeUnderTest(client, consumer_node, namespace="/consumer")
    detector = Detector(client, consumer_node)
    node.wait_until(lambda: detector.tracked.get_subscription_count() > 0,
                    "the consumer subscribes to tracked", STARTUP_TIMEOUT_S)
    yield node, detector
    detector.track([], stamp=0)
    detector.close()
    node.close()


def test_consumer_mode_answers_one_expression_per_face(consumer, media_dir):
    node, detector = consumer
    crops = {"fa": face_crop(media_dir, (236, 176, 178, 178)),
             "fb": face_crop(media_dir, (710, 96, 180, 180))}
    detector.track(list(crops), stamp=10)
    for face_id in crops:
        detector.follow(face_id)
    for stamp, (face_id, image) in enumerate(crops.items(), start=11):
        detector.send(face_id, image, stamp)
    node.wait_until(lambda: all(detector.expressions[i] for i in crops), "an expression per face")
    node.wait_until(lambda: node.frame_counts()["processed"] >= 2, "both images processed")

    for stamp, face_id in enumerate(crops, start=11):
        (expression,) = detector.expressions[face_id]
        assert expression.header.stamp.sec == stamp
        assert expression.header.frame_id == "test_detector"
        assert expression.expression in HRI_EXPRESSIONS
        assert 0 < expression.confidence <= 1 and -1 <= expression.valence <= 1
    values = node.counts()
    assert values["ROS4HRI faces"] == "2" and values["ids waiting for an image"] == "0"
    assert node.status()[1] == "processing the newest frames"


def test_consumer_mode_counts_bad_input_and_keeps_answering(client, consumer, media_dir):
    node, detector = consumer
    good = face_crop(media_dir, (236, 176, 178, 178))
    detector.track(["fc", "fd", "fe"], stamp=20)
    detector.follow("fc")
    node.wait_until(lambda: node.counts().get("ids waiting for an image") == "3",
                    "three ids wait for an image")

    wrong = face_crop(media_dir, (236, 176, 178, 178))
    wrong.encoding = "yuv422"
    detector.send("fc", wrong, stamp=21)
    detector.send("fc", good, stamp=22)
    node.wait_until(lambda: [e.header.stamp.sec for e in detector.expressions["fc"]] == [22],
                    "the good image after the bad one is answered")
    detector.track(["fc"], stamp=23)           # fd and fe leave without an image
    node.wait_until(lambda: node.counts().get("ids left without an image") == "2",
                    "ids without an image counted")
    assert int(node.counts()["rejected: unsupported encoding"]) == 1

    # Ids that churn every list, ids that cannot name a topic, more ids than max_faces (4).
    for stamp in range(30, 80):
        detector.track([f"churn{stamp}_{k}" for k in range(3)], stamp)
    detector.track(["3abc", "a/b", "", "fine", "f1", "f2", "f3", "f4"], stamp=80)
    node.wait_until(lambda: node.counts().get("ids rejected: over max_faces") == "1",
                    "ids over max_faces counted")
    values = node.counts()
    assert values["ids rejected: invalid name"] == "3"
    assert int(values["ids appeared"]) >= 150 + 4
    assert values["ROS4HRI faces"] == "4" and values["ROS4HRI publishers"] == "4"
    node.wait_until(lambda: client.node.count_publishers("/humans/faces/churn79_0/expression") == 0,
                    "churned ids' publishers destroyed")

    detector.track(["fc"], stamp=81)
    node.wait_until(lambda: node.counts().get("ROS4HRI faces") == "1", "back to one face")
    detector.send("fc", good, stamp=82)
    node.wait_until(lambda: 82 in [e.header.stamp.sec for e in detector.expressions["fc"]],
                    "still answering")
    assert node.process.running()
    assert "Traceback" not in node.process.output()
