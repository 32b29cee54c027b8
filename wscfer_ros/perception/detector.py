"""Face detection with MediaPipe's bundled BlazeFace models.

Two models ship inside the ``mediapipe`` package:

* short range (128x128 input, faces within about 2 m), run through the Tasks
  API (``mediapipe.tasks.python.vision.FaceDetector``);
* full range (192x192 input, faces up to about 5 m), run through
  ``mediapipe.solutions.face_detection``: the Tasks API's graph is built for
  the short-range model's anchors and fails on the full-range file.

Modes: ``"short"``, ``"full"`` and ``"auto"`` (the default).  ``"auto"`` runs
the short-range model and, when it finds no face or scores any face below
``SHORT_RANGE_TRUST``, runs the full-range model as well and keeps its faces
(plus any trusted short-range face it missed); when the full-range model
finds none, the short-range faces stay: faces filling much of the frame
(close-ups, portrait crops) are beyond the full-range model, and the
short-range model often scores them below the trust threshold.  Measured on the shared media
(mediapipe 0.10.21, 2-core CPU, idle machine, min confidence 0.5; faces
found, median ms per frame; ``auto`` = short plus full on fallback frames):

====================================  ===========  ===========  ===========
frame (size, faces by eye)            short        full         auto
====================================  ===========  ===========  ===========
obama-720p (1280x720, 1)              1,  4.6 ms   1,  8.7 ms   1,  4.6 ms
two_people (1126x661, 2)              2,  3.5 ms   2,  8.9 ms   2,  3.5 ms
obama_and_biden (2000x1428, 3)        0,  7.7 ms   2,  9.2 ms   2, 16.9 ms
group_2008_007676 (500x334, 7)        2,  3.9 ms   6,  7.6 ms   6, 11.5 ms
group_2008_004176 (480x438, 7)        1,  2.4 ms   7,  6.6 ms   7,  9.0 ms
woman2.mp4 (596x336, 1; 155 frames)   155, 3.3 ms  155, 7.8 ms  155, 3.6 ms
hamilton clip (640x360, 1-8; 92 fr.)  90,  3.3 ms  131, 8.1 ms  126, 7.6 ms
====================================  ===========  ===========  ===========

(Videos: every third frame; auto column: mean.)  A 640x480 close-up runs
at 2.7 ms in ``auto`` (short only) against about 8 ms or more for ``full``.

Why this works: faces smaller than the short-range model's range come back
from it with oversized boxes and scores of 0.31-0.80, while faces inside its
range score 0.84-0.95; the trust threshold sits between the two.  Running
the full-range model on a downscaled frame saves nothing (7.9 against 8.1
ms at half size: the network itself dominates).  The price of ``auto``: a
frame where the short model is sure of every face it reports skips the full
model, so distant faces beside a close one can be missed (5 of 131 faces on
the hamilton clip); ``full`` never skips them, at about 8 ms per frame.

A frame that falls back sends the next ``FULL_RANGE_HOLD_FRAMES`` frames
straight to the full-range model: a group stays in view for a while, so a
camera watching one pays for the full-range model alone, not for both
(whole pipeline on the 7-face photos at 640x480: p50 11-12 ms instead of
16-17 ms, ``benchmarks/bench_pipeline.py``).

Eye keypoints: the full-range model's follow a rolled head to within about
4 degrees; the short-range model's barely do (a 25 degree roll reads as
about 10), so roll alignment is only as good as the full-range keypoints.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions
from mediapipe.tasks.python import vision

from .boxes import iou_matrix
from .quiet import captured_stderr, pass_on

DETECTOR_MODES = ("auto", "short", "full")

#: In ``"auto"`` mode, short-range detections at or above this score are
#: trusted; any lower one (or none at all) sends the frame to the full-range model.
SHORT_RANGE_TRUST = 0.82

#: In ``"auto"`` mode, after a frame needed the full-range model, this many
#: following frames go to it directly: a group or a distant face stays in view
#: for a while, and trying the short-range model first would only add its time.
FULL_RANGE_HOLD_FRAMES = 15

#: A short-range face overlapping a full-range face by more than this IoU is
#: the same face; the full-range box is kept.
DUPLICATE_IOU = 0.3

#: The longer side, in pixels, of what the models are given: a larger frame
#: is downscaled first and the boxes and eyes are mapped back to it.  The
#: models' own inputs are 128 and 192 pixels, so nothing they could see is
#: lost, and MediaPipe's copies of the frame stay small whatever its size
#: (a 30000x30000 frame crashed it).
MAX_DETECTION_SIDE = 1920

#: What MediaPipe 0.10.21's C++ code writes to stderr while its graphs start
#: on a CPU-only machine: absl logs everything before absl::InitializeLog(),
#: which the wheel never calls, so GLOG_minloglevel and TF_CPP_MIN_LOG_LEVEL
#: have no effect.  These lines are dropped; any other line is passed on.
START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "GPU suport is not available",   # sic; the Tasks API's failed EGL set-up
    "Created TensorFlow Lite XNNPACK delegate for CPU",
    "Feedback manager requires a model with a single signature inference",
)

_SHORT_RANGE_MODEL = (Path(mp.__file__).parent / "modules" / "face_detection"
                      / "face_detection_short_range.tflite")
_FULL_RANGE = 1  # model_selection value of mediapipe.solutions.face_detection


@dataclass(frozen=True)
class Detection:
    """One face found in a frame.

    ``box`` is ``(x, y, w, h)`` in pixels, clipped to the frame.  The eyes are
    ``(x, y)`` pixel positions; ``right_eye`` is the person's right eye, on
    the image's left for a face looking at the camera.
    """

    box: tuple[int, int, int, int]
    score: float
    right_eye: tuple[float, float]
    left_eye: tuple[float, float]


class FaceDetector:
    """Finds faces in RGB frames with the short-range and/or full-range BlazeFace model."""

    def __init__(self, mode: str = "auto", min_confidence: float = 0.5, max_faces: int = 10,
                 min_face_size: int = 16):
        if mode not in DETECTOR_MODES:
            raise ValueError(f"detector must be one of {', '.join(DETECTOR_MODES)}, got {mode!r}")
        self.mode = mode
        self.min_confidence = None
        self._short_range = None
        self._full_range = None
        self._full_range_hold = 0    # frames left that skip the short-range model ("auto")
        self.set_limits(min_confidence, max_faces, min_face_size)

    def set_limits(self, min_confidence: float, max_faces: int, min_face_size: int) -> None:
        """Set the score, count and size limits (checked first: ValueError changes nothing).

        MediaPipe applies the score limit inside its graphs, so a new
        ``min_confidence`` builds them again (tens of milliseconds, once).
        """
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        if min_face_size < 0:
            raise ValueError(f"min_face_size must be >= 0, got {min_face_size}")
        self.max_faces = max_faces
        self.min_face_size = min_face_size
        if min_confidence != self.min_confidence:
            self.close()
            with _start_up_noise_dropped():
                self._open_models(min_confidence)
        self.min_confidence = min_confidence

    def _open_models(self, min_confidence: float) -> None:
        if self.mode in ("auto", "short"):
            if not _SHORT_RANGE_MODEL.is_file():
                raise FileNotFoundError(
                    f"MediaPipe's short-range face model is missing: {_SHORT_RANGE_MODEL} "
                    "(mediapipe==0.10.21 bundles it; later releases do not)")
            options = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_path=str(_SHORT_RANGE_MODEL)),
                running_mode=vision.RunningMode.IMAGE,
                min_detection_confidence=min_confidence)
            self._short_range = vision.FaceDetector.create_from_options(options)
        if self.mode in ("auto", "full"):
            self._full_range = mp.solutions.face_detection.FaceDetection(
                model_selection=_FULL_RANGE, min_detection_confidence=min_confidence)

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        """Faces in a C-contiguous uint8 RGB frame (H x W x 3), best score first.

        In ``"auto"`` mode a frame that falls back to the full-range model
        sends the next ``FULL_RANGE_HOLD_FRAMES`` frames straight to it.
        Boxes and eyes are in the pixels of ``image_rgb``, also when it was
        larger than ``MAX_DETECTION_SIDE`` and the models saw it downscaled.
        """
        frame_size = image_rgb.shape[1], image_rgb.shape[0]
        image_rgb = _fit_for_detection(image_rgb)
        if self.mode == "full" or self._full_range_hold > 0:
            self._full_range_hold = max(0, self._full_range_hold - 1)
            faces = self._detect_full_range(image_rgb, frame_size)
        else:
            faces = self._detect_short_range(image_rgb, frame_size)
            if self.mode == "auto" and (not faces or min(f.score for f in faces) < SHORT_RANGE_TRUST):
                full_range = self._detect_full_range(image_rgb, frame_size)
                if full_range:
                    faces = _merge(full_range, [f for f in faces if f.score >= SHORT_RANGE_TRUST])
                    self._full_range_hold = FULL_RANGE_HOLD_FRAMES
                # Else the full-range model saw nothing: it misses faces close to the camera, which the
                # short-range model finds with scores below the trust threshold; keep those.
        faces.sort(key=lambda face: face.score, reverse=True)
        return faces[:self.max_faces]

    def reset(self) -> None:
        """Forget what earlier frames showed (the full-range hold), e.g. between unrelated images."""
        self._full_range_hold = 0

    def warm_up(self) -> None:
        """Run every loaded model once, so the first real frame is not slow."""
        blank = np.zeros((240, 320, 3), np.uint8)
        with _start_up_noise_dropped():   # each graph logs again when it first runs
            if self._short_range is not None:
                self._detect_short_range(blank, (320, 240))
            if self._full_range is not None:
                self._detect_full_range(blank, (320, 240))

    def close(self) -> None:
        """Release MediaPipe's graphs."""
        if self._short_range is not None:
            self._short_range.close()
            self._short_range = None
        if self._full_range is not None:
            self._full_range.close()
            self._full_range = None

    def _detect_short_range(self, image_rgb: np.ndarray, frame_size: tuple[int, int]) -> list[Detection]:
        """Faces in ``image_rgb`` in the pixels of a frame of ``frame_size`` (width, height)."""
        width, height = frame_size
        scale_x, scale_y = width / image_rgb.shape[1], height / image_rgb.shape[0]
        result = self._short_range.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image_rgb))
        faces = []
        for found in result.detections:
            box = found.bounding_box   # pixels of image_rgb; the eyes are relative
            eyes = found.keypoints[:2]
            face = self._make_detection(
                box.origin_x * scale_x, box.origin_y * scale_y, box.width * scale_x, box.height * scale_y,
                found.categories[0].score, [(point.x * width, point.y * height) for point in eyes],
                width, height)
            if face is not None:
                faces.append(face)
        return faces

    def _detect_full_range(self, image_rgb: np.ndarray, frame_size: tuple[int, int]) -> list[Detection]:
        """Faces in ``image_rgb`` in the pixels of a frame of ``frame_size`` (width, height)."""
        width, height = frame_size
        result = self._full_range.process(image_rgb)
        faces = []
        for found in result.detections or []:
            location = found.location_data
            box = location.relative_bounding_box
            eyes = location.relative_keypoints[:2]
            face = self._make_detection(
                box.xmin * width, box.ymin * height, box.width * width, box.height * height,
                found.score[0], [(point.x * width, point.y * height) for point in eyes],
                width, height)
            if face is not None:
                faces.append(face)
        return faces

    def _make_detection(self, x: float, y: float, w: float, h: float, score: float,
                        eyes: list[tuple[float, float]], frame_width: int,
                        frame_height: int) -> Detection | None:
        """A clipped detection, or None when the face is too small, unsure or outside the frame.

        The score is checked here as well: the full-range solution's graph
        lets faces below its ``min_detection_confidence`` through.
        """
        if w < self.min_face_size or score < self.min_confidence:
            return None
        left, top = max(0, round(x)), max(0, round(y))
        right, bottom = min(frame_width, round(x + w)), min(frame_height, round(y + h))
        if right <= left or bottom <= top:
            return None
        return Detection((left, top, right - left, bottom - top), float(score), eyes[0], eyes[1])


@contextmanager
def _start_up_noise_dropped():
    """Run the block; pass on what it wrote to stderr, less START_UP_NOISE (also if it raises).

    Whatever else is written meanwhile (by this code or another thread)
    reaches stderr when the block ends, in its order.
    """
    lines = []
    try:
        with captured_stderr() as lines:
            yield
    finally:
        pass_on([line for line in lines if not any(noise.encode() in line for noise in START_UP_NOISE)])


def _fit_for_detection(image_rgb: np.ndarray) -> np.ndarray:
    """The frame, downscaled (area interpolation) if its longer side exceeds MAX_DETECTION_SIDE."""
    height, width = image_rgb.shape[:2]
    scale = MAX_DETECTION_SIDE / max(height, width)
    if scale >= 1.0:
        return image_rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)


def _merge(full_range: list[Detection], short_range: list[Detection]) -> list[Detection]:
    """Full-range faces plus the short-range faces none of them covers."""
    if not full_range or not short_range:
        return full_range + short_range
    overlaps = iou_matrix([f.box for f in short_range], [f.box for f in full_range])
    new_faces = [face for face, overlap in zip(short_range, overlaps.max(axis=1)) if overlap <= DUPLICATE_IOU]
    return full_range + new_faces
