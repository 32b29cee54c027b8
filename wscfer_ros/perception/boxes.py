"""Face boxes ``[x, y, w, h]`` in pixels: how much two sets of them overlap.

Used by the detector (one face found by both models) and the tracker (the
same face in two frames).
"""
import numpy as np


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``boxes_a`` with every box in ``boxes_b``.

    Boxes are ``[x, y, w, h]`` rows; the result has shape ``[len(a), len(b)]``.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    a_min, a_max = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b_min, b_max = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    overlap = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0.0, None)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = (a[:, None, 2] * a[:, None, 3]) + (b[None, :, 2] * b[None, :, 3]) - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
