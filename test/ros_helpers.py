"""ROS plumbing shared by the ROS tests: an isolated ROS setup, a client node, node processes.

Every test module gets its own ROS domain, discovery limited to this host,
its own log folder and the shipped Fast DDS profile, so tests never see other
ROS traffic on the machine.  Waits are "until this holds" with a generous
limit, never fixed sleeps.
"""
import array
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from wscfer_ros.images import fill_image

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_shm.xml"
STARTUP_TIMEOUT_S = 90.0   # importing MediaPipe and warming up on a busy 2-core machine
REPLY_TIMEOUT_S = 30.0
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Reliable input, so a test's frames are never lost in transport, and fast diagnostics.
TEST_PARAMETERS = ["-p", "qos:=reliable", "-p", "queue_depth:=100", "-p", "diagnostics_period:=0.2"]


def domain_id(module_offset: int) -> int:
    """A ROS domain for one test module: distinct per module, and per run of the tests."""
    return 1 + (os.getpid() * 7 + module_offset) % 100


@contextmanager
def isolated_ros(log_dir: Path, domain: int):
    """Set the ROS environment for this process and its children; restore it afterwards."""
    settings = {
        "ROS_DOMAIN_ID": str(domain),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(log_dir),
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
        "PYTHONUNBUFFERED": "1",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class NodeProcess:
    """A ROS executable of this package (``python -m wscfer_ros.<module>``) in a child process."""

    def __init__(self, module: str, ros_args: list[str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"wscfer_ros.{module}", "--ros-args", *ros_args],
            stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop(self, signum: int = signal.SIGINT, timeout: float = REPLY_TIMEOUT_S) -> int:
        """Send ``signum`` and return the exit status (killed if it does not exit in time)."""
        if self.running():
            self.process.send_signal(signum)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"process did not exit after signal {signum}:\n{self.output()}")


class RosClient:
    """An rclpy node in the test process with its own context and executor."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, message_type, topic: str, qos=10):
        """The subscription to ``topic`` and the list that receives its messages while spinning."""
        received = []
        return self.node.create_subscription(message_type, topic, received.append, qos), received

    def spin_until(self, condition, what: str, timeout: float = REPLY_TIMEOUT_S,
                   processes: tuple[NodeProcess, ...] = ()) -> None:
        """Spin until ``condition()`` holds; fail with ``what`` (and the logs) if it does not."""
        deadline = time.monotonic() + timeout
        while not condition():
            for process in processes:
                if not process.running():
                    raise AssertionError(f"{what}: node exited with {process.process.returncode}:"
                                         f"\n{process.output()}")
            if time.monotonic() > deadline:
                logs = "\n".join(process.output() for process in processes)
                raise AssertionError(f"{what}: not after {timeout:.0f} s\n{logs}")
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def image_message(frame: np.ndarray) -> Image:
    msg = Image()
    fill_image(msg, frame, "bgr8")
    return msg


def jpeg_message(frame: np.ndarray) -> CompressedImage:
    ok, encoded = cv2.imencode(".jpg", frame)
    assert ok
    return CompressedImage(format="jpeg", data=array.array("B", encoded.tobytes()))


class NodeUnderTest:
    """The test's side of one running node: its input publisher and what it published.

    ``process`` is None for a node running inside the test process.
    """

    def __init__(self, client: RosClient, process: NodeProcess | None, namespace: str = "",
                 compressed: bool = False, debug_image: bool = False):
        self.client, self.process = client, process
        self.fqn = f"{namespace}/wscfer_node"
        self.input = client.node.create_publisher(
            CompressedImage if compressed else Image,
            f"{namespace}/image/compressed" if compressed else f"{namespace}/image", RELIABLE)
        expressions, self.expressions = client.collect(String, f"{namespace}/expressions",
                                                       RELIABLE)
        labels, self.labels = client.collect(String, f"{namespace}/expression", RELIABLE)
        self._output_subscriptions = [expressions, labels]
        self.debug_images = []
        if debug_image:
            debug_images, self.debug_images = client.collect(Image, f"{namespace}/debug_image",
                                                             RELIABLE)
            self._output_subscriptions.append(debug_images)
        diagnostics, self.diagnostics = client.collect(DiagnosticArray, "/diagnostics")
        self._subscriptions = [*self._output_subscriptions, diagnostics]
        self.sent = 0

    def close(self) -> None:
        """Drop this test's publisher and subscriptions (their histories go with them)."""
        self.client.node.destroy_publisher(self.input)
        for subscription in self._subscriptions:
            self.client.node.destroy_subscription(subscription)

    def wait_until(self, condition, what: str, timeout: float = REPLY_TIMEOUT_S) -> None:
        processes = (self.process,) if self.process is not None else ()
        self.client.spin_until(condition, what, timeout, processes=processes)

    def wait_until_subscribed(self) -> None:
        """Wait until the node takes our frames and we hear all it publishes."""
        self.wait_until(lambda: self.input.get_subscription_count() > 0
                        and all(s.get_publisher_count() > 0 for s in self._output_subscriptions),
                        f"{self.fqn} connected to the test", STARTUP_TIMEOUT_S)

    def answers(self) -> list[dict]:
        return [json.loads(message.data) for message in self.expressions]

    def answer_to(self, stamp: int) -> dict | None:
        return next((answer for answer in self.answers() if answer["stamp"]["sec"] == stamp), None)

    def send(self, msg, stamp: int) -> None:
        msg.header.stamp.sec = stamp
        msg.header.frame_id = "test_camera"
        self.input.publish(msg)
        self.sent += 1

    def send_and_wait(self, msg, stamp: int) -> dict:
        self.send(msg, stamp)
        self.wait_until(lambda: self.answer_to(stamp) is not None,
                        f"{self.fqn} answers the frame stamped {stamp}")
        return self.answer_to(stamp)

    def counts(self) -> dict[str, str]:
        """The newest diagnostics values of this node (empty before the first report)."""
        for message in reversed(self.diagnostics):
            for status in message.status:
                if status.hardware_id == self.fqn:
                    return {value.key: value.value for value in status.values}
        return {}

    def frame_counts(self) -> dict[str, int]:
        values = self.counts()
        return {name: int(values.get(f"frames {name}", 0))
                for name in ("received", "processed", "skipped", "rejected", "failed")}

    def wait_until_accounted(self) -> dict[str, int]:
        """Frame counts once each frame sent arrived and was processed, skipped or rejected."""
        def settled():
            counts = self.frame_counts()
            done = counts["processed"] + counts["skipped"] + counts["rejected"] + counts["failed"]
            return counts["received"] == self.sent and done == self.sent
        self.wait_until(settled, f"{self.fqn} reports {self.sent} frames accounted for")
        return self.frame_counts()

    def status(self) -> tuple[bytes, str]:
        for message in reversed(self.diagnostics):
            for status in message.status:
                if status.hardware_id == self.fqn:
                    return status.level, status.message
        return b"", ""


class LifecycleManager:
    """What a lifecycle manager does to one node: ask for transitions, read its state."""

    def __init__(self, client: RosClient, process: NodeProcess, fqn: str):
        self.client, self.process, self.fqn = client, process, fqn
        self._change = client.node.create_client(ChangeState, f"{fqn}/change_state")
        self._get = client.node.create_client(GetState, f"{fqn}/get_state")
        for service in (self._change, self._get):
            client.spin_until(service.service_is_ready, f"{service.srv_name} is available",
                              STARTUP_TIMEOUT_S, processes=(process,))

    def _call(self, service, request, what: str):
        future = service.call_async(request)
        self.client.spin_until(future.done, f"{self.fqn} answers {what}",
                               processes=(self.process,))
        return future.result()

    def change(self, transition: int) -> bool:
        """Whether the node accepted ``transition`` (a lifecycle_msgs/Transition id)."""
        request = ChangeState.Request(transition=Transition(id=transition))
        return self._call(self._change, request, f"transition {transition}").success

    def state(self) -> int:
        return self._call(self._get, GetState.Request(), "get_state").current_state.id

    def close(self) -> None:
        self.client.node.destroy_client(self._change)
        self.client.node.destroy_client(self._get)
