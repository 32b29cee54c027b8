"""The colour names of the project and the one table that converts between them.

A frame arrives as ``gray``, ``bgr``, ``rgb``, ``bgra`` or ``rgba`` (the
names :meth:`Pipeline.process` accepts); the detector needs RGB, drawing
needs BGR, a model wants ``gray`` or ``rgb`` crops.  Every conversion goes
through :func:`convert`, which returns its input unchanged when the colours
already agree.
"""
import cv2
import numpy as np

#: Colour name -> channels of an image in it (1: an H x W array).
CHANNELS = {"gray": 1, "bgr": 3, "rgb": 3, "bgra": 4, "rgba": 4}

#: (from, to) -> the OpenCV conversion code, for every pair of different colours.
_CODES = {(source, target): getattr(cv2, f"COLOR_{source.upper()}2{target.upper()}")
          for source in CHANNELS for target in CHANNELS
          if source != target and hasattr(cv2, f"COLOR_{source.upper()}2{target.upper()}")}


def convert(image: np.ndarray, source: str, target: str) -> np.ndarray:
    """``image`` (in colour ``source``) in colour ``target``: the input itself when they are the same."""
    if source == target:
        return image
    if (source, target) not in _CODES:
        raise ValueError(f"cannot convert colour {source!r} to {target!r}: expected two of "
                         f"{', '.join(CHANNELS)}")
    return cv2.cvtColor(image, _CODES[source, target])


def as_bgr(image: np.ndarray, color: str) -> np.ndarray:
    """The image as 3-channel BGR (the input itself when it already is BGR)."""
    if color not in CHANNELS:
        raise ValueError(f"unknown colour {color!r}: expected {', '.join(CHANNELS)}")
    return convert(image, color, "bgr")


def to_rgb(image: np.ndarray, color: str) -> np.ndarray:
    """A checked frame as the C-contiguous RGB array MediaPipe needs; a view when it already is one.

    ``image`` must be uint8 with the channels of ``color``; anything else
    raises ValueError saying what was expected.
    """
    if color not in CHANNELS:
        raise ValueError(f"color must be one of {', '.join(CHANNELS)}, got {color!r}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else None)
    if channels != CHANNELS[color]:
        expected = "H x W" if color == "gray" else f"H x W x {CHANNELS[color]}"
        raise ValueError(f"a '{color}' image must be {expected}, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(convert(image, color, "rgb"))


def convert_crops(crops: np.ndarray, color: str) -> np.ndarray:
    """A batch of uint8 crops in ``color``: gray ``[N, H, W]`` or rgb ``[N, H, W, 3]``.

    Accepts either layout; the whole batch is converted in one OpenCV call.
    """
    is_gray = crops.ndim == 3
    count, height, width = crops.shape[:3]
    if color == "gray" and not is_gray:
        if count == 0:
            return np.empty((0, height, width), np.uint8)
        stacked = np.ascontiguousarray(crops).reshape(count * height, width, 3)
        return convert(stacked, "rgb", "gray").reshape(count, height, width)
    if color == "rgb" and is_gray:
        return np.repeat(crops[..., None], 3, axis=3)
    return crops
