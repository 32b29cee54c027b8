"""ROS4HRI (REP-155) without ROS: face ids, expression names, valence and arousal, regions, face images.

What the node's typed ``/humans/faces/...`` output is made of, as plain
Python and numpy, so it is tested without ROS (``hri_topics.py`` turns it
into ``hri_msgs`` messages).  Also the consumer mode's classifier: the
expressions of face images another detector cropped, smoothed per face id.

Valence and arousal
-------------------
``hri_msgs/Expression`` carries a categorical expression and a point of the
valence/arousal plane (both from -1 to +1).  The point is the expectation of
the class coordinates under the face's (smoothed) class probabilities:
``valence = sum_c p_c * v_c``, ``arousal = sum_c p_c * a_c``.  The class
coordinates are the pleasure and arousal scores of the matching emotion
terms in Russell & Mehrabian (1977), "Evidence for a three-factor theory of
emotions", *Journal of Research in Personality* 11(3): 273-294 (the
terms' mean scores on the pleasure, arousal and dominance scales, each
from -1 to +1; dominance is not used):

=========  =============  ========  =======
class      term           valence   arousal
=========  =============  ========  =======
angry      angry           -0.51     0.59
disgust    disgust         -0.60     0.35
fear       fearful         -0.64     0.60
happy      happy            0.81     0.51
sad        sad             -0.63    -0.27
surprise   surprised        0.40     0.67
neutral    (none)           0.00     0.00
=========  =============  ========  =======

``neutral`` is the origin of the plane by definition (no pleasure or
displeasure, no activation), not a measured term.  A class without a row
(``contempt`` of 8-class models) adds nothing to either sum.
"""
from __future__ import annotations

import random
import string
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from .colours import as_bgr, to_rgb
from .crops import crop_faces, crop_transforms
from .tracking import check_smoothing, smooth

#: Side in pixels of the face images on ``/humans/faces/<id>/cropped``: REP-155's
#: default for its ``/humans/faces/width`` and ``/humans/faces/height``.
FACE_IMAGE_SIZE = 128

#: Model class name -> the value of the matching ``hri_msgs/Expression`` constant
#: (NEUTRAL, ANGRY, ...).  A class not listed is published under its own name.
EXPRESSION_OF_CLASS = {
    "neutral": "neutral",
    "angry": "angry",
    "sad": "sad",
    "happy": "happy",
    "surprise": "surprised",
    "disgust": "disgusted",
    "fear": "scared",
}

#: Model class name -> (valence, arousal): Russell & Mehrabian (1977), see the module docstring.
VALENCE_AROUSAL = {
    "angry": (-0.51, 0.59),
    "disgust": (-0.60, 0.35),
    "fear": (-0.64, 0.60),
    "happy": (0.81, 0.51),
    "sad": (-0.63, -0.27),
    "surprise": (0.40, 0.67),
    "neutral": (0.0, 0.0),
}


def expression_name(class_name: str) -> str:
    """The ``hri_msgs/Expression`` value for a model class (the class name itself when none matches)."""
    return EXPRESSION_OF_CLASS.get(class_name, class_name)


def valence_arousal(probabilities: dict[str, float]) -> tuple[float, float]:
    """The expected (valence, arousal) of a face's class probabilities, each in [-1, 1]."""
    valence = arousal = 0.0
    for name, probability in probabilities.items():
        class_valence, class_arousal = VALENCE_AROUSAL.get(name, (0.0, 0.0))
        valence += probability * class_valence
        arousal += probability * class_arousal
    return float(np.clip(valence, -1.0, 1.0)), float(np.clip(arousal, -1.0, 1.0))


class FaceIds:
    """REP-155 face ids (strings) for the tracker's integer ids: ``<prefix>_<id>``, e.g. ``fkqwz_12``.

    REP-155 wants face ids unique; the tracker's ids are unique within a
    process but start again at 1 in the next one, so each process draws its
    own prefix: ``f`` and four random lower-case letters.  An id is a valid
    ROS name token (a letter first), so it can name the face's topics.
    """

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or "f" + "".join(random.choices(string.ascii_lowercase, k=4))

    def __call__(self, face_id: int) -> str:
        return f"{self.prefix}_{face_id}"


