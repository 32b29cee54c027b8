"""One object that turns a frame into the expressions of its faces.

detect (MediaPipe, on RGB) -> crop (one affine warp per face, straight to the
model's input) -> classify (one batched ONNX Runtime call) -> track (ids and
smoothed probabilities).  Used as is by the ROS node and by ``wscfer-infer``;
it imports no ROS.
"""
import dataclasses
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .classifier import PROVIDER_CHOICES, Classifier
from .colours import to_rgb
from .crops import crop_faces
from .detector import DEFAULT_TILING, DETECTOR_MODES, FaceDetector
from .tracking import FaceTracker

def _setting(default, description: str, **cli):
    """A PipelineConfig field: its default and the one description that the node's
    parameter descriptor and wscfer-infer's flag help both show.  The flag is
    the field's name (``--min-detection-confidence``); ``cli`` may add
    ``aliases`` (older flag names that still work) and ``choices``."""
    return field(default=default, metadata={"description": description, **cli})


@dataclass
class PipelineConfig:
    """Every setting of the pipeline; the node's parameters and wscfer-infer's flags are made from these fields."""

    model_path: str = _setting("", "ONNX model file; empty: the shipped default model; a bare file name: "
                                   "a model shipped in wscfer_ros/models/", aliases=("--model",))
    providers: str = _setting("auto", "ONNX Runtime execution provider: 'auto' (CUDA when it really works, "
                                      "else CPU), 'cpu' or 'cuda'", choices=PROVIDER_CHOICES)
    threads: int = _setting(0, "ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose")
    busy_wait: bool = _setting(False, "let ONNX Runtime's threads spin between frames: a little less "
                                      "latency (benchmarks/results.md), but a CPU core kept busy all the "
                                      "time at camera rate")
    detector: str = _setting("auto", "MediaPipe face detector: 'short' (faces within about 2 m), 'full' "
                                     "(groups and distant faces) or 'auto' (see detector.py)",
                             choices=DETECTOR_MODES)
    detector_tiling: int = _setting(DEFAULT_TILING, "0: off; 1 or more: the full-range face model also sees square "
                                       "tiles of the frame (1: as high as the frame, 2: two rows of "
                                       "them), so small faces reach it larger: more faces found in group "
                                       "shots; a stream runs one tile per frame on a few frames of each "
                                       "sweep and holds each tile's faces until its next run")
    min_detection_confidence: float = _setting(0.5, "minimum face detection score, 0..1",
                                              aliases=("--min-confidence",))
    max_faces: int = _setting(10, "at most this many faces per frame, the most confident first")
    min_face_size: int = _setting(16, "ignore faces narrower than this many pixels")
    crop_scale: float = _setting(0.0, "enlargement of the detected box before the square crop; 0 uses the "
                                      "model file's crop_scale (the crops it was trained on)")
    align: bool = _setting(False, "rotate each crop so the eyes are level before classifying (most exact "
                                  "with detector 'full')")
    smoothing: float = _setting(0.5, "weight of a face's past probabilities in its smoothed ones, 0..1; "
                                     "0 turns smoothing off")
    max_missed_frames: int = _setting(15, "forget a face id after this many processed frames without it")
    iou_threshold: float = _setting(0.3, "minimum box overlap (IoU) for a face to keep its id from the last frame")


#: The settings :meth:`Pipeline.tune` changes while frames are processed (the
#: node's parameters that take effect at once); the others need a new Pipeline.
TUNABLE_SETTINGS = ("min_detection_confidence", "max_faces", "min_face_size", "smoothing",
                    "max_missed_frames", "iou_threshold")


@dataclass
class Face:
    """One face of a frame with its expression."""

    id: int
    box: tuple[int, int, int, int]    # x, y, w, h pixels
    detection_score: float
    label: str
    score: float                      # probability of label
    probabilities: dict[str, float]


@dataclass
class FrameResult:
    """The faces of a frame and the time each stage took."""

    faces: list[Face]
    # "detect" (with the conversion to RGB), "crop", "classify", "track"
    timings_ms: dict[str, float]
    # Ids of every live track after this frame: the faces seen in it and those
    # missed for at most max_missed_frames frames.
    tracked_ids: list[int] = field(default_factory=list)


