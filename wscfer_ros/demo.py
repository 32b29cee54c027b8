"""The run command (``make run``): a camera, the node, and the expressions printed as they arrive.

Starts ``wscfer_camera`` (the webcam when /dev/video0 gives frames, else the
scikit-image astronaut photo) and ``wscfer_node`` as child processes with the
shipped parameters and Fast DDS profile, then prints one line per message on
``expressions``::

    python -m wscfer_ros.demo [--source SOURCE] [--duration SECONDS] [--model FILE]

Discovery is limited to this machine unless ROS_AUTOMATIC_DISCOVERY_RANGE is
set, so demos of several people on one network do not mix.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from wscfer_ros import resources
from wscfer_ros.child_process import ChildProcess

STOP_TIMEOUT_S = 10.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wscfer_ros.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="camera source: webcam index, video, image, folder or "
                                         "'astronaut' (default: webcam 0 if it gives frames, "
                                         "else astronaut)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (default 10)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds "
                                                       "(default: run until Ctrl-C)")
    parser.add_argument("--model", help="ONNX model file (default: the shipped model)")
    return parser.parse_args(argv)


def set_ros_environment() -> None:
    """ROS settings for this process and its children, unless the user chose otherwise."""
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(resources.fastdds_profile()))
    os.environ.setdefault("ROS_LOG_DIR", str(Path(tempfile.gettempdir()) / "wscfer_ros_log"))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def webcam_works() -> bool:
    if not Path("/dev/video0").exists():
        return False
    capture = cv2.VideoCapture(0)
    try:
        return capture.isOpened() and capture.read()[0]
    finally:
        capture.release()


def describe(expressions: dict) -> str:
    """One line for one message on ``expressions``."""
    faces = [f"face {face['id']} {face['label']} {face['score']:.2f} box {face['box']}"
             for face in expressions["faces"]]
    return f"{expressions['latency_ms']:6.1f} ms  " + (" | ".join(faces) or "no face")


def main(argv=None) -> int:
    args = parse_args(argv)
    set_ros_environment()
    source = args.source or ("0" if webcam_works() else "astronaut")
    node_args = ["--params-file", str(resources.params_file())]
    if args.model:
        node_args += ["-p", f"model_path:={Path(args.model).resolve()}"]
    print(f"camera source: {source}; Ctrl-C stops", flush=True)

    # Ctrl-C reaches the children too (same process group).  SIGINT and SIGTERM
    # only set a flag that the loop checks: a KeyboardInterrupt raised at an
    # arbitrary point inside rclpy's executor can be swallowed there, and the
    # demo would then run on until --duration.
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    listener = rclpy.create_node("wscfer_demo")
    listener.create_subscription(
        String, "expressions", lambda msg: print(describe(json.loads(msg.data)), flush=True), 10)
    children = {"wscfer_node": ChildProcess("node", node_args),
                "wscfer_camera": ChildProcess("camera", ["-p", f"source:={source}",
                                                         "-p", f"rate:={args.rate}"])}
    executor = SingleThreadedExecutor()
    executor.add_node(listener)
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    exit_status = 0
    try:
        while time.monotonic() < deadline and not stop_requested.is_set():
            stopped = {name: child.returncode for name, child in children.items() if not child.running()}
            if stopped:
                for name, status in stopped.items():
                    print(f"{name} exited with status {status}", file=sys.stderr)
                exit_status = 1 if any(stopped.values()) else 0
                break
            executor.spin_once(timeout_sec=0.2)
    except BrokenPipeError:   # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for child in children.values():
            child.stop(STOP_TIMEOUT_S)
        executor.shutdown()
        listener.destroy_node()
        rclpy.shutdown()
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
