"""``wscfer_node``: the facial expressions of the faces in camera images, on ROS 2 topics.

A lifecycle node that only wires ROS to :class:`~wscfer_ros.perception.pipeline.Pipeline`:
parameters, QoS, subscription, publishers, lifecycle transitions and
diagnostics.  All image work happens in the pipeline.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed``
(sensor_msgs/CompressedImage); publishes ``expressions`` (std_msgs/String,
one JSON object per processed frame), ``expression`` (std_msgs/String, label
of the largest face), ``debug_image`` (sensor_msgs/Image, when enabled) and
``/diagnostics``.  Topic names are relative, so they remap and follow the
namespace.  It also speaks ROS4HRI (REP-155, ``hri_topics.py``):
``/humans/faces/tracked`` and each face's ``roi``, ``expression`` and
(optionally) ``cropped``; with ``input: ros4hri`` it is instead a consumer
of another detector's faces that publishes only their expressions.

Parameters are declared read-only except those a running pipeline can
change between two frames (detection limits, tracking and smoothing, the
camera-silence delay): those take effect at once through a parameter
callback.

Only the newest frame is processed: the subscription callback turns the
message into an array (a view for raw images) and stores it in a one-slot
mailbox that a worker thread empties; a frame replaced there before the worker
took it is counted as skipped, so no backlog can build while the pipeline is
busy.  Malformed messages are rejected (and counted by kind) in the callback,
before the mailbox, so a flood of bad messages can never push out a good frame.
"""
import dataclasses
import functools
import json
import sys
import threading
import time
import traceback
from collections import deque
from typing import Callable, NamedTuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from wscfer_ros.hri_topics import FaceTopics, TrackedFacesInput, expression_message
from wscfer_ros.messages import compressed_to_array, fill_image, image_to_array
from wscfer_ros.perception.classifier import Classifier
from wscfer_ros.perception.encoded import REJECTION_REASONS, ImageError
from wscfer_ros.perception.hri_faces import CroppedFaceClassifier
from wscfer_ros.perception.mailbox import NewestFrame, NewestPerKey
from wscfer_ros.perception.output import draw_faces, frame_message, largest_face
from wscfer_ros.perception.pipeline import TUNABLE_SETTINGS, Pipeline, PipelineConfig
from wscfer_ros.ros_process import run_node

# Every parameter: name -> (default, description): the pipeline's settings
# (PipelineConfig, which describes them), then the node's own.
# config/wscfer.yaml holds the same names and defaults (a test keeps them
# equal).  They are read at configure time; those in DYNAMIC_PARAMETERS can
# also change at run time, all others are read-only.
PARAMETERS = {
    **{setting.name: (setting.default, setting.metadata["description"])
       for setting in dataclasses.fields(PipelineConfig)},
    "input": ("raw", "'raw': subscribe sensor_msgs/Image on 'image'; 'compressed': "
                     "sensor_msgs/CompressedImage (jpeg, png) on 'image/compressed'; 'ros4hri': "
                     "classify the faces another ROS4HRI detector publishes (/humans/faces/tracked "
                     "and each face's image, see face_image) and publish only their expressions"),
    "publish_ros4hri": (True, "publish ROS4HRI (REP-155) topics: /humans/faces/tracked (hri_msgs/IdsList) "
                              "and per face /humans/faces/<id>/roi, /expression (and /cropped)"),
    "publish_cropped": (False, "also publish each face's /humans/faces/<id>/cropped (sensor_msgs/Image, "
                               "bgr8, 128x128)"),
    "face_image": ("cropped", "input 'ros4hri': the face image subtopic to classify, 'cropped' or "
                              "'aligned'"),
    "qos": ("sensor_data", "input QoS: 'sensor_data' (best effort, as camera drivers "
                           "publish) or 'reliable'"),
    "queue_depth": (5, "input QoS history depth; only the newest frame is processed anyway"),
    "publish_debug_image": (False, "publish 'debug_image' with boxes, ids and labels drawn"),
    "diagnostics_period": (1.0, "seconds between two /diagnostics messages"),
    "no_image_warn_after": (5.0, "diagnostics turn WARN when no image arrived for this many "
                                 "seconds while active"),
    "autostart": (True, "configure and activate at start; false waits for a lifecycle manager"),
}
DYNAMIC_PARAMETERS = (*TUNABLE_SETTINGS, "no_image_warn_after")
ROS4HRI_INPUT = "ros4hri"
FACE_IMAGES = ("cropped", "aligned")


