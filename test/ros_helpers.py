"""ROS plumbing shared by the ROS tests: an isolated ROS setup, a client node, node processes.

Every test module gets its own ROS domain, discovery limited to this host,
its own log folder and the shipped Fast DDS profile, so tests never see other
ROS traffic on the machine.  Waits are "until this holds" with a generous
limit, never fixed sleeps.
"""
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_shm.xml"
STARTUP_TIMEOUT_S = 90.0   # importing MediaPipe and warming up on a busy 2-core machine
REPLY_TIMEOUT_S = 30.0


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
