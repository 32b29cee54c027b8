"""Image messages <-> numpy: every encoding, row padding, zero copies, clear errors."""
import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from conftest import announcing
from wscfer_ros.messages import ENCODINGS, compressed_to_array, fill_image, image_to_array
from wscfer_ros.perception.colours import as_bgr
from wscfer_ros.perception.encoded import ImageError, declared_size

RNG = np.random.default_rng(0)


def random_image(height, width, channels):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def padded_message(image, encoding, padding):
    """An Image whose rows carry `padding` extra bytes, as some camera drivers send."""
    height, width = image.shape[:2]
    row_bytes = image[0].size
    rows = np.zeros((height, row_bytes + padding), np.uint8)
    rows[:, :row_bytes] = image.reshape(height, row_bytes)
    rows[:, row_bytes:] = 255
    return Image(height=height, width=width, encoding=encoding, step=row_bytes + padding,
                 data=array.array("B", rows.tobytes()))


def message_buffer(msg):
    return np.frombuffer(msg.data, np.uint8)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_round_trips_as_a_view(encoding):
    channels, color = ENCODINGS[encoding]
    image = random_image(6, 5, channels)
    msg = Image()
    fill_image(msg, image, encoding)
    assert (msg.height, msg.width, msg.step) == (6, 5, 5 * channels)

    view, view_color = image_to_array(msg)

    assert view_color == color
    np.testing.assert_array_equal(view, image)
    assert np.shares_memory(view, message_buffer(msg))


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8"])
def test_step_padding_is_skipped_without_copying(encoding):
    channels, _ = ENCODINGS[encoding]
    image = random_image(4, 3, channels)
    msg = padded_message(image, encoding, padding=5)

    view, _ = image_to_array(msg)

    np.testing.assert_array_equal(view, image)
    assert view.strides[0] == msg.step
    assert np.shares_memory(view, message_buffer(msg))


def test_fill_image_accepts_single_channel_with_explicit_axis():
    image = random_image(3, 4, 1)[..., np.newaxis]
    msg = Image()
    fill_image(msg, image, "mono8")
    view, _ = image_to_array(msg)
    np.testing.assert_array_equal(view, image[..., 0])


@pytest.mark.parametrize("encoding, expected", [
    ("mono16", "unsupported image encoding 'mono16' (4x2)"),
    ("16UC1", "unsupported image encoding '16UC1' (4x2)"),
    ("yuv422", "unsupported image encoding 'yuv422' (4x2)"),
    ("", "unsupported image encoding '' (4x2)"),
])
def test_unsupported_encodings_are_named(encoding, expected):
    msg = Image(height=2, width=4, encoding=encoding, step=8, data=array.array("B", bytes(16)))
    with pytest.raises(ImageError, match=r"expected one of bgr8, rgb8, mono8") as error:
        image_to_array(msg)
    assert expected in str(error.value)
    assert error.value.reason == "unsupported encoding"


@pytest.mark.parametrize("data_bytes", [30, 37, 0])
def test_data_other_than_step_times_height(data_bytes):
    """Truncated and oversized data alike: the header does not describe the pixels."""
    msg = Image(height=4, width=3, encoding="bgr8", step=9,
                data=array.array("B", bytes(data_bytes)))
    with pytest.raises(ImageError) as error:
        image_to_array(msg)
    assert str(error.value) == (f"bgr8 image 3x4 with step 9: data holds {data_bytes} bytes, "
                                "expected step x height = 36")
    assert error.value.reason == "size mismatch"


def test_huge_dimensions_with_little_data_are_refused_without_allocating():
    msg = Image(height=2**31 - 1, width=2**31 - 1, encoding="rgba8", step=4 * (2**31 - 1),
                data=array.array("B", bytes(64)))
    with pytest.raises(ImageError, match="data holds 64 bytes") as error:
        image_to_array(msg)
    assert error.value.reason == "size mismatch"


def test_empty_image():
    msg = Image(height=0, width=0, encoding="bgr8", step=0)
    with pytest.raises(ImageError, match=r"empty bgr8 image: 0x0 pixels") as error:
        image_to_array(msg)
    assert error.value.reason == "empty"


def test_step_smaller_than_a_row():
    msg = Image(height=2, width=4, encoding="rgba8", step=8, data=array.array("B", bytes(64)))
    with pytest.raises(ImageError, match=r"step 8 is smaller than a row .* = 16 bytes") as error:
        image_to_array(msg)
    assert error.value.reason == "size mismatch"


