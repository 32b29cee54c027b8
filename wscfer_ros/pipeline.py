"""One object that turns a frame into the expressions of its faces.

detect (MediaPipe, on RGB) -> crop (one affine warp per face, straight to the
model's input) -> classify (one batched ONNX Runtime call) -> track (ids and
smoothed probabilities).  Used as is by the ROS node and by ``wscfer-infer``;
it imports no ROS.
"""
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .classifier import Classifier
from .crops import crop_faces
from .detector import FaceDetector
from .tracking import FaceTracker

# Channels each colour needs and the conversion to the detector's RGB.
_CHANNELS = {"gray": 1, "bgr": 3, "rgb": 3, "bgra": 4, "rgba": 4}
_TO_RGB = {"gray": cv2.COLOR_GRAY2RGB, "bgr": cv2.COLOR_BGR2RGB,
           "bgra": cv2.COLOR_BGRA2RGB, "rgba": cv2.COLOR_RGBA2RGB}


@dataclass
class PipelineConfig:
    """Every setting of the pipeline; the ROS parameters and CLI flags map onto these."""

    model_path: str = ""              # "" = the shipped default model
    providers: str = "auto"           # "auto" | "cpu" | "cuda"
    threads: int = 0                  # ONNX Runtime intra-op threads, 0 = its default
    detector: str = "auto"            # "auto" | "short" | "full", see detector.py
    min_detection_confidence: float = 0.5
    max_faces: int = 10
    min_face_size: int = 16           # pixels; narrower faces are ignored
    crop_scale: float = 0.0           # 0 = the model file's crop_scale
    align: bool = False               # roll alignment from the eyes; most exact with detector "full"
    smoothing: float = 0.5            # weight of the past probabilities, 0 = off
    max_missed_frames: int = 15
    iou_threshold: float = 0.3


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


class Pipeline:
    """Frame in, faces with ids and expressions out.

    Construction loads and checks the model (raises
    :class:`~wscfer_ros.classifier.ModelError`) and warms every model up.
    """

    def __init__(self, config: PipelineConfig | None = None):
        self.config = config or PipelineConfig()
        if self.config.crop_scale < 0:
            raise ValueError(f"crop_scale must be >= 0 (0 = the model's), got {self.config.crop_scale}")
        self.classifier = Classifier(self.config.model_path, self.config.providers, self.config.threads)
        self._tracker = FaceTracker(self.config.iou_threshold, self.config.max_missed_frames,
                                    self.config.smoothing)
        self._detector = FaceDetector(self.config.detector, self.config.min_detection_confidence,
                                      self.config.max_faces, self.config.min_face_size)
        self._crop_scale = self.config.crop_scale or self.classifier.crop_scale
        self.classifier.warm_up()
        self._detector.warm_up()

    def process(self, image: np.ndarray, color: str) -> FrameResult:
        """Faces and expressions of one frame.

        ``image`` is uint8, H x W (``"gray"``) or H x W x 3/4 (``"bgr"``,
        ``"rgb"``, ``"bgra"``, ``"rgba"``); a mismatch raises ValueError.
        """
        started = time.perf_counter()
        image_rgb = _to_rgb(image, color)
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
        return FrameResult(faces, {stage: seconds * 1000.0 for stage, seconds in timings.items()})

    @property
    def tracked_faces(self) -> int:
        """Faces the tracker remembers (expired ones are freed)."""
        return self._tracker.track_count

    def reset(self) -> None:
        """Forget the tracks and the detector's state, e.g. between unrelated images."""
        self._tracker.reset()
        self._detector.reset()

    def close(self) -> None:
        """Release the detector's MediaPipe graphs."""
        self._detector.close()


def _to_rgb(image: np.ndarray, color: str) -> np.ndarray:
    """The frame as the C-contiguous RGB array MediaPipe needs; a view when it already is one."""
    if color not in _CHANNELS:
        raise ValueError(f"color must be one of {', '.join(_CHANNELS)}, got {color!r}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else None)
    if channels != _CHANNELS[color]:
        expected = "H x W" if color == "gray" else f"H x W x {_CHANNELS[color]}"
        raise ValueError(f"a '{color}' image must be {expected}, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if color == "rgb":
        return np.ascontiguousarray(image)
    return cv2.cvtColor(image, _TO_RGB[color])
