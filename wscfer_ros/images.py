"""sensor_msgs Image and CompressedImage <-> numpy, with clear errors on bad input.

Duck-typed on the message fields (``height``, ``width``, ``encoding``, ``step``,
``data``; ``format`` and ``data`` for compressed images), so it needs no ROS
import and is tested without ROS.  Raw images become numpy *views* of the
message buffer: a 640x480 frame is never copied on its way to the pipeline.
"""
import array

import cv2
import numpy as np

# ROS encoding -> (channels, colour name understood by Pipeline.process)
ENCODINGS = {
    "bgr8": (3, "bgr"),
    "rgb8": (3, "rgb"),
    "mono8": (1, "gray"),
    "bgra8": (4, "bgra"),
    "rgba8": (4, "rgba"),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
_TO_BGR = {
    "rgb": cv2.COLOR_RGB2BGR,
    "gray": cv2.COLOR_GRAY2BGR,
    "bgra": cv2.COLOR_BGRA2BGR,
    "rgba": cv2.COLOR_RGBA2BGR,
}


class ImageError(ValueError):
    """An image message that cannot be turned into a picture; the message says why."""


def image_to_array(msg) -> tuple[np.ndarray, str]:
    """Return a view of ``msg.data`` shaped HxW (mono8) or HxWxC, and its colour name.

    Rows padded beyond ``width * channels`` bytes (``step`` larger than a row)
    stay padded in memory: the view's row stride is ``step``.
    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ImageError(
            f"unsupported image encoding {encoding!r} ({msg.width}x{msg.height}): "
            f"expected one of {', '.join(ENCODINGS)} (8 bits per channel)")
    channels, color = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageError(f"empty {encoding} image: {width}x{height} pixels")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageError(
            f"{encoding} image {width}x{height}: step {step} is smaller than a row "
            f"({width} pixels x {channels} bytes = {row_bytes} bytes)")
    buffer = memoryview(msg.data)
    if buffer.nbytes < step * height:
        raise ImageError(
            f"{encoding} image {width}x{height} with step {step}: data holds {buffer.nbytes} "
            f"bytes, expected step x height = {step * height}")
    shape = (height, width) if channels == 1 else (height, width, channels)
    strides = (step, 1) if channels == 1 else (step, channels, 1)
    return np.ndarray(shape, np.uint8, buffer=buffer, strides=strides), color


def compressed_to_array(msg) -> tuple[np.ndarray, str]:
    """Decode a jpeg or png CompressedImage to an 8-bit BGR (or gray) array."""
    image_format = msg.format.lower()
    if image_format and not any(name in image_format for name in COMPRESSED_FORMATS):
        raise ImageError(
            f"unsupported compressed image format {msg.format!r}: expected jpeg or png")
    encoded = np.frombuffer(memoryview(msg.data), np.uint8)
    if encoded.size == 0:
        raise ImageError(f"empty compressed image (format {msg.format!r})")
    try:
        # ANYCOLOR keeps gray images gray and drops alpha; without ANYDEPTH
        # 16-bit png is scaled to 8 bits, the pipeline's input depth.
        image = cv2.imdecode(encoded, cv2.IMREAD_ANYCOLOR)
    except cv2.error as error:
        raise ImageError(f"cannot decode {encoded.size} bytes as {msg.format or 'an image'}: "
                         f"{error}") from None
    if image is None or image.size == 0:
        raise ImageError(f"cannot decode {encoded.size} bytes as {msg.format or 'an image'}: "
                         "not a valid jpeg or png")
    return image, "gray" if image.ndim == 2 else "bgr"


def fill_image(msg, image: np.ndarray, encoding: str) -> None:
    """Write a uint8 array into the fields of a sensor_msgs/Image (tightly packed rows)."""
    if encoding not in ENCODINGS:
        raise ImageError(f"cannot write encoding {encoding!r}: expected one of "
                         f"{', '.join(ENCODINGS)}")
    channels, _ = ENCODINGS[encoding]
    shape_matches = ((image.ndim == 3 and image.shape[2] == channels)
                     or (image.ndim == 2 and channels == 1))
    if image.dtype != np.uint8 or not shape_matches:
        raise ImageError(f"cannot write a {image.dtype} array of shape {image.shape} as "
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


def as_bgr(image: np.ndarray, color: str) -> np.ndarray:
    """The image as 3-channel BGR (the input itself when it already is BGR)."""
    if color == "bgr":
        return image
    if color not in _TO_BGR:
        raise ImageError(f"unknown colour {color!r}: expected bgr, {', '.join(_TO_BGR)}")
    return cv2.cvtColor(image, _TO_BGR[color])
