"""Face ids across frames and smoothing of their expression probabilities.

Faces are matched to the tracks of the previous frames by the overlap (IoU)
of their boxes, greedily from the best overlap down.  With the handful of
faces a camera frame holds, greedy matching gives the same pairs as an
optimal assignment in all but contrived layouts and needs no extra
dependency.  Each track keeps an exponential moving average of its
probabilities, so a label does not flicker on single-frame noise.
"""
from dataclasses import dataclass

import numpy as np

from .boxes import iou_matrix


def smooth(past: np.ndarray, new: np.ndarray, smoothing: float) -> np.ndarray:
    """One step of the exponential moving average: ``smoothing`` is the weight of the past."""
    return smoothing * past + (1.0 - smoothing) * new


def check_smoothing(smoothing: float) -> None:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")


@dataclass
class _Track:
    id: int
    box: np.ndarray
    probabilities: np.ndarray
    missed: int = 0


class FaceTracker:
    """Gives each face a stable integer id and smooths its probabilities.

    ``smoothing`` is the weight of the past in the moving average (0 turns
    smoothing off).  A track survives up to ``max_missed_frames`` consecutive
    frames without a matching face; after that its id expires.  Ids are
    never reused, not even after :meth:`reset`, so a consumer that keys on
    them never mixes up two people.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed_frames: int = 15,
                 smoothing: float = 0.5):
        self.configure(iou_threshold, max_missed_frames, smoothing)
        self._tracks: list[_Track] = []
        self._next_id = 1

    def configure(self, iou_threshold: float, max_missed_frames: int, smoothing: float) -> None:
        """Set the matching and smoothing settings (checked first: ValueError changes nothing).

        Takes effect at the next :meth:`update`; the tracks are kept.
        """
        self.check(iou_threshold, max_missed_frames, smoothing)
        self.iou_threshold = iou_threshold
        self.max_missed_frames = max_missed_frames
        self.smoothing = smoothing

    @staticmethod
    def check(iou_threshold: float, max_missed_frames: int, smoothing: float) -> None:
        """ValueError naming the first setting out of range."""
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed_frames < 0:
            raise ValueError(f"max_missed_frames must be >= 0, got {max_missed_frames}")
        check_smoothing(smoothing)

    def reset(self) -> None:
        """Forget all tracks; the next faces get new ids."""
        self._tracks = []

    @property
    def track_count(self) -> int:
        """Live tracks: faces seen within the last ``max_missed_frames`` frames."""
        return len(self._tracks)

    @property
    def track_ids(self) -> list[int]:
        """Ids of the live tracks, oldest first (faces missed for a few frames included)."""
        return [track.id for track in self._tracks]

    def update(self, boxes: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Match this frame's faces to the tracks.

        ``boxes`` is ``[N, 4]`` (x, y, w, h) and ``probabilities`` ``[N, C]``.
        Returns the ids ``[N]`` (int64) and the smoothed probabilities
        ``[N, C]`` (float32), in the order of the input faces.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        probabilities = np.asarray(probabilities, np.float32)
        track_of_face = self._match(boxes)

        ids = np.empty(len(boxes), np.int64)
        smoothed = np.empty_like(probabilities)
        seen = set()
        for face, track_index in enumerate(track_of_face):
            if track_index < 0:
                track = _Track(self._next_id, boxes[face], probabilities[face])
                self._next_id += 1
                self._tracks.append(track)
            else:
                track = self._tracks[track_index]
                track.box = boxes[face]
                track.probabilities = smooth(track.probabilities, probabilities[face],
                                             self.smoothing)
            seen.add(track.id)
            ids[face] = track.id
            smoothed[face] = track.probabilities

        for track in self._tracks:
            track.missed = 0 if track.id in seen else track.missed + 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed_frames]
        return ids, smoothed

    def _match(self, boxes: np.ndarray) -> np.ndarray:
        """Index of the track each face continues, or -1 for a new face."""
        track_of_face = np.full(len(boxes), -1, np.int64)
        if not self._tracks or not len(boxes):
            return track_of_face
        overlaps = iou_matrix(np.stack([t.box for t in self._tracks]), boxes)
        used_tracks = set()
        for flat in np.argsort(overlaps, axis=None)[::-1]:
            track_index, face = np.unravel_index(flat, overlaps.shape)
            if overlaps[track_index, face] < self.iou_threshold:
                break
            if track_index in used_tracks or track_of_face[face] >= 0:
                continue
            used_tracks.add(track_index)
            track_of_face[face] = track_index
        return track_of_face