class Input(NamedTuple):
    """One kind of input: what to subscribe to and how to turn a message into an array."""

    message_type: type
    topic: str
    to_array: Callable


INPUTS = {"raw": Input(Image, "image", image_to_array),
          "compressed": Input(CompressedImage, "image/compressed", compressed_to_array)}
RELIABILITY = {"sensor_data": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
LATENCY_WINDOW = 200     # frames in the latency percentiles of the diagnostics
WARNING_PERIOD_S = 5.0   # at most one warning per this period for repeated bad frames


class Frame(NamedTuple):
    """A frame that passed the checks, on its way from the callback to the worker."""

    header: object          # std_msgs/Header of the message
    image: np.ndarray
    color: str
    arrival: float          # time.monotonic() when the message arrived


class ExpressionNode(Node):
    """Lifecycle node publishing the expressions of the faces in the newest camera frame."""

    def __init__(self, **kwargs):
        super().__init__("wscfer_node", **kwargs)
        self._frames = NewestFrame()
        self._face_images = NewestPerKey()
        # A Pipeline; a CroppedFaceClassifier with input 'ros4hri' (no detection there).
        self._pipeline: Pipeline | CroppedFaceClassifier | None = None
        self._consumer = False
        self._input = INPUTS["raw"]
        self._input_qos = QoSProfile(depth=1)
        self._input_topic = ""
        self._no_image_warn_after = 0.0
        self._worker: threading.Thread | None = None
        self._subscription = None
        self._outputs = {}
        self._hri: FaceTopics | None = None
        self._faces_input: TrackedFacesInput | None = None
        self._diagnostics_publisher = None
        self._diagnostics_timer = None
        self._active = False
        self._latencies_ms = deque(maxlen=LATENCY_WINDOW)
        self._reset_counters()
        # Declared last: a parameter of the wrong type raises here, and the
        # node must already be complete for rclpy to destroy it.
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, read_only=name not in DYNAMIC_PARAMETERS))
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _parameter(self, name: str):
        return self.get_parameter(name).value

    # Lifecycle transitions

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._read_node_parameters()
            config = PipelineConfig(**{field.name: self._parameter(field.name)
                                       for field in dataclasses.fields(PipelineConfig)})
            if self._consumer:
                self._pipeline = CroppedFaceClassifier(
                    Classifier(config.model_path, config.providers, config.threads, config.busy_wait),
                    config.smoothing)
            else:
                self._pipeline = Pipeline(config)
        except ValueError as error:   # a bad parameter, or a ModelError naming the model file
            self.get_logger().error(f"configuration failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception:   # rclpy turns it into ERROR without a word: say what happened
            self.get_logger().error(f"configuration failed:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR
        classifier = self._pipeline.classifier
        self.get_logger().info(
            f"model {classifier.model_path}: {', '.join(classifier.class_names)}")
        self.get_logger().info(classifier.provider_note)
        if classifier.provider_warning:
            self.get_logger().warning(classifier.provider_warning)

        if not self._consumer:
            self._outputs = {
                "expressions": self.create_lifecycle_publisher(String, "expressions", 10),
                "expression": self.create_lifecycle_publisher(String, "expression", 10),
            }
            if self._parameter("publish_debug_image"):
                self._outputs["debug_image"] = self.create_lifecycle_publisher(
                    Image, "debug_image", self._input_qos)
            if self._parameter("publish_ros4hri"):
                self._hri = FaceTopics(self, cropped=self._parameter("publish_cropped"))
                self.get_logger().info(f"ROS4HRI: faces on /humans/faces/tracked, ids "
                                       f"{self._hri.id_prefix}_<n>")
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(self._parameter("diagnostics_period"),
                                                    self._publish_diagnostics)
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._pipeline.reset()   # faces seen before a pause are not the faces seen now
        self._reset_counters()
        if self._consumer:
            self._face_images.open()
            self._faces_input = TrackedFacesInput(
                self, self._parameter("face_image"), self._input_qos, self._parameter("max_faces"),
                self._receive_face_image, self._face_left)
            work = (self._face_images.take,
                    functools.partial(self._classify_face_images, self._faces_input))
            self._input_topic = self._faces_input.topic_pattern
        else:
            self._frames.open()
            self._subscription = self.create_subscription(
                self._input.message_type, self._input.topic, self._receive, self._input_qos)
            work = (self._frames.take, self._process)
            self._input_topic = self._subscription.topic_name
        self._worker = threading.Thread(target=self._work, args=work, name="wscfer_worker")
        self._worker.start()
        self._active = True
        self.get_logger().info(f"processing images from {self._input_topic}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        self.get_logger().info("stopped processing images")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_shutdown(state)

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()

    def _read_node_parameters(self) -> None:
        """Check and keep the parameters of the ROS side; ValueError names a bad one."""
        choices = {"input": (*INPUTS, ROS4HRI_INPUT), "qos": RELIABILITY, "face_image": FACE_IMAGES}
        for name, allowed in choices.items():
            if self._parameter(name) not in allowed:
                raise ValueError(f"parameter {name} must be one of {', '.join(allowed)}, "
                                 f"got {self._parameter(name)!r}")
        for name in ("queue_depth", "diagnostics_period", "no_image_warn_after"):
            if self._parameter(name) <= 0:
                raise ValueError(f"parameter {name} must be positive, got {self._parameter(name)}")
        self._consumer = self._parameter("input") == ROS4HRI_INPUT
        self._input = INPUTS.get(self._parameter("input"))
        self._input_qos = QoSProfile(depth=self._parameter("queue_depth"),
                                     reliability=RELIABILITY[self._parameter("qos")])
        self._no_image_warn_after = self._parameter("no_image_warn_after")

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Apply the run-time parameters (the others are read-only and never get here)."""
        changes = {parameter.name: parameter.value for parameter in parameters}
        warn_after = changes.get("no_image_warn_after", self._no_image_warn_after or 1.0)
        if warn_after <= 0:
            return SetParametersResult(
                successful=False, reason=f"no_image_warn_after must be positive, got {warn_after}")
        tunable = {name: value for name, value in changes.items() if name in TUNABLE_SETTINGS}
        if tunable and self._pipeline is not None:   # else they are read at configure
            try:
                self._tune(tunable)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        if "no_image_warn_after" in changes:
            self._no_image_warn_after = warn_after
        return SetParametersResult(successful=True)

    def _tune(self, settings: dict) -> None:
        if not self._consumer:
            self._pipeline.tune(**settings)
            return
        # Consumer mode: no detector or tracker here; smoothing and max_faces apply.
        max_faces = settings.get("max_faces", 1)
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        if "smoothing" in settings:
            self._pipeline.tune(settings["smoothing"])
        if "max_faces" in settings and self._faces_input is not None:
            self._faces_input.max_faces = max_faces

    def _reset_counters(self) -> None:
        """Start the frame counters, which count since activation.

        The callback (executor thread) writes received and rejected, the
        worker processed and failed; the diagnostics timer only reads them.
        """
        self._received = 0
        self._rejected = dict.fromkeys(REJECTION_REASONS, 0)
        self._processed = 0
        self._failed = 0
        self._failures_in_a_row = 0
        self._last_arrival: float | None = None   # time.monotonic() of the newest message
        self._latencies_ms.clear()
        self._activated_at = time.monotonic()
        self._last_report = (self._activated_at, 0, 0)   # time, received, processed

    def _stop_processing(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        if self._faces_input is not None:
            self._faces_input.close()
            self._faces_input = None
        self._frames.close()
        self._face_images.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._hri is not None and self._active:
            header = Header(stamp=self.get_clock().now().to_msg())
            self._hri.stop(header)
        self._active = False

    def _release(self) -> None:
        """Undo configure (and activate); safe to call in any state."""
        self._stop_processing()
        if self._hri is not None:
            self._hri.close()
            self._hri = None
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._diagnostics_publisher is not None:
            self.destroy_publisher(self._diagnostics_publisher)
            self._diagnostics_publisher = None
        if self._pipeline is not None:
            if isinstance(self._pipeline, Pipeline):
                self._pipeline.close()
            self._pipeline = None

    # Frames: the subscription callbacks (executor thread), then the worker thread

    def _checked_frame(self, message, to_array) -> Frame | None:
        """Count, check and convert one image message; None (counted, warned) when unusable."""
        self._last_arrival = time.monotonic()
        self._received += 1
        try:
            image, color = to_array(message)
        except ImageError as error:
            self._rejected[error.reason] += 1
            self.get_logger().warning(
                f"rejected a frame ({sum(self._rejected.values())} rejected so far): {error}",
                throttle_duration_sec=WARNING_PERIOD_S)
            return None
        except Exception:   # a decoder failure other than a bad image must not stop the node
            self._frame_failed()
            return None
        return Frame(message.header, image, color, self._last_arrival)

    def _receive(self, message) -> None:
        """Camera input: only a usable frame goes to the worker."""
        frame = self._checked_frame(message, self._input.to_array)
        if frame is not None:
            self._frames.put(frame)

    def _receive_face_image(self, face_id: str, message: Image) -> None:
        """Consumer mode: one face's image from another detector."""
        frame = self._checked_frame(message, image_to_array)
        if frame is not None:
            self._face_images.put(face_id, frame)

    def _face_left(self, face_id: str) -> None:
        self._face_images.drop(face_id)
        self._pipeline.forget(face_id)

    def _work(self, take, process) -> None:
        while (item := take()) is not None:
            try:
                process(item)
            except Exception:   # a library failure on one frame must not stop the node
                self._frame_failed()
                continue
            if self._failures_in_a_row:
                self.get_logger().info(f"processing recovered after {self._failures_in_a_row} "
                                       f"failed frame(s)")
                self._failures_in_a_row = 0

    def _frame_failed(self) -> None:
        """Count the exception being handled; log it (with its traceback) once per burst."""
        self._failed += 1
        self._failures_in_a_row += 1
        if self._failures_in_a_row == 1:
            self.get_logger().error(
                f"processing a frame failed ({self._failed} failed since activation; "
                f"further failures are counted until a frame succeeds):\n"
                f"{traceback.format_exc()}")

    def _process(self, frame: Frame) -> None:
        result = self._pipeline.process(frame.image, frame.color)
        latency_ms = (time.monotonic() - frame.arrival) * 1000.0
        self._latencies_ms.append(latency_ms)
        self._processed += 1

        header = frame.header
        height, width = frame.image.shape[:2]
        expressions = frame_message(result, stamp_sec=header.stamp.sec,
                                    stamp_nanosec=header.stamp.nanosec,
                                    frame_id=header.frame_id, width=width,
                                    height=height, latency_ms=latency_ms)
        self._outputs["expressions"].publish(String(data=json.dumps(expressions)))
        face = largest_face(result)
        if face is not None:
            self._outputs["expression"].publish(String(data=face.label))
        if self._hri is not None:
            self._hri.publish(header, result, frame.image, frame.color)
        if "debug_image" in self._outputs:
            debug_image = Image(header=header)
            fill_image(debug_image, draw_faces(frame.image, result, frame.color), "bgr8")
            self._outputs["debug_image"].publish(debug_image)

    def _classify_face_images(self, faces_input: TrackedFacesInput, frames: dict) -> None:
        """Consumer mode: the expressions of the newest image of each face, one batched call."""
        expressions = self._pipeline.classify(
            {face_id: (frame.image, frame.color) for face_id, frame in frames.items()})
        now = time.monotonic()
        for face_id, expression in expressions.items():
            frame = frames[face_id]
            self._latencies_ms.append((now - frame.arrival) * 1000.0)
            message = expression_message(frame.header, expression.label, expression.score,
                                         expression.probabilities)
            if not faces_input.publish_expression(face_id, message):
                self._pipeline.forget(face_id)   # it left while being classified
        self._processed += len(frames)

    # Diagnostics (executor thread)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        last_time, last_received, last_processed = self._last_report
        elapsed = max(now - last_time, 1e-9)
        received, processed = self._received, self._processed
        self._last_report = (now, received, processed)

        latencies = list(self._latencies_ms)
        p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (np.nan, np.nan)
        classifier = self._pipeline.classifier
        status = DiagnosticStatus(name=f"{self.get_name()}: expression recognition",
                                  hardware_id=self.get_fully_qualified_name())
        status.level, status.message = self._health(now)
        values = {
            "input rate (Hz)": f"{(received - last_received) / elapsed:.1f}",
            "processed rate (Hz)": f"{(processed - last_processed) / elapsed:.1f}",
            "frames received": received,
            "frames processed": processed,
            "frames skipped": self._frames.skipped + self._face_images.skipped,
            "frames rejected": sum(self._rejected.values()),
            **{f"rejected: {reason}": count for reason, count in self._rejected.items()},
            "frames failed": self._failed,
            "latency p50 (ms)": f"{p50:.1f}",
            "latency p95 (ms)": f"{p95:.1f}",
            "faces tracked": self._pipeline.tracked_faces,
            **self._ros4hri_values(),
            "provider": classifier.provider,
            "model": str(classifier.model_path),
            # What this end of each topic has matched: discovery is not symmetric,
            # and a message published before the subscriber is matched is lost.
            "input publishers": self._subscription.get_publisher_count() if self._subscription else 0,
            **{f"subscribers: {name}": publisher.get_subscription_count()
               for name, publisher in self._outputs.items()},
        }
        status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
        diagnostics = DiagnosticArray(status=[status])
        diagnostics.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_publisher.publish(diagnostics)

    def _ros4hri_values(self) -> dict:
        """The ROS4HRI side of the diagnostics: faces and per-face publishers, consumer counters."""
        faces = self._faces_input
        if faces is not None:
            return {"ROS4HRI faces": len(faces.tracked_ids),
                    "ROS4HRI publishers": faces.publisher_count,
                    "ids waiting for an image": faces.waiting_for_image,
                    **faces.counts}
        if self._hri is not None:
            return {"ROS4HRI faces": len(self._hri.faces.ids),
                    "ROS4HRI publishers": self._hri.faces.publisher_count}
        return {}

    def _health(self, now: float) -> tuple[bytes, str]:
        """WARN with every reason that holds (no images, CUDA asked for but not used), else OK."""
        warnings = []
        if self._pipeline.classifier.provider_warning:
            warnings.append(self._pipeline.classifier.provider_warning)
        if self._active:
            silent_s = now - (self._last_arrival or self._activated_at)
            if silent_s > self._no_image_warn_after:
                warnings.append(f"no image received on {self._input_topic} "
                                f"for {silent_s:.0f} s")
        if warnings:
            return DiagnosticStatus.WARN, "; ".join(warnings)
        return DiagnosticStatus.OK, "processing the newest frames" if self._active else "inactive"


def _start(node: ExpressionNode) -> bool:
    """Configure and activate now when ``autostart`` is set; else wait for a lifecycle manager."""
    if not node.get_parameter("autostart").value:
        return True
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("activation failed")
        return False
    return True


def main(args=None) -> int:
    return run_node("wscfer_node", ExpressionNode, _start, args=args, parameters=PARAMETERS,
                    summary="Facial expressions of the faces in camera images, on ROS 2 topics: "
                            "subscribes 'image' (or 'image/compressed'), publishes 'expressions' "
                            "(JSON), 'expression', 'debug_image' and /diagnostics.",
                    example="wscfer_node --ros-args -p detector:=full -r image:=/camera/image_raw")


if __name__ == "__main__":
    sys.exit(main())
