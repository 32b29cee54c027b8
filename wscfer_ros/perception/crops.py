"""Face crops at the classifier's input size: one affine warp per face.

Each crop is the square centred on the detector's box, of side
``max(w, h) * crop_scale``, optionally rotated about the box centre so that
the eyes are level (roll alignment).  Scale, rotation and translation go into
one 2x3 matrix per face, computed for all faces at once, and a single
``cv2.warpAffine`` per face writes straight into the batch at the model's
input size: no intermediate crop, no second resize.

Pixels outside the frame are filled by replicating the border.  Zeros would
put a black band into crops of faces at the frame edge, an edge the model
never saw in training, and would pull down the crop's mean that the model's
normalisation expects; replicated pixels keep the crop's statistics close
to the face's.
"""
import cv2
import numpy as np

from .colours import convert_crops
from .contract import COLORS


def crop_transforms(boxes: np.ndarray, output_size: tuple[int, int], crop_scale: float,
                    eyes: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 matrices mapping frame pixels to crop pixels, shape ``[N, 2, 3]``.

    ``boxes`` is ``[N, 4]`` (x, y, w, h); ``output_size`` is (height, width);
    ``eyes``, when given, is ``[N, 2, 2]``: the person's right eye then left
    eye, as (x, y) pixels, and the crop is rotated so that they are level.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out_height, out_width = output_size
    side = boxes[:, 2:].max(axis=1) * crop_scale
    # Geometry in pixel-edge coordinates (a pixel spans [i, i + 1]); the
    # matrix works on pixel centres, hence the half-pixel shifts below.
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    if eyes is None:
        angle = np.zeros(len(boxes))
    else:
        eyes = np.asarray(eyes, np.float64).reshape(-1, 2, 2)
        eye_line = eyes[:, 1] - eyes[:, 0]
        angle = np.arctan2(eye_line[:, 1], eye_line[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    scale_x, scale_y = out_width / side, out_height / side
    # Rotating by -angle takes the eye line to the horizontal.
    linear = np.empty((len(boxes), 2, 2))
    linear[:, 0, 0], linear[:, 0, 1] = scale_x * cos, scale_x * sin
    linear[:, 1, 0], linear[:, 1, 1] = -scale_y * sin, scale_y * cos
    source_centre = centre - 0.5
    target_centre = np.array([out_width / 2 - 0.5, out_height / 2 - 0.5])
    translation = target_centre - np.einsum("nij,nj->ni", linear, source_centre)
    return np.concatenate([linear, translation[:, :, None]], axis=2)


def crop_faces(image_rgb: np.ndarray, boxes: np.ndarray, output_size: tuple[int, int],
               crop_scale: float, color: str, eyes: np.ndarray | None = None) -> np.ndarray:
    """Crops of every face as uint8 ``[N, H, W]`` (gray) or ``[N, H, W, 3]`` (rgb).

    ``image_rgb`` is an H x W x 3 uint8 RGB frame; see :func:`crop_transforms`
    for the other arguments.
    """
    if color not in COLORS:
        raise ValueError(f"color must be one of {', '.join(COLORS)}, got {color!r}")
    out_height, out_width = output_size
    matrices = crop_transforms(boxes, output_size, crop_scale, eyes)
    crops = np.empty((len(matrices), out_height, out_width, 3), np.uint8)
    for matrix, crop in zip(matrices, crops):
        cv2.warpAffine(image_rgb, matrix, (out_width, out_height), dst=crop,
                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return convert_crops(crops, color)
