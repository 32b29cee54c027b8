"""What leaves the pipeline: the versioned JSON message and the debug drawing.

The message is the one published on ``expressions`` and written by
``wscfer-infer``; keys may be added in later schema versions, never renamed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from .colours import as_bgr

if TYPE_CHECKING:
    from .pipeline import Face, FrameResult

SCHEMA_VERSION = 1

# Scores and probabilities keep 4 decimals: finer digits are noise and make
# every message longer.
_DECIMALS = 4

# Distinct BGR colours, dark enough for white text, picked by face id so a
# face keeps its colour from frame to frame.
_PALETTE = ((0, 160, 0), (200, 100, 0), (0, 90, 220), (160, 0, 160), (0, 130, 160),
            (180, 0, 0), (0, 0, 200), (90, 90, 90))


def frame_message(result: FrameResult, *, stamp_sec: int, stamp_nanosec: int, frame_id: str,
                  width: int, height: int, latency_ms: float) -> dict:
    """The JSON object for one processed frame (``faces`` is empty when no face was seen)."""
    return {
        "schema": SCHEMA_VERSION,
        "stamp": {"sec": int(stamp_sec), "nanosec": int(stamp_nanosec)},
        "frame_id": str(frame_id),
        "width": int(width),
        "height": int(height),
        "latency_ms": round(float(latency_ms), 2),
        "faces": [_face_entry(face) for face in result.faces],
    }


def _face_entry(face: Face) -> dict:
    return {
        "id": int(face.id),
        "box": [int(value) for value in face.box],
        "detection_score": round(float(face.detection_score), _DECIMALS),
        "label": face.label,
        "score": round(float(face.score), _DECIMALS),
        "probabilities": {name: round(float(p), _DECIMALS) for name, p in face.probabilities.items()},
    }


def largest_face(result: FrameResult) -> Face | None:
    """The face with the largest box area, or None when there is none."""
    return max(result.faces, key=lambda face: face.box[2] * face.box[3], default=None)


def draw_faces(image: np.ndarray, result: FrameResult, color: str = "bgr") -> np.ndarray:
    """A BGR copy of the frame with each face's box, id, label and score drawn.

    ``color`` is the frame's (see ``colours.as_bgr``); the frame is converted
    or copied once.  The text scales with the box so it stays readable on
    small and large faces.
    """
    canvas = as_bgr(image, color)
    if canvas is image:     # already BGR: never draw on the caller's frame
        canvas = image.copy()
    for face in result.faces:
        x, y, w, h = face.box
        colour = _PALETTE[face.id % len(_PALETTE)]
        thickness = max(1, round(w / 60))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)

        text = f"{face.id} {face.label} {face.score:.2f}"
        font_scale = float(np.clip(w / 160, 0.35, 1.5))
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Above the box when it fits, otherwise just inside its top edge.
        top = y - text_h - baseline if y - text_h - baseline >= 0 else y
        cv2.rectangle(canvas, (x, top), (x + text_w, top + text_h + baseline), colour, cv2.FILLED)
        cv2.putText(canvas, text, (x, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
