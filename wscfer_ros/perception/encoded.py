"""Encoded pictures (PNG, JPEG, ...) checked before they reach the decoder, and decoded.

The node's CompressedImage input, ``wscfer-infer``'s image files and the
training data readers all decode through :func:`decode` or check with
:func:`encoded_image_problem` first: a few bad bytes never cost a robot
gigabytes of memory or seconds of decoding.
"""
import cv2
import numpy as np

# Image files the executables read (by suffix; what OpenCV decodes).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# Why a message was rejected: the keys of the node's per-kind rejection counters.
REJECTION_REASONS = ("unsupported encoding", "unsupported format", "empty", "size mismatch",
                     "too large", "undecodable")
# A compressed image may announce more pixels than it holds; the decoder
# allocates (and partly touches) all of them before it notices.  Refusing
# what no camera sends (8K is 33 Mpixels) keeps a few bad bytes from taking
# gigabytes of a robot's memory.
MAX_COMPRESSED_PIXELS = 64 * 2**20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER_BYTES = 1 << 17   # where declared_size looks for the picture size
# JPEG start-of-frame markers (the ones that carry the picture size).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageError(ValueError):
    """An image message that cannot be turned into a picture.

    The text says why in full; ``reason`` is one of :data:`REJECTION_REASONS`,
    so rejections can be counted by kind.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def decode(encoded: np.ndarray, flags: int, what: str) -> np.ndarray:
    """cv2.imdecode of ``encoded`` after :func:`encoded_image_problem`; ImageError says why it failed.

    ``what`` names the data in the message (a format, or a file).
    """
    problem = encoded_image_problem(encoded)
    if problem:
        reason, text = problem
        raise ImageError(f"cannot decode {encoded.size} bytes as {what}: {text}", reason)
    try:
        image = cv2.imdecode(encoded, flags)
    except cv2.error as error:   # e.g. more pixels than OpenCV accepts, in a format not checked above
        message = str(error).strip().splitlines()[-1]
        raise ImageError(f"cannot decode {encoded.size} bytes as {what}: {message}",
                         "undecodable") from None
    if image is None or image.size == 0:
        raise ImageError(f"cannot decode {encoded.size} bytes as {what}: not a valid image",
                         "undecodable")
    return image


def encoded_image_problem(encoded: np.ndarray) -> tuple[str, str] | None:
    """Why encoded bytes must not reach the decoder: (reason, text), or None if they may.

    Reads headers only.  A picture announced larger than MAX_COMPRESSED_PIXELS
    is "too large"; a PNG with a broken chunk structure is "undecodable".  The
    node and the training data readers both check this before cv2.imdecode.
    """
    declared = declared_size(encoded)
    if declared and declared[0] * declared[1] > MAX_COMPRESSED_PIXELS:
        return "too large", (f"it announces {declared[0]}x{declared[1]} pixels, more than the "
                             f"{MAX_COMPRESSED_PIXELS} accepted")
    broken_png = png_structure_error(encoded)
    if broken_png:
        return "undecodable", broken_png
    return None


def declared_size(encoded: np.ndarray) -> tuple[int, int] | None:
    """Width and height a PNG or JPEG header announces, without decoding; None if not found."""
    # The size comes before any pixel data, within the first segments (an
    # EXIF block can hold up to 64 kB); read in place, nothing is copied.
    data = memoryview(encoded)[:_HEADER_BYTES]
    if len(data) >= 24 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:   # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _JPEG_FRAME_MARKERS and position + 9 <= len(data):
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return width, height
        if marker == 0xDA:   # start of scan: no frame header before the pixels
            return None
        position += 2 + length
    return None


def png_structure_error(encoded: np.ndarray) -> str | None:
    """What is wrong with the chunk structure of a PNG (None if fine, or not a PNG).

    OpenCV's PNG reader allocates each chunk at the length the file states
    before reading it: a signature followed by random bytes costs seconds
    and gigabytes.  Walking the chunk headers first costs microseconds.
    """
    data = memoryview(encoded)
    if data[:8] != _PNG_SIGNATURE:
        return None
    position = len(_PNG_SIGNATURE)
    first = True
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = bytes(data[position + 4:position + 8])
        if first and kind != b"IHDR":
            return f"PNG does not start with its IHDR chunk (found {kind!r})"
        if position + 12 + length > len(data):
            return (f"PNG chunk {kind!r} of {length} bytes runs past the end of the data "
                    f"(truncated or corrupt)")
        if kind == b"IEND":
            return None
        position += 12 + length
        first = False
    return "PNG ends before its IEND chunk (truncated)"
