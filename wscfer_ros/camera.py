"""``wscfer_camera``: publish camera-like frames for people without a camera driver.

Publishes ``sensor_msgs/Image`` (bgr8) on the relative topic ``image`` from a
webcam index (``0``), a video file, an image file, a folder of images, or
``astronaut`` (the face photo bundled with scikit-image).  Example::

    ros2 run wscfer_ros wscfer_camera --ros-args -p source:=video.mp4 -p rate:=30.0
"""
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from wscfer_ros.messages import fill_image
from wscfer_ros.perception.colours import convert
from wscfer_ros.perception.encoded import IMAGE_SUFFIXES
from wscfer_ros.ros_process import run_node

RELIABILITY = {"sensor_data": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
PARAMETERS = {
    "source": ("astronaut", "webcam index (e.g. '0'), video file, image file, folder of "
                            "images, or 'astronaut' (scikit-image's face photo)"),
    "rate": (10.0, "frames published per second"),
    "loop": (True, "start again at the end of a video, image or folder; false: stop there"),
    "frame_id": ("camera", "header.frame_id of the published images"),
    "width": (0, "resize frames to this width in pixels; 0 keeps the source width, or "
                 "scales with the height's ratio when only the height is set"),
    "height": (0, "resize frames to this height in pixels; 0 keeps the source height, or "
                  "scales with the width's ratio when only the width is set"),
    "qos": ("sensor_data", "'sensor_data' (best effort) or 'reliable'"),
}


class SourceError(ValueError):
    """A source that cannot be opened or read; the message names it."""


def _repeat(frames: list[np.ndarray], loop: bool) -> Iterator[np.ndarray]:
    while True:
        yield from frames
        if not loop:
            return


def _read_files(paths: list[Path], loop: bool) -> Iterator[np.ndarray]:
    # Read one file per frame, so a large folder is never held in memory.
    while True:
        for path in paths:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise SourceError(f"cannot read image {path}")
            yield frame
        if not loop:
            return


def _read_capture(capture: cv2.VideoCapture, loop: bool) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok and loop:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        if not ok:
            capture.release()
            return
        yield frame


def _astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise SourceError("source 'astronaut' needs scikit-image (pip install scikit-image)") \
            from None
    return convert(data.astronaut(), "rgb", "bgr")


def open_source(source: str, loop: bool) -> Iterator[np.ndarray]:
    """BGR frames from ``source`` (see the module docstring); SourceError if it cannot be opened."""
    if source == "astronaut":
        return _repeat([_astronaut()], loop)
    if source.isdigit():
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise SourceError(f"cannot open webcam {source}")
        return _read_capture(capture, loop=False)
    path = Path(source).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return _read_files(paths, loop)
    if not path.exists():
        raise SourceError(f"source {source!r} is not a webcam index, 'astronaut', or an "
                          "existing file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SourceError(f"cannot read image {path}")
        return _repeat([frame], loop)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"cannot open video {path}")
    return _read_capture(capture, loop)


def output_size(frame_shape: tuple[int, ...], width: int, height: int) -> tuple[int, int]:
    """(width, height) of the published frames; a 0 keeps the source's aspect ratio."""
    source_height, source_width = frame_shape[:2]
    if width > 0 and height > 0:
        return width, height
    if width > 0:
        return width, max(1, round(source_height * width / source_width))
    if height > 0:
        return max(1, round(source_width * height / source_height)), height
    return source_width, source_height


class CameraPublisher(Node):
    """Publishes the frames of one source at a fixed rate, stamped at publication."""

    def __init__(self):
        super().__init__("wscfer_camera")
        self.finished = False
        self.published = 0
        self._frames: Iterator[np.ndarray] = iter(())
        self._timer = None
        self._publisher = None
        self._source = ""
        self._requested_size = (0, 0)
        self._frame_id = ""
        for name, (default, description) in PARAMETERS.items():
            # "-p source:=0" (a webcam index) arrives as an integer, a path as a string
            descriptor = ParameterDescriptor(description=description,
                                             dynamic_typing=name == "source")
            self.declare_parameter(name, default, descriptor)

    def _parameter(self, name: str):
        return self.get_parameter(name).value

    def start(self) -> None:
        """Open the source and start publishing; ValueError (SourceError) says what is wrong."""
        rate, qos = self._parameter("rate"), self._parameter("qos")
        if rate <= 0:
            raise ValueError(f"parameter rate must be positive, got {rate}")
        if qos not in RELIABILITY:
            raise ValueError(f"parameter qos must be one of {', '.join(RELIABILITY)}, got {qos!r}")
        self._source = str(self._parameter("source"))
        self._frames = open_source(self._source, self._parameter("loop"))
        self._requested_size = (self._parameter("width"), self._parameter("height"))
        self._frame_id = self._parameter("frame_id")
        self._publisher = self.create_publisher(
            Image, "image", QoSProfile(depth=5, reliability=RELIABILITY[qos]))
        self._timer = self.create_timer(1.0 / rate, self._publish_next)
        self.get_logger().info(f"publishing {self._source} at {rate} Hz on "
                               f"{self._publisher.topic_name}")

    def _publish_next(self) -> None:
        frame = next(self._frames, None)
        if frame is None:
            self.get_logger().info(f"end of {self._source}")
            self._timer.cancel()
            self.finished = True
            return
        size = output_size(frame.shape, *self._requested_size)
        if size != (frame.shape[1], frame.shape[0]):
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        msg = Image()
        fill_image(msg, frame, "bgr8")
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self._frame_id
        self._publisher.publish(msg)
        self.published += 1

    def destroy_node(self) -> None:
        self.get_logger().info(f"published {self.published} frames")
        super().destroy_node()


def _start(node: CameraPublisher) -> bool:
    node.start()
    return True


def main(args=None) -> int:
    # A bad parameter or source (SourceError) ends the process with its reason.
    return run_node("wscfer_camera", CameraPublisher, _start, args=args, parameters=PARAMETERS,
                    summary="Publishes sensor_msgs/Image (bgr8) on 'image' from a webcam, a video, "
                            "an image, a folder of images or scikit-image's astronaut photo.",
                    example="wscfer_camera --ros-args -p source:=video.mp4 -p rate:=30.0",
                    done=lambda node: node.finished, fatal_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