def normalized_roi(box, width: int, height: int) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of a pixel box ``(x, y, w, h)``, as fractions of the frame in [0, 1]."""
    x, y, w, h = box
    return (float(np.clip(x / width, 0.0, 1.0)), float(np.clip(y / height, 0.0, 1.0)),
            float(np.clip((x + w) / width, 0.0, 1.0)), float(np.clip((y + h) / height, 0.0, 1.0)))


def face_images(image: np.ndarray, color: str, boxes, size: int = FACE_IMAGE_SIZE) -> np.ndarray:
    """BGR images of the faces, ``[N, size, size, 3]`` uint8, as REP-155's ``/cropped`` wants them.

    Each is the square centred on the face's box (side: the box's longer
    side), scaled to ``size`` and padded with zeros where it leaves the frame.
    """
    frame = as_bgr(image, color)
    matrices = crop_transforms(np.asarray(boxes, np.float64).reshape(-1, 4), (size, size), 1.0)
    faces = np.zeros((len(matrices), size, size, 3), np.uint8)
    for matrix, face in zip(matrices, faces):
        cv2.warpAffine(frame, matrix, (size, size), dst=face, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return faces


class TrackedIds:
    """The ids tracked now, and which appeared or left since the last list."""

    def __init__(self):
        self.ids: list[str] = []

    def update(self, ids) -> tuple[list[str], list[str]]:
        """Take the new list (duplicates dropped, order kept); returns (appeared, left), each in order."""
        new = list(dict.fromkeys(ids))
        new_set, old_set = set(new), set(self.ids)
        appeared = [face_id for face_id in new if face_id not in old_set]
        left = [face_id for face_id in self.ids if face_id not in new_set]
        self.ids = new
        return appeared, left


@dataclass
class FaceExpression:
    """The expression of one face image."""

    label: str                        # the arg-max class
    score: float                      # its probability
    probabilities: dict[str, float]   # smoothed over the face id's images


class CroppedFaceClassifier:
    """Expressions of face images that another detector cropped (ROS4HRI consumer mode).

    Each image is already one face (``/humans/faces/<id>/cropped`` or
    ``/aligned``): it is resized whole to the model's input, without
    detection.  Probabilities are smoothed per face id like the tracker's
    (``smoothing`` is the weight of the past); :meth:`forget` drops an id
    that left.  ``classify`` runs in one thread, ``forget`` and ``tune`` may
    come from another.
    """

    def __init__(self, classifier, smoothing: float = 0.5):
        check_smoothing(smoothing)
        self.classifier = classifier
        self.smoothing = smoothing
        self._probabilities: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        classifier.warm_up()

    def classify(self, images: dict[str, tuple[np.ndarray, str]]) -> dict[str, FaceExpression]:
        """Expressions of ``{face id: (image, colour)}`` in one batched model call.

        Colours as :meth:`Pipeline.process` takes them; a bad image raises ValueError.
        """
        if not images:
            return {}
        crops = np.concatenate([
            crop_faces(to_rgb(image, color), np.array([[0, 0, image.shape[1], image.shape[0]]]),
                       self.classifier.input_size, 1.0, self.classifier.color)
            for image, color in images.values()])
        probabilities = self.classifier.predict(crops)
        names = self.classifier.class_names
        expressions = {}
        with self._lock:
            for face_id, row in zip(images, probabilities):
                past = self._probabilities.get(face_id)
                row = row if past is None else smooth(past, row, self.smoothing)
                self._probabilities[face_id] = row
                best = int(row.argmax())
                expressions[face_id] = FaceExpression(names[best], float(row[best]),
                                                      dict(zip(names, row.tolist())))
        return expressions

    def forget(self, face_id: str) -> None:
        with self._lock:
            self._probabilities.pop(face_id, None)

    def tune(self, smoothing: float) -> None:
        """A new smoothing weight, used from the next image on."""
        check_smoothing(smoothing)
        self.smoothing = smoothing

    @property
    def tracked_faces(self) -> int:
        """Face ids with smoothing state (forgotten when they leave)."""
        return len(self._probabilities)

    def reset(self) -> None:
        with self._lock:
            self._probabilities.clear()