class Pipeline:
    """Frame in, faces with ids and expressions out.

    Construction loads and checks the model (raises
    :class:`~wscfer_ros.perception.classifier.ModelError`) and warms every model up.
    """

    def __init__(self, config: PipelineConfig | None = None):
        self.config = config or PipelineConfig()
        if self.config.crop_scale < 0:
            raise ValueError(f"crop_scale must be >= 0 (0 = the model's), got {self.config.crop_scale}")
        self.classifier = Classifier(self.config.model_path, self.config.providers, self.config.threads,
                                     self.config.busy_wait)
        self._tracker = FaceTracker(self.config.iou_threshold, self.config.max_missed_frames,
                                    self.config.smoothing)
        self._detector = FaceDetector(self.config.detector, self.config.min_detection_confidence,
                                      self.config.max_faces, self.config.min_face_size,
                                      self.config.detector_tiling)
        self._crop_scale = self.config.crop_scale or self.classifier.crop_scale
        # Held while a frame is processed, so tune() changes settings between frames.
        self._lock = threading.Lock()
        self.classifier.warm_up()
        self._detector.warm_up()

    def tune(self, **settings) -> None:
        """Change some of :data:`TUNABLE_SETTINGS` between two frames (thread-safe).

        Every value is checked before any is applied: a ValueError changes nothing.
        """
        unknown = set(settings) - set(TUNABLE_SETTINGS)
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))} while running")
        config = dataclasses.replace(self.config, **settings)
        FaceTracker.check(config.iou_threshold, config.max_missed_frames, config.smoothing)
        with self._lock:
            self._detector.set_limits(config.min_detection_confidence, config.max_faces,
                                      config.min_face_size)
            self._tracker.configure(config.iou_threshold, config.max_missed_frames, config.smoothing)
            self.config = config

    def process(self, image: np.ndarray, color: str) -> FrameResult:
        """Faces and expressions of one frame.

        ``image`` is uint8, H x W (``"gray"``) or H x W x 3/4 (``"bgr"``,
        ``"rgb"``, ``"bgra"``, ``"rgba"``); a mismatch raises ValueError.
        """
        with self._lock:
            return self._process(image, color)

    def _process(self, image: np.ndarray, color: str) -> FrameResult:
        started = time.perf_counter()
        image_rgb = to_rgb(image, color)
        detections = self._detector.detect(image_rgb)
        detected = time.perf_counter()

        boxes = np.array([d.box for d in detections], np.float64).reshape(-1, 4)
        eyes = np.array([(d.right_eye, d.left_eye) for d in detections]) if self.config.align else None
        crops = crop_faces(image_rgb, boxes, self.classifier.input_size, self._crop_scale,
                           self.classifier.color, eyes)
        cropped = time.perf_counter()

        probabilities = self.classifier.predict(crops)
        classified = time.perf_counter()

        ids, smoothed = self._tracker.update(boxes, probabilities)
        names = self.classifier.class_names
        faces = []
        for detection, face_id, row in zip(detections, ids, smoothed):
            best = int(row.argmax())
            faces.append(Face(int(face_id), detection.box, detection.score, names[best],
                              float(row[best]), dict(zip(names, row.tolist()))))
        tracked = time.perf_counter()

        timings = {"detect": detected - started, "crop": cropped - detected,
                   "classify": classified - cropped, "track": tracked - classified}
        return FrameResult(faces, {stage: seconds * 1000.0 for stage, seconds in timings.items()},
                           self._tracker.track_ids)

    @property
    def tracked_faces(self) -> int:
        """Faces the tracker remembers (expired ones are freed)."""
        return self._tracker.track_count

    def reset(self) -> None:
        """Forget the tracks and the detector's state, e.g. between unrelated images."""
        with self._lock:
            self._tracker.reset()
            self._detector.reset()

    def close(self) -> None:
        """Release the detector's MediaPipe graphs."""
        with self._lock:
            self._detector.close()
