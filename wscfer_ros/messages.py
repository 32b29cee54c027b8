"""sensor_msgs Image and CompressedImage <-> numpy, with clear errors on bad input.

Duck-typed on the message fields (``height``, ``width``, ``encoding``, ``step``,
``data``; ``format`` and ``data`` for compressed images), so it needs no ROS
import and is tested without ROS.  Raw images become numpy *views* of the
message buffer: a 640x480 frame is never copied on its way to the pipeline.
"""
import array

import cv2
import numpy as np

from .perception.encoded import ImageError, decode

# ROS encoding -> (channels, colour name understood by Pipeline.process)
ENCODINGS = {
    "bgr8": (3, "bgr"),
    "rgb8": (3, "rgb"),
    "mono8": (1, "gray"),
    "bgra8": (4, "bgra"),
    "rgba8": (4, "rgba"),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def image_to_array(msg) -> tuple[np.ndarray, str]:
    """Return a view of ``msg.data`` shaped HxW (mono8) or HxWxC, and its colour name.

    Rows padded beyond ``width * channels`` bytes (``step`` larger than a row)
    stay padded in memory: the view's row stride is ``step``.
    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ImageError(
            f"unsupported image encoding {encoding!r} ({msg.width}x{msg.height}): "
            f"expected one of {', '.join(ENCODINGS)} (8 bits per channel)",
            "unsupported encoding")
    channels, color = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageError(f"empty {encoding} image: {width}x{height} pixels", "empty")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageError(
            f"{encoding} image {width}x{height}: step {step} is smaller than a row "
            f"({width} pixels x {channels} bytes = {row_bytes} bytes)", "size mismatch")
    buffer = memoryview(msg.data)
    # Longer data is refused too: the header then does not describe the
    # pixels (a wrong width, height or encoding), and guessing shows garbage.
    if buffer.nbytes != step * height:
        raise ImageError(
            f"{encoding} image {width}x{height} with step {step}: data holds {buffer.nbytes} "
            f"bytes, expected step x height = {step * height}", "size mismatch")
    shape = (height, width) if channels == 1 else (height, width, channels)
    strides = (step, 1) if channels == 1 else (step, channels, 1)
    return np.ndarray(shape, np.uint8, buffer=buffer, strides=strides), color


def compressed_to_array(msg) -> tuple[np.ndarray, str]:
    """Decode a jpeg or png CompressedImage to an 8-bit BGR (or gray) array."""
    image_format = msg.format.lower()
    if image_format and not any(name in image_format for name in COMPRESSED_FORMATS):
        raise ImageError(
            f"unsupported compressed image format {msg.format!r}: expected jpeg or png",
            "unsupported format")
    encoded = np.frombuffer(memoryview(msg.data), np.uint8)
    if encoded.size == 0:
        raise ImageError(f"empty compressed image (format {msg.format!r})", "empty")
    # ANYCOLOR keeps gray images gray and drops alpha; without ANYDEPTH
    # 16-bit png is scaled to 8 bits, the pipeline's input depth.
    image = decode(encoded, cv2.IMREAD_ANYCOLOR, msg.format or "an image")
    return image, "gray" if image.ndim == 2 else "bgr"


def fill_image(msg, image: np.ndarray, encoding: str) -> None:
    """Write a uint8 array into the fields of a sensor_msgs/Image (tightly packed rows)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"cannot write encoding {encoding!r}: expected one of "
                         f"{', '.join(ENCODINGS)}")
    channels, _ = ENCODINGS[encoding]
    shape_matches = ((image.ndim == 3 and image.shape[2] == channels)
                     or (image.ndim == 2 and channels == 1))
    if image.dtype != np.uint8 or not shape_matches:
        raise ValueError(f"cannot write a {image.dtype} array of shape {image.shape} as "
                         f"{encoding}: expected uint8 with {channels} channel(s)")
    height, width = image.shape[:2]
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * channels
    # An array.array is what rclpy stores for uint8[] fields; building it
    # from the buffer avoids rclpy's per-element check of a bytes object.
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(image))
    msg.data = data
