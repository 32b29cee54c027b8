"""Face detection with MediaPipe's bundled BlazeFace models.

Two models ship inside the ``mediapipe`` package:

* short range (128x128 input, faces within about 2 m), run through the Tasks
  API (``mediapipe.tasks.python.vision.FaceDetector``);
* full range (192x192 input, faces up to about 5 m), run through
  ``mediapipe.solutions.face_detection``: the Tasks API's graph is built for
  the short-range model's anchors and fails on the full-range file.

Modes: ``"short"``, ``"full"`` and ``"auto"`` (the default), with the
faces each finds measured in ``benchmarks/results.md`` ("Face detector
recall"; ``benchmarks/bench_detector_recall.py``).

Why faces are missed: the full-range model sees the whole frame shrunk to
its 192x192 input, so a face narrower than about a tenth of the frame's
longer side (under about 20 of its pixels) is not found at all, whatever
the score threshold; the short-range model finds faces that fill a good part
of the frame (within about 2 m of a webcam) and the full-range model misses
those that fill much of it.  A close face with small ones beside it (a group
selfie) needs both.

``"auto"`` runs the short-range model, and the full-range model as well
when the short-range model finds no face or scores one below
``SHORT_RANGE_TRUST``, and every ``FULL_RANGE_PROBE_FRAMES`` frames.  The
faces of both are kept together: the full-range model's, each sure
short-range face none of them covers, and each unsure short-range face that
overlaps none of them (the short-range model's unsure boxes around
full-range faces are oversized copies of them).  A frame where the
full-range model found faces the short-range model did not sends the next
``FULL_RANGE_HOLD_FRAMES`` frames to it directly, together with the
short-range model while that one still adds close faces: a group stays in
view for a while, and a camera watching one pays for the full-range model
alone (or both, with a close face), not for the short-range model's
fruitless first try.  The frame after a hold runs both models again.  When
the full-range model finds nothing, the short-range faces stay: faces
filling much of the frame (close-ups, portrait crops) are beyond it, and the
short-range model often scores them below the trust threshold.

Tiling (``tiling`` level 1 or more, the node's ``detector_tiling``; modes
``"auto"`` and ``"full"``): the full-range model also sees square tiles of
the frame (:func:`tiles`), each shrunk less than the whole frame, so small
faces reach it larger; faces found in more than one place are kept once (the
best score), a face cut by a tile's inner edge is taken from another tile,
and a face the whole frame's models found is theirs; a face only a tile
shows needs a score ``TILE_SCORE_MARGIN`` above ``min_confidence``.  Each
tile is one more run of the full-range model, about as long as the whole
frame's, so a stream does not pay them all on every frame: the first frame
after :meth:`reset` (or after a change of frame size) runs every tile
(unless its faces are all close, below), and then one tile runs
per frame on the first frames of every ``TILE_SWEEP_FRAMES``, each tile's
faces held until its next visit; in ``"auto"`` mode a tile due on a frame
that probes with the full-range model waits for the next frame.  A frame
whose faces are all close to the camera (``CLOSE_FACE_FRACTION``) runs no
tile, a still image or a stream's first frame too: tiles reveal small faces,
and a scene shows them small ones (or none) where they are likely, while a
tile of a close face shows its features large enough to pass for small
faces (an eye, a nostril), which would then replace it.  Small faces beside
close ones that neither model sees in the whole frame are therefore not
found.  A small face the whole frame's models miss keeps the box it had
when its tile last ran, for at most one sweep (also after it left).

Eye keypoints: the full-range model's follow a rolled head to within about
4 degrees; the short-range model's barely do (a 25 degree roll reads as
about 10), so roll alignment is only as good as the full-range keypoints.
"""
import math
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

#: In ``"auto"`` mode, after a frame where the full-range model found faces the
#: short-range model did not, this many following frames go to it directly
#: (and to the short-range model too while that one adds close faces): a group
#: or a distant face stays in view for a while, and trying the short-range
#: model first would only add its time.
FULL_RANGE_HOLD_FRAMES = 15

#: In ``"auto"`` mode, a frame where the short-range model is sure of every
#: face still runs the full-range model once this many frames have gone by
#: without it: distant faces beside a close one are found within this many frames.
FULL_RANGE_PROBE_FRAMES = 15

#: The tiling level (see above) of a FaceDetector, and the node's
#: ``detector_tiling`` default: two rows of tiles find the small faces of group
#: shots at the cost of one tile on a few frames of each sweep.
DEFAULT_TILING = 2

