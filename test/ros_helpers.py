"""ROS plumbing shared by the ROS tests: an isolated ROS setup, a client node, node processes.

Every test module gets a ROS domain no other test run on this machine is
using (reserved with a lock file), discovery limited to this host, its own
log folder and the shipped Fast DDS profile, so tests never see other ROS
traffic on the machine.  Waits are "until this holds" with a generous limit,
never fixed sleeps.
"""
import array
import fcntl
import json
import os
import random
import signal
import tempfile
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

from wscfer_ros.child_process import ChildProcess
from wscfer_ros.messages import fill_image

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_shm.xml"
STARTUP_TIMEOUT_S = 90.0   # importing MediaPipe and warming up on a busy 2-core machine
REPLY_TIMEOUT_S = 30.0
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Reliable input, so a test's frames are never lost in transport, and fast diagnostics.
TEST_PARAMETERS = ["-p", "qos:=reliable", "-p", "queue_depth:=100", "-p", "diagnostics_period:=0.2"]


# Domain 0 is every ROS user's default; above 101, Fast DDS's ports reach
# into Linux's ephemeral port range.
ROS_DOMAINS = range(1, 102)
DOMAIN_LOCKS = Path(tempfile.gettempdir()) / "wscfer_ros_domains"


@contextmanager
def reserved_domain():
    """A ROS domain that no other user of this context manager on the machine holds.

    Several test runs share this machine (worktrees, CI), and with discovery
    on localhost two of them in one domain see each other's nodes: a domain
    derived from the process id collided now and then.  The lock is an flock
    on a file per domain, so it is released when its process ends, however
    it ends.
    """
    DOMAIN_LOCKS.mkdir(exist_ok=True)
    # A random start: the modules of one run do not take turns in one domain.
    start = random.randrange(len(ROS_DOMAINS))
    for step in range(len(ROS_DOMAINS)):
        domain = ROS_DOMAINS[(start + step) % len(ROS_DOMAINS)]
        with open(DOMAIN_LOCKS / f"{domain}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            yield domain
            return
    raise RuntimeError(f"every ROS domain {ROS_DOMAINS.start}-{ROS_DOMAINS.stop - 1} is held by "
                       f"another test run (locks in {DOMAIN_LOCKS})")


@contextmanager
def isolated_ros(log_dir: Path):
    """Set the ROS environment for this process and its children, in a reserved domain; restore it afterwards.

    Yields the domain.
    """
    with reserved_domain() as domain:
        with _environment({
            "ROS_DOMAIN_ID": str(domain),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_LOG_DIR": str(log_dir),
            "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
            "PYTHONUNBUFFERED": "1",
        }):
            yield domain


@contextmanager
def _environment(settings: dict[str, str]):
    """Set ``settings`` in os.environ; restore what was there afterwards."""
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


class NodeProcess(ChildProcess):
    """A ROS executable of this package in a child process, its output in ``log_path``."""

    def __init__(self, module: str, ros_args: list[str], log_path: Path):
        super().__init__(module, ros_args, log_path)

    def wait(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        return super().wait(timeout)

    def stop(self, signum: int = signal.SIGINT, timeout: float = REPLY_TIMEOUT_S) -> int:
        """Send ``signum`` and return the exit status; a process that had to be killed fails the test."""
        status = super().stop(timeout, signum)
        if status is None:
            raise AssertionError(f"process did not exit after signal {signum}:\n{self.output()}")
        return status


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

    def spin_until(self, condition, what, timeout: float = REPLY_TIMEOUT_S,
                   processes: tuple[NodeProcess, ...] = ()) -> None:
        """Spin until ``condition()`` holds; fail with ``what`` (and the logs) if it does not.

        ``what`` is a string, or a function that says it at the moment of failure.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            for process in processes:
                if not process.running():
                    raise AssertionError(f"{_say(what)}: node exited with {process.returncode}:"
                                         f"\n{process.output()}")
            if time.monotonic() > deadline:
                logs = "\n".join(process.output() for process in processes)
                raise AssertionError(f"{_say(what)}: not after {timeout:.0f} s\n{logs}")
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _say(what) -> str:
    return what() if callable(what) else what


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
        # The node's outputs we listen to, by the name its diagnostics give them.
        self._outputs = {"expressions": expressions, "expression": labels}
        self.debug_images = []
        if debug_image:
            debug_images, self.debug_images = client.collect(Image, f"{namespace}/debug_image",
                                                             RELIABLE)
            self._outputs["debug_image"] = debug_images
        diagnostics, self.diagnostics = client.collect(DiagnosticArray, "/diagnostics")
        self._diagnostics = diagnostics
        self._subscriptions = [*self._outputs.values(), diagnostics]
        self.sent = 0

    def close(self) -> None:
        """Drop this test's publisher and subscriptions (their histories go with them)."""
        self.client.node.destroy_publisher(self.input)
        for subscription in self._subscriptions:
            self.client.node.destroy_subscription(subscription)

    def wait_until(self, condition, what, timeout: float = REPLY_TIMEOUT_S) -> None:
        processes = (self.process,) if self.process is not None else ()
        self.client.spin_until(condition, what, timeout, processes=processes)

    def wait_until_subscribed(self) -> None:
        """Wait until the node takes our frames and we hear all it publishes: both ends of each topic matched.

        Discovery is not symmetric: our subscription can match the node's
        publisher seconds before that publisher matches our subscription,
        and what the node publishes in between never reaches us (volatile
        topics), so a test waiting for the answer to its first frame would
        time out.  Our ends are asked directly; the node's ends are what its
        newest diagnostics report (``input publishers``, ``subscribers: ...``).
        """
        first = len(self.diagnostics)

        def ends() -> dict[str, bool]:
            node_side = self.counts(since=first)
            return {
                "our image publisher matched": self.input.get_subscription_count() > 0,
                "the node's subscription matched": int(node_side.get("input publishers", 0)) > 0,
                **{f"our {name} subscription matched": subscription.get_publisher_count() > 0
                   for name, subscription in self._outputs.items()},
                **{f"the node's {name} publisher matched":
                   int(node_side.get(f"subscribers: {name}", 0)) > 0 for name in self._outputs},
                "our diagnostics subscription matched": self._diagnostics.get_publisher_count() > 0,
                "the node's diagnostics heard": bool(node_side),
            }

        def missing() -> str:
            return ", ".join(end for end, matched in ends().items() if not matched)
        self.wait_until(lambda: all(ends().values()),
                        lambda: f"{self.fqn} connected to the test (not yet: {missing()})",
                        STARTUP_TIMEOUT_S)

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

    def counts(self, since: int = 0) -> dict[str, str]:
        """The newest diagnostics values of this node (empty before the first report).

        ``since``: only messages from that position of ``diagnostics`` on.
        """
        for message in reversed(self.diagnostics[since:]):
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

    # A label no lifecycle node knows: rclpy answers success=False and changes nothing.
    PROBE = ChangeState.Request(transition=Transition(label="wscfer_test_probe"))
    PROBE_ANSWER_S = 2.0

    def __init__(self, client: RosClient, process: NodeProcess, fqn: str):
        self.client, self.process, self.fqn = client, process, fqn
        self._change = client.node.create_client(ChangeState, f"{fqn}/change_state")
        self._get = client.node.create_client(GetState, f"{fqn}/get_state")
        # service_is_ready() says our requests reach the node; the node's answers
        # reach us only once its reply writer has matched our reply reader, and
        # Fast DDS drops an answer sent before that ("failed to send response").
        # Harmless requests, repeated until one is answered, prove both directions.
        for service, probe in ((self._change, self.PROBE), (self._get, GetState.Request())):
            client.spin_until(service.service_is_ready, f"{service.srv_name} is available",
                              STARTUP_TIMEOUT_S, processes=(process,))
            client.spin_until(lambda: self._answered(service, probe), f"{service.srv_name} answers",
                              STARTUP_TIMEOUT_S, processes=(process,))

    def _answered(self, service, request) -> bool:
        future = service.call_async(request)
        deadline = time.monotonic() + self.PROBE_ANSWER_S
        while not future.done() and time.monotonic() < deadline:
            self.client.executor.spin_once(timeout_sec=0.05)
        if not future.done():
            service.remove_pending_request(future)
        return future.done()

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
