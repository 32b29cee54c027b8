"""Crop geometry: where the crop lands, roll alignment, output layout."""
import cv2
import numpy as np
import pytest

from wscfer_ros.perception.crops import convert_crops, crop_faces, crop_transforms
from wscfer_ros.perception.detector import FaceDetector


def frame_with_square(x, y, side, value=255, shape=(240, 320)):
    """A black RGB frame with a square of ``value`` at (x, y)."""
    image = np.zeros(shape + (3,), np.uint8)
    image[y:y + side, x:x + side] = value
    return image


def apply(matrix, points):
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_box_fills_the_crop_at_scale_one():
    image = frame_with_square(100, 50, 40)
    (crop,) = crop_faces(image, [[100, 50, 40, 40]], (40, 40), 1.0, "rgb")
    assert (crop == 255).all()


def test_margin_puts_the_box_in_the_centre():
    """crop_scale 2: a 40 px box in an 80 px crop, 20 px of background on each side."""
    image = frame_with_square(100, 50, 40)
    (crop,) = crop_faces(image, [[100, 50, 40, 40]], (80, 80), 2.0, "gray")
    inside = np.zeros((80, 80), bool)
    inside[20:60, 20:60] = True
    assert (crop[inside] == 255).all()
    assert (crop[~inside] == 0).all()


def test_downscaled_crop_keeps_the_geometry():
    image = frame_with_square(100, 50, 96)
    (crop,) = crop_faces(image, [[100, 50, 96, 96]], (48, 48), 2.0, "gray")
    assert (crop[13:35, 13:35] == 255).all()
    assert (crop[:11] == 0).all() and (crop[37:] == 0).all()
    assert (crop[:, :11] == 0).all() and (crop[:, 37:] == 0).all()


def test_crop_is_square_on_the_longer_side_of_the_box():
    """A 40 x 20 box centred at (120, 75) gives the square x 100..140, y 55..95."""
    image = np.zeros((240, 320, 3), np.uint8)
    image[60:90, 100:140] = 255
    (crop,) = crop_faces(image, [[100, 65, 40, 20]], (40, 40), 1.0, "gray")
    assert (crop[5:35] == 255).all()
    assert (crop[:5] == 0).all() and (crop[35:] == 0).all()


def test_border_pixels_are_replicated_outside_the_frame():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, 0] = 77
    (crop,) = crop_faces(image, [[0, 30, 40, 40]], (80, 80), 2.0, "gray")
    # The crop spans frame x -20..60: its left quarter lies outside the frame.
    assert (crop[:, :20] == 77).all()


def test_every_face_gets_its_own_crop():
    image = np.zeros((200, 400, 3), np.uint8)
    image[50:100, 50:100] = (255, 0, 0)
    image[50:100, 250:300] = (0, 0, 255)
    crops = crop_faces(image, [[50, 50, 50, 50], [250, 50, 50, 50]], (32, 32), 1.0, "rgb")
    assert crops.shape == (2, 32, 32, 3) and crops.dtype == np.uint8
    assert (crops[0] == (255, 0, 0)).all() and (crops[1] == (0, 0, 255)).all()


def test_gray_output_uses_the_standard_luma_weights():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:] = (255, 0, 0)  # pure red in RGB
    gray = crop_faces(image, [[20, 20, 50, 50]], (48, 40), 1.0, "gray")
    assert gray.shape == (1, 48, 40) and gray.dtype == np.uint8
    assert (gray == 76).all()  # 0.299 * 255


def test_no_faces_gives_an_empty_batch():
    image = np.zeros((100, 100, 3), np.uint8)
    assert crop_faces(image, np.zeros((0, 4)), (48, 48), 1.25, "gray").shape == (0, 48, 48)
    assert crop_faces(image, np.zeros((0, 4)), (64, 64), 1.25, "rgb").shape == (0, 64, 64, 3)


def test_convert_crops_between_layouts():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    gray = convert_crops(rgb, "gray")
    assert gray.shape == (3, 8, 8)
    np.testing.assert_array_equal(gray[1], cv2.cvtColor(rgb[1], cv2.COLOR_RGB2GRAY))
    replicated = convert_crops(gray, "rgb")
    assert replicated.shape == (3, 8, 8, 3)
    assert (replicated == gray[..., None]).all()
    with pytest.raises(ValueError):
        crop_faces(rgb[0], [[0, 0, 4, 4]], (8, 8), 1.0, "bgr")


@pytest.mark.parametrize("degrees", [0, 17, -30, 45, 90, 160])
def test_alignment_levels_the_eyes(degrees):
    centre = np.array([160.0, 120.0])
    angle = np.radians(degrees)
    half_gap = 20 * np.array([np.cos(angle), np.sin(angle)])
    eyes = np.array([[centre - half_gap, centre + half_gap]])
    (matrix,) = crop_transforms([[120, 80, 80, 80]], (48, 48), 1.0, eyes)
    right, left = apply(matrix, eyes[0])
    assert right[1] == pytest.approx(left[1], abs=1e-9)
    assert right[0] < left[0]  # the person's right eye stays on the crop's left
    np.testing.assert_allclose(apply(matrix, centre - 0.5), [23.5, 23.5], atol=1e-9)


def test_transforms_are_computed_for_all_faces_at_once():
    boxes = [[0, 0, 40, 40], [100, 50, 60, 30]]
    eyes = [[[10, 10], [30, 20]], [[110, 60], [150, 60]]]
    matrices = crop_transforms(boxes, (48, 48), 1.5, eyes)
    assert matrices.shape == (2, 2, 3)
    for box, eye_pair, matrix in zip(boxes, eyes, matrices):
        np.testing.assert_allclose(matrix, crop_transforms([box], (48, 48), 1.5, [eye_pair])[0])


@pytest.mark.parametrize("roll_degrees", [-35, -20, 20, 35])
def test_alignment_levels_a_rolled_head_on_a_real_photo(media_dir, roll_degrees):
    """Rotate a real portrait, detect it again, and check that the aligned crop
    has the eyes level: the eye positions of the upright photo, carried through
    the rotation, land on one row of the crop.

    Uses the full-range model: its eye keypoints follow a rolled head (see
    detector.py); the short-range model's barely do.
    """
    image = cv2.cvtColor(cv2.imread(str(media_dir / "obama-720p.jpg")), cv2.COLOR_BGR2RGB)
    detector = FaceDetector("full")
    try:
        (upright,) = detector.detect(image)
        x, y, w, h = upright.box
        roll = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), roll_degrees, 1.0)
        rolled_image = cv2.warpAffine(image, roll, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        (rolled,) = detector.detect(rolled_image)
    finally:
        detector.close()
    true_eyes = apply(roll, [upright.right_eye, upright.left_eye])

    def eye_angle_in_crop(align):
        eyes = [[rolled.right_eye, rolled.left_eye]] if align else None
        (matrix,) = crop_transforms([rolled.box], (64, 64), 1.25, eyes)
        right, left = apply(matrix, true_eyes)
        return np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0]))

    assert abs(eye_angle_in_crop(align=True)) < 7
    assert abs(eye_angle_in_crop(align=False)) > abs(roll_degrees) - 6
