"""The node's ROS4HRI (REP-155) topics: typed ``hri_msgs`` messages under ``/humans/faces/``.

* :class:`FaceTopics` (camera input): ``/humans/faces/tracked``
  (``hri_msgs/IdsList``) for every processed frame and, for each tracked
  face, ``/humans/faces/<id>/roi`` (``hri_msgs/NormalizedRegionOfInterest2D``),
  ``/humans/faces/<id>/expression`` (``hri_msgs/Expression``) and, when
  asked, ``/humans/faces/<id>/cropped`` (``sensor_msgs/Image``).
* :class:`TrackedFacesInput` (``input: ros4hri``, the consumer mode): follows
  another detector's ``/humans/faces/tracked``, subscribes to each face's
  ``cropped`` (or ``aligned``) image and publishes its ``expression``.

Per-face publishers and subscriptions exist exactly while their id is
tracked: created when it appears in the list, destroyed when it leaves.  The
names are absolute, as REP-155 puts every human under ``/humans``.  What
goes into the messages is computed in :mod:`wscfer_ros.perception.hri_faces`.
"""
from __future__ import annotations

import threading
from typing import Callable

from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.exceptions import InvalidTopicNameException
from rclpy.qos import QoSProfile
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import Image

from .messages import fill_image
from .perception.hri_faces import (FaceIds, TrackedIds, expression_name, face_images, normalized_roi,
                      valence_arousal)

FACES_NAMESPACE = "/humans/faces"
TRACKED_TOPIC = f"{FACES_NAMESPACE}/tracked"
#: Reliable and volatile, depth 10: what ROS4HRI's consumers (libhri, pyhri)
#: subscribe with; a best-effort subscriber matches it too.
QOS = QoSProfile(depth=10)
WARNING_PERIOD_S = 5.0


def face_topic(face_id: str, subtopic: str) -> str:
    return f"{FACES_NAMESPACE}/{face_id}/{subtopic}"


def is_valid_face_id(face_id: str) -> bool:
    """Whether ``face_id`` can name topics: one ROS name token (a letter first, then letters, digits, _)."""
    if "/" in face_id:     # it would make a valid name, but of another face's subtopic
        return False
    try:
        validate_full_topic_name(face_topic(face_id, "expression"))
    except InvalidTopicNameException:
        return False
    return True


def expression_message(header, label: str, score: float, probabilities: dict[str, float]) -> Expression:
    """``hri_msgs/Expression``: the label as its constant, its probability, valence and arousal."""
    valence, arousal = valence_arousal(probabilities)
    return Expression(header=header, expression=expression_name(label), valence=valence,
                      arousal=arousal, confidence=float(score))


class PerFacePublishers:
    """The publishers of each tracked face id, one per subtopic; thread-safe.

    Made with no QoS event handlers: those would be waitables of the
    executor, and these publishers come and go in the worker thread.
    """

    def __init__(self, node, subtopics: dict[str, type]):
        self._node = node
        self._subtopics = subtopics
        self._ids = TrackedIds()
        self._publishers: dict[str, dict] = {}
        self._lock = threading.Lock()

    def update(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """Create the publishers of ids that appeared, destroy those of ids that left; returns both."""
        with self._lock:
            appeared, left = self._ids.update(ids)
            for face_id in left:
                self._destroy(face_id)
            for face_id in appeared:
                self._publishers[face_id] = {
                    subtopic: self._node.create_publisher(
                        message_type, face_topic(face_id, subtopic), QOS,
                        event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))
                    for subtopic, message_type in self._subtopics.items()}
        return appeared, left

    def publish(self, face_id: str, subtopic: str, message) -> bool:
        """Publish on one face's subtopic; False (nothing sent) when the id is not tracked."""
        with self._lock:
            publishers = self._publishers.get(face_id)
            if publishers is None:
                return False
            publishers[subtopic].publish(message)
            return True

    @property
    def ids(self) -> list[str]:
        return list(self._ids.ids)

    @property
    def publisher_count(self) -> int:
        with self._lock:
            return sum(len(publishers) for publishers in self._publishers.values())

    def close(self) -> None:
        """Destroy every face's publishers."""
        self.update([])

    def _destroy(self, face_id: str) -> None:
        for publisher in self._publishers.pop(face_id).values():
            self._node.destroy_publisher(publisher)