#: With tiling, neighbouring tiles overlap by this fraction of their side, and
#: a frame gets no tiles when they would be more than MAX_TILE_FRACTION of its
#: longer side (see :func:`tiles`).
TILE_OVERLAP = 1 / 3
MAX_TILE_FRACTION = 0.8

#: With tiling on a stream, each tile runs once every this many frames (or
#: every as many frames as there are tiles, if more), and the faces found in
#: it are held until then: the delay before a small face's box follows it, and
#: the longest a face that left stays reported (one second at 30 Hz).  Long
#: enough that a 6-tile sweep leaves most frames without a tile, so a crowd's
#: median frame costs what it costs without tiling.
TILE_SWEEP_FRAMES = 30

#: A face found only in a tile needs a score this much above
#: ``min_confidence``: a tile magnifies texture as well as faces, and the
#: full-range model's false faces there (a dark sleeve) score lower than
#: its true small faces (benchmarks/results.md, "Face detector recall").
TILE_SCORE_MARGIN = 0.15

#: With tiling on a stream, a frame whose faces are all at least this
#: fraction of its longer side wide (people close to the camera, the node's
#: one-face case) runs no tile: tiles run while a smaller face, or none, is
#: in view.
CLOSE_FACE_FRACTION = 0.15

#: Two boxes overlapping by more than this IoU are one face: a short-range face
#: the full-range model found too (its box is kept), or a face found in two
#: tiles (the best score is kept).
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
                 min_face_size: int = 16, tiling: int = DEFAULT_TILING):
        if mode not in DETECTOR_MODES:
            raise ValueError(f"detector must be one of {', '.join(DETECTOR_MODES)}, got {mode!r}")
        if tiling < 0:
            raise ValueError(f"tiling must be >= 0, got {tiling}")
        self.mode = mode
        self.tiling = tiling
        self.min_confidence = None
        self._short_range = None
        self._full_range = None
        self.reset()
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

        ``"auto"`` runs the short-range model; the full-range model as well
        when the short-range model finds no face or is unsure of one, and
        every ``FULL_RANGE_PROBE_FRAMES`` frames (the first frame after
        :meth:`reset` included) to find distant faces beside close ones.
        The faces of both are kept together: the full-range model's, plus
        each sure short-range face that none of them covers.  A frame where
        the full-range model found faces the short-range model did not sends
        the next ``FULL_RANGE_HOLD_FRAMES`` frames to the full-range model
        directly, with the short-range model too while it finds close faces
        the full-range model misses.  With ``tiling``, the faces found in
        tiles that these did not find are added (see the module's text).
        Boxes and eyes are in the pixels of ``image_rgb``, also when it was
        larger than ``MAX_DETECTION_SIDE`` and the models saw it downscaled.
        """
        frame_size = image_rgb.shape[1], image_rgb.shape[0]
        image_rgb = _fit_for_detection(image_rgb)
        if self.mode == "short":
            faces = self._detect_short_range(image_rgb, frame_size)
        elif self.mode == "full":
            whole = self._detect_full_range(image_rgb, frame_size)
            faces = _with_tiled(whole, *self._detect_in_tiles(image_rgb, frame_size, whole, busy=False))
        else:
            faces = self._detect_auto(image_rgb, frame_size)
        faces.sort(key=lambda face: face.score, reverse=True)
        return faces[:self.max_faces]

    def _detect_auto(self, image_rgb: np.ndarray, frame_size: tuple[int, int]) -> list[Detection]:
        holding = self._full_range_hold > 0
        self._full_range_hold = max(0, self._full_range_hold - 1)
        short_range = (self._detect_short_range(image_rgb, frame_size)
                       if not holding or self._hold_short_range else [])
        sure = [face for face in short_range if face.score >= SHORT_RANGE_TRUST]
        if not (holding or len(sure) < len(short_range) or not short_range
                or self._frames_since_full_range >= FULL_RANGE_PROBE_FRAMES):
            self._frames_since_full_range += 1
            return _with_tiled(short_range, *self._detect_in_tiles(image_rgb, frame_size, short_range, busy=False))
        # After a hold, the next frame runs both models again: the short-range model alone, sure of a
        # close face, would never learn that the small faces beside it are still there.
        self._frames_since_full_range = FULL_RANGE_PROBE_FRAMES if holding else 0
        # A probe (the full-range model outside a hold) already doubles the frame's cost: a tile due now waits.
        whole = self._detect_full_range(image_rgb, frame_size)
        full_range = _with_tiled(whole, *self._detect_in_tiles(image_rgb, frame_size, short_range + whole,
                                                               busy=not holding))
        if not full_range:
            # The full-range model misses faces close to the camera, which the short-range model finds
            # with scores below the trust threshold; keep those.
            self._hold_short_range = True
            return short_range
        # Sure short-range faces the full-range model has not; unsure ones only where it saw nothing at all:
        # the short-range model's unsure boxes around the full-range model's faces are oversized copies.
        unsure = [face for face in short_range if face.score < SHORT_RANGE_TRUST]
        close_only = _not_covered(sure, full_range) + _not_covered(unsure, full_range, max_iou=0.0)
        found_more = bool(_not_covered(full_range, sure))
        if not holding and not found_more and len(sure) == len(short_range):
            return short_range      # a probe that found nothing more: the boxes of the frames around it
        if holding:
            self._hold_short_range = self._hold_short_range and bool(close_only)
        else:
            # The full-range model found faces the short-range model missed or was unsure of.
            self._full_range_hold = FULL_RANGE_HOLD_FRAMES
            self._hold_short_range = bool(close_only)
        return full_range + close_only

    def reset(self) -> None:
        """Forget what earlier frames showed (the full-range hold), e.g. between unrelated images.

        The next frame in ``"auto"`` mode runs both models.
        """
        self._full_range_hold = 0                       # frames left that go to the full-range model
        self._hold_short_range = True                   # and to the short-range model as well
        self._frames_since_full_range = FULL_RANGE_PROBE_FRAMES
        self._tile_frame = None                         # the (width, height) the tiles were laid out for
        self._tile_layout = []                          # its tiles, from tiles()
        self._tile_faces = {}                           # tile index -> the faces found there last
        self._sweep_frame = None                        # frames since the sweep began (None: no frame yet)
        self._tile_waited = False                       # the tile due last frame waited for this one

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
        return self._detections(self._full_range_boxes(image_rgb), image_rgb, frame_size)

    def _detect_in_tiles(self, image_rgb: np.ndarray, frame_size: tuple[int, int], seen: list[Detection],
                         busy: bool) -> tuple[list[Detection], list[Detection]]:
        """The faces of the tiles run now, and those held from the other tiles' last run (none without
        tiling).  ``seen``: the faces the whole frame showed the models now; when all of them are close
        (none narrower than ``CLOSE_FACE_FRACTION`` of the frame), no tile runs and none is held.  On a
        ``busy`` frame a tile that is due waits for the next frame (once)."""
        if not self.tiling or self._full_range is None:
            return [], []
        height, width = image_rgb.shape[:2]
        close_up = bool(seen) and all(min(face.box[2:]) >= CLOSE_FACE_FRACTION * max(frame_size) for face in seen)
        if (width, height) != self._tile_frame:    # after reset, or a new frame size
            self._tile_frame, self._tile_layout = (width, height), tiles(width, height, self.tiling)
            self._tile_faces, self._sweep_frame = {}, None
        if close_up:                       # the next frame with small faces (or none) starts a sweep
            self._tile_faces, self._sweep_frame, self._tile_waited = {}, -1, False
            visits = []
        elif self._sweep_frame is None:    # the first frame of this size: every tile now
            self._sweep_frame = 0
            visits = range(len(self._tile_layout))
        else:
            following = (self._sweep_frame + 1) % max(TILE_SWEEP_FRAMES, len(self._tile_layout))
            due = following < len(self._tile_layout)
            waits = due and busy and not self._tile_waited
            if not waits:
                self._sweep_frame = following
            self._tile_waited = waits
            visits = [following] if due and not waits else []
        for index in visits:
            left, top, side = self._tile_layout[index]
            inner_edges = (left > 0, top > 0, left + side < width, top + side < height)
            tile = np.ascontiguousarray(image_rgb[top:top + side, left:left + side])
            found = [((box[0] + left, box[1] + top, box[2], box[3]), score, [(x + left, y + top) for x, y in eyes])
                     for box, score, eyes in self._full_range_boxes(tile)
                     if score >= self.min_confidence + TILE_SCORE_MARGIN
                     and not _touches(box, side, inner_edges)]   # a face cut by the tile: whole in another
            self._tile_faces[index] = self._detections(found, image_rgb, frame_size)
        fresh = [face for index in visits for face in self._tile_faces[index]]
        held = [face for index, faces in self._tile_faces.items() if index not in visits for face in faces]
        return fresh, held

    def _detections(self, found: list, image_rgb: np.ndarray, frame_size: tuple[int, int]) -> list[Detection]:
        """``_full_range_boxes`` entries in the pixels of ``image_rgb`` as detections in a frame of
        ``frame_size``, less those :meth:`_make_detection` refuses."""
        height, width = image_rgb.shape[:2]
        scale_x, scale_y = frame_size[0] / width, frame_size[1] / height
        faces = []
        for (x, y, w, h), score, eyes in found:
            face = self._make_detection(x * scale_x, y * scale_y, w * scale_x, h * scale_y, score,
                                        [(eye_x * scale_x, eye_y * scale_y) for eye_x, eye_y in eyes],
                                        *frame_size)
            if face is not None:
                faces.append(face)
        return faces

    def _full_range_boxes(self, image_rgb: np.ndarray) -> list:
        """The full-range model's faces in ``image_rgb``: ``((x, y, w, h), score, [right eye, left eye])``
        in its pixels, unclipped."""
        height, width = image_rgb.shape[:2]
        result = self._full_range.process(image_rgb)
        found = []
        for detection in result.detections or []:
            location = detection.location_data
            box = location.relative_bounding_box
            found.append(((box.xmin * width, box.ymin * height, box.width * width, box.height * height),
                          detection.score[0],
                          [(point.x * width, point.y * height) for point in location.relative_keypoints[:2]]))
        return found

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


def tiles(width: int, height: int, level: int) -> list[tuple[int, int, int]]:
    """The square tiles ``(left, top, side)`` the full-range model also sees at tiling ``level`` (>= 1).

    ``level`` rows of tiles cover the frame's shorter side (one row: tiles as
    high as a landscape frame); neighbours overlap by a third of their side,
    so a face up to a third as wide as a tile lies whole in one of them, and
    larger faces are the whole frame's.  Each tile reaches the model's
    192x192 input less downscaled than the whole frame: faces a few pixels
    wide there, which it cannot find, come out larger.  No tiles when a tile
    would be more than ``MAX_TILE_FRACTION`` of the frame's longer side:
    hardly larger in the model's input than the whole frame.
    """
    side = math.ceil(min(width, height) / (level - (level - 1) * TILE_OVERLAP))
    if side > MAX_TILE_FRACTION * max(width, height):
        return []

    def starts(length: int) -> list[int]:
        count = max(1, math.ceil((length - side) / (side * (1 - TILE_OVERLAP)) - 1e-9) + 1)
        return [round(index * (length - side) / max(1, count - 1)) for index in range(count)]

    return [(left, top, side) for top in starts(height) for left in starts(width)]


def _touches(box, side: int, inner_edges: tuple[bool, bool, bool, bool]) -> bool:
    """Whether ``box`` (x, y, w, h in a tile of ``side`` pixels) reaches one of the tile's edges that lie
    inside the frame (left, top, right, bottom)."""
    x, y, w, h = box
    reaches = (x <= 1, y <= 1, x + w >= side - 1, y + h >= side - 1)
    return any(inner and reached for inner, reached in zip(inner_edges, reaches))


def _best_of(faces: list[Detection]) -> list[Detection]:
    """``faces`` less each one overlapping a better-scored one by more than DUPLICATE_IOU."""
    kept = []
    for face in sorted(faces, key=lambda face: face.score, reverse=True):
        if not kept or iou_matrix([face.box], [other.box for other in kept]).max() <= DUPLICATE_IOU:
            kept.append(face)
    return kept


def _with_tiled(whole: list[Detection], fresh: list[Detection], held: list[Detection]) -> list[Detection]:
    """The faces of the whole frame and of the tiles run now, each face once (its best-scored box), then
    the faces held from the other tiles that none of them covers: a held box is older."""
    now = _best_of(whole + fresh) if fresh else whole
    return now + _not_covered(_best_of(held), now)


def _not_covered(faces: list[Detection], others: list[Detection], max_iou: float = DUPLICATE_IOU) -> list[Detection]:
    """The faces of ``faces`` that no face of ``others`` overlaps by more than ``max_iou`` (IoU)."""
    if not faces or not others:
        return list(faces)
    overlaps = iou_matrix([f.box for f in faces], [f.box for f in others])
    return [face for face, overlap in zip(faces, overlaps.max(axis=1)) if overlap <= max_iou]