@pytest.mark.parametrize("image, encoding", [
    (np.zeros((2, 2, 3), np.float32), "bgr8"),
    (np.zeros((2, 2), np.uint8), "bgr8"),
    (np.zeros((2, 2, 3), np.uint8), "mono8"),
    (np.zeros((2, 2, 3), np.uint8), "bgr16"),
])
def test_fill_image_rejects_mismatched_arrays(image, encoding):
    with pytest.raises(ValueError, match=encoding):
        fill_image(Image(), image, encoding)


def encode(image, extension):
    ok, encoded = cv2.imencode(extension, image)
    assert ok
    return array.array("B", encoded.tobytes())


def test_jpeg_photo_decodes_to_bgr(media_dir):
    photo = cv2.imread(str(media_dir / "obama-720p.jpg"))
    msg = CompressedImage(format="jpeg", data=encode(photo, ".jpg"))

    image, color = compressed_to_array(msg)

    assert color == "bgr"
    assert image.shape == photo.shape
    # jpeg is lossy: close to the original, not equal
    assert np.abs(image.astype(int) - photo).mean() < 5


def test_gray_png_decodes_to_gray_exactly():
    gray = random_image(5, 7, 1)
    msg = CompressedImage(format="mono8; png compressed ", data=encode(gray, ".png"))
    image, color = compressed_to_array(msg)
    assert color == "gray"
    np.testing.assert_array_equal(image, gray)


def test_random_bytes_are_not_a_jpeg():
    msg = CompressedImage(format="jpeg", data=array.array("B", RNG.bytes(1000)))
    with pytest.raises(ImageError, match=r"cannot decode 1000 bytes as jpeg") as error:
        compressed_to_array(msg)
    assert error.value.reason == "undecodable"


def test_empty_compressed_image():
    with pytest.raises(ImageError, match=r"empty compressed image \(format 'png'\)") as error:
        compressed_to_array(CompressedImage(format="png"))
    assert error.value.reason == "empty"


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_declared_size_is_read_from_the_header(media_dir, extension):
    photo = cv2.imread(str(media_dir / "obama-720p.jpg"))
    encoded = np.frombuffer(encode(photo, extension), np.uint8)
    assert declared_size(encoded) == (1280, 720)
    assert declared_size(encoded[:1]) is None


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_a_header_announcing_a_huge_picture_is_refused_before_decoding(extension):
    """A few bytes must not make the decoder allocate gigabytes."""
    encoded = announcing(encode(random_image(16, 16, 3), extension).tobytes(), 40000, 30000)
    msg = CompressedImage(format="jpeg", data=array.array("B", encoded))
    with pytest.raises(ImageError, match=r"announces 40000x30000 pixels") as error:
        compressed_to_array(msg)
    assert error.value.reason == "too large"


@pytest.mark.parametrize("corrupt, expected", [
    (lambda png: png[:8] + RNG.bytes(2000), "PNG does not start with its IHDR chunk"),
    (lambda png: png[:len(png) // 2], "runs past the end of the data"),
    (lambda png: png[:-12], "PNG ends before its IEND chunk"),
])
def test_corrupt_png_structure_is_refused_before_decoding(corrupt, expected):
    """OpenCV would allocate each chunk at its stated length: random bytes cost gigabytes."""
    png = encode(random_image(64, 64, 3), ".png").tobytes()
    msg = CompressedImage(format="png", data=array.array("B", corrupt(png)))
    with pytest.raises(ImageError, match=expected) as error:
        compressed_to_array(msg)
    assert error.value.reason == "undecodable"


def test_unsupported_compressed_format_is_named():
    msg = CompressedImage(format="tiff", data=encode(random_image(4, 4, 3), ".tiff"))
    with pytest.raises(ImageError, match=r"unsupported compressed image format 'tiff'") as error:
        compressed_to_array(msg)
    assert error.value.reason == "unsupported format"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_as_bgr_matches_the_bgr8_message(encoding):
    """Any encoding shown on the debug image looks like the same picture in bgr8."""
    bgr = random_image(3, 4, 3)
    conversions = {"bgr8": None, "rgb8": cv2.COLOR_BGR2RGB, "mono8": cv2.COLOR_BGR2GRAY,
                   "bgra8": cv2.COLOR_BGR2BGRA, "rgba8": cv2.COLOR_BGR2RGBA}
    if encoding == "mono8":
        bgr = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    converted = bgr if conversions[encoding] is None else cv2.cvtColor(bgr, conversions[encoding])
    msg = Image()
    fill_image(msg, converted, encoding)

    np.testing.assert_array_equal(as_bgr(*image_to_array(msg)), bgr)