class FaceTopics:
    """The REP-155 output of the camera input: ``tracked`` and each tracked face's subtopics.

    ``publish`` is called for every processed frame (worker thread).  A face
    keeps its id and its publishers while the tracker keeps it (it may be
    missed for up to ``max_missed_frames`` frames; its ``roi`` and
    ``expression`` are only published for frames that show it).
    """

    def __init__(self, node, cropped: bool):
        self._node = node
        self._face_ids = FaceIds()
        self._cropped = cropped
        subtopics = {"roi": NormalizedRegionOfInterest2D, "expression": Expression}
        if cropped:
            subtopics["cropped"] = Image
        self._tracked = node.create_lifecycle_publisher(IdsList, TRACKED_TOPIC, QOS)
        self.faces = PerFacePublishers(node, subtopics)

    @property
    def id_prefix(self) -> str:
        return self._face_ids.prefix

    def publish(self, header, result, image, color: str) -> None:
        """The messages of one processed frame (``result``: a pipeline FrameResult)."""
        ids = [self._face_ids(track_id) for track_id in result.tracked_ids]
        self.faces.update(ids)   # before the list, so a consumer finds the topics it names
        self._tracked.publish(IdsList(header=header, ids=ids))
        height, width = image.shape[:2]
        crops = (face_images(image, color, [face.box for face in result.faces])
                 if self._cropped else ())
        for index, face in enumerate(result.faces):
            face_id = self._face_ids(face.id)
            xmin, ymin, xmax, ymax = normalized_roi(face.box, width, height)
            self.faces.publish(face_id, "roi", NormalizedRegionOfInterest2D(
                header=header, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax,
                c=float(face.detection_score)))
            self.faces.publish(face_id, "expression", expression_message(
                header, face.label, face.score, face.probabilities))
            if self._cropped:
                cropped = Image(header=header)
                fill_image(cropped, crops[index], "bgr8")
                self.faces.publish(face_id, "cropped", cropped)

    def stop(self, header) -> None:
        """No face is tracked any more (deactivation): an empty list, and every face's publishers go."""
        self._tracked.publish(IdsList(header=header, ids=[]))
        self.faces.close()

    def close(self) -> None:
        self.faces.close()
        self._node.destroy_lifecycle_publisher(self._tracked)


class TrackedFacesInput:
    """Consumer mode: another detector's tracked faces in, one expression per face image out.

    Subscribes to ``/humans/faces/tracked``; for each id listed (at most
    ``max_faces``, in list order) it subscribes to
    ``/humans/faces/<id>/<image_subtopic>`` and publishes on
    ``/humans/faces/<id>/expression``.  Each image message goes to
    ``on_image(face_id, message)``; ``on_left(face_id)`` is called when an
    id leaves.  Bad lists never stop it: ids that cannot name a topic and
    ids beyond ``max_faces`` are left out and counted (:attr:`counts`), with
    a throttled warning.  Callbacks run in the executor thread;
    :meth:`publish_expression` may be called from any thread.
    """

    COUNTERS = ("ids appeared", "ids left", "ids left without an image", "ids rejected: invalid name",
                "ids rejected: over max_faces")

    def __init__(self, node, image_subtopic: str, qos, max_faces: int,
                 on_image: Callable[[str, Image], None], on_left: Callable[[str], None]):
        self._node = node
        self._image_subtopic = image_subtopic
        self._qos = qos
        self.max_faces = max_faces
        self._on_image = on_image
        self._on_left = on_left
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self._expressions = PerFacePublishers(node, {"expression": Expression})
        self._images: dict[str, object] = {}     # face id -> its image subscription
        self._without_image: set[str] = set()    # tracked ids no image arrived for yet
        self._tracked = node.create_subscription(IdsList, TRACKED_TOPIC, self._on_tracked, qos)

    @property
    def topic_pattern(self) -> str:
        return face_topic("*", self._image_subtopic)

    @property
    def tracked_ids(self) -> list[str]:
        return self._expressions.ids

    @property
    def waiting_for_image(self) -> int:
        """Tracked ids no image arrived for yet."""
        return len(self._without_image)

    @property
    def publisher_count(self) -> int:
        return self._expressions.publisher_count

    def publish_expression(self, face_id: str, message: Expression) -> bool:
        return self._expressions.publish(face_id, "expression", message)

    def close(self) -> None:
        """Unsubscribe from everything and destroy the expression publishers."""
        self._update([])
        self._node.destroy_subscription(self._tracked)

    def _on_tracked(self, message: IdsList) -> None:
        valid = [face_id for face_id in dict.fromkeys(message.ids) if is_valid_face_id(face_id)]
        invalid = len(set(message.ids)) - len(valid)
        over = max(0, len(valid) - self.max_faces)
        logger = self._node.get_logger()
        if invalid:
            self.counts["ids rejected: invalid name"] += invalid
            logger.warning(f"{invalid} id(s) on {TRACKED_TOPIC} cannot name a topic (one ROS "
                           f"name token: a letter first, then letters, digits and _); left out",
                           throttle_duration_sec=WARNING_PERIOD_S)
        if over:
            self.counts["ids rejected: over max_faces"] += over
            logger.warning(f"{TRACKED_TOPIC} lists {len(valid)} faces, more than max_faces "
                           f"({self.max_faces}); the first {self.max_faces} are followed",
                           throttle_duration_sec=WARNING_PERIOD_S)
        self._update(valid[:self.max_faces])

    def _update(self, ids: list[str]) -> None:
        appeared, left = self._expressions.update(ids)
        for face_id in left:
            self._node.destroy_subscription(self._images.pop(face_id))
            if face_id in self._without_image:
                self._without_image.discard(face_id)
                self.counts["ids left without an image"] += 1
            self._on_left(face_id)
        for face_id in appeared:
            self._without_image.add(face_id)
            self._images[face_id] = self._node.create_subscription(
                Image, face_topic(face_id, self._image_subtopic),
                lambda image, face_id=face_id: self._received(face_id, image), self._qos)
        self.counts["ids appeared"] += len(appeared)
        self.counts["ids left"] += len(left)

    def _received(self, face_id: str, image: Image) -> None:
        self._without_image.discard(face_id)
        self._on_image(face_id, image)
