"""Faces found in crowded and close-up frames: the recall the detector must keep.

The true boxes are test/fixtures/face_boxes.json (checked by eye); the
crowded frames are made from the shared photos by
benchmarks/bench_detector_recall.py, which prints the same counts for every
mode and tiling level.
"""
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from wscfer_ros.perception.colours import convert
from wscfer_ros.perception.detector import (FULL_RANGE_HOLD_FRAMES, TILE_OVERLAP, TILE_SWEEP_FRAMES, FaceDetector,
                                            tiles)
from wscfer_ros.perception.pipeline import PipelineConfig

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from bench_detector_recall import crowded_frames, matched, real_frames  # noqa: E402

SELFIE = "group selfie (1 close face, 6 small at the edges)"


@pytest.fixture(scope="module")
def frames(media_dir):
    real = real_frames(media_dir)
    return {frame.label: frame for frame in real + crowded_frames(real)}


def found(detector, frame, fresh=True):
    """(true faces found, extra detections) in one frame."""
    if fresh:
        detector.reset()
    faces = detector.detect(frame.image)
    hits = matched(np.array([face.box for face in faces], np.float64).reshape(-1, 4), frame.boxes, 0.5)
    return hits, len(faces) - hits


@pytest.fixture(scope="module")
def default_detector():
    config = PipelineConfig()
    detector = FaceDetector(config.detector, config.min_detection_confidence, 100, config.min_face_size,
                            config.detector_tiling)
    yield detector
    detector.close()


def test_auto_keeps_the_close_face_and_the_small_ones_beside_it_on_every_frame(frames):
    """The issue's group selfie as a camera stream without tiling: the short-range model is sure of the
    close face and blind to the small ones, the full-range model the other way round; every frame has
    both."""
    selfie = frames[SELFIE]
    detector = FaceDetector("auto", max_faces=100, tiling=0)
    try:
        per_frame = [found(detector, selfie, fresh=False) for _ in range(2 * FULL_RANGE_HOLD_FRAMES + 3)]
    finally:
        detector.close()
    assert all(hits >= 3 and extra == 0 for hits, extra in per_frame), per_frame


def test_the_default_detector_finds_every_face_of_the_group_selfie_on_every_frame(frames, default_detector):
    selfie = frames[SELFIE]
    default_detector.reset()
    per_frame = [found(default_detector, selfie, fresh=False) for _ in range(2 * TILE_SWEEP_FRAMES + 3)]
    assert all(hits == len(selfie.boxes) and extra == 0 for hits, extra in per_frame), per_frame


@pytest.mark.parametrize("label, tiling, minimum", [
    (SELFIE, 2, 7),
    ("2x2 mosaic, 640x480", 2, 17),
    ("2x2 mosaic, 1280x960", 2, 17),
    ("2x2 mosaic, 640x480", 1, 6),
    ("group_2008_007676.jpg", 1, 7),
    ("short_hamilton_clip.mp4 #225", 1, 4),
])
def test_tiling_finds_small_faces_the_whole_frame_hides(frames, label, tiling, minimum):
    frame = frames[label]
    with_tiles, without = FaceDetector("auto", max_faces=100, tiling=tiling), \
        FaceDetector("auto", max_faces=100, tiling=0)
    try:
        hits, extra = found(with_tiles, frame)
        hits_without, _ = found(without, frame)
    finally:
        with_tiles.close()
        without.close()
    assert hits >= minimum > hits_without, f"{hits} of {len(frame.boxes)} with tiling {tiling}, {hits_without} without"
    assert extra <= 1, "a face found in two tiles counts once"


class CountedRuns:
    """Stands in for the full-range model's graph and counts its runs."""

    def __init__(self, graph):
        self.graph, self.runs = graph, 0

    def process(self, image):
        self.runs += 1
        return self.graph.process(image)

    def close(self):
        self.graph.close()


@pytest.mark.parametrize("mode, faces", [("auto", 7), ("full", 6)])   # the close face is the short-range model's
def test_a_stream_pays_for_one_tile_at_a_time_and_keeps_every_small_face_on_every_frame(frames, mode, faces):
    """The selfie as a camera stream at tiling 2: every tile on the first frame, then one tile on each of
    the first frames of a sweep; the small faces stay on every frame; when everybody has left, the faces
    held from the tiles are gone within one sweep."""
    selfie = frames[SELFIE]
    detector = FaceDetector(mode, max_faces=100, tiling=2)
    counted = detector._full_range = CountedRuns(detector._full_range)
    tile_count = len(tiles(selfie.image.shape[1], selfie.image.shape[0], 2))
    try:
        detector.reset()
        runs, per_frame = [], []
        for _ in range(2 * TILE_SWEEP_FRAMES):
            before = counted.runs
            per_frame.append(found(detector, selfie, fresh=False))
            runs.append(counted.runs - before)
        assert all(hits == faces and extra <= 1 for hits, extra in per_frame), per_frame
        assert runs[0] == 1 + tile_count                     # the whole frame and every tile
        assert max(runs[1:]) <= 2                            # the whole frame (when it runs) and one tile
        if mode == "full":    # the whole frame runs on every frame: the other runs are tiles
            tile_runs = [count - 1 for count in runs]
            assert sum(tile_runs[1:TILE_SWEEP_FRAMES]) == tile_count - 1, "the first sweep's other tiles"
            assert sum(tile_runs[TILE_SWEEP_FRAMES:]) == tile_count, "each tile once in the next sweep"
        empty = np.full_like(selfie.image, 127)
        left = [len(detector.detect(empty)) for _ in range(TILE_SWEEP_FRAMES)]
        assert left[-1] == 0, left
    finally:
        detector.close()


def test_a_close_face_runs_no_tile_and_a_crowd_coming_into_view_starts_them(frames):
    """The node's one-face case costs what it costs without tiling, from the first frame on; a group
    coming into view is tiled."""
    close, crowd = frames["obama-720p.jpg at 640x480"], frames["group_2008_004176.jpg at 640x480"]
    counts = {}
    for tiling in (0, 2):
        detector = FaceDetector("auto", max_faces=100, tiling=tiling)
        counted = detector._full_range = CountedRuns(detector._full_range)
        try:
            detector.reset()
            assert all(found(detector, close, fresh=False) == (1, 0) for _ in range(2 * TILE_SWEEP_FRAMES))
            after_close = counted.runs
            for _ in range(TILE_SWEEP_FRAMES):
                detector.detect(crowd.image)
            counts[tiling] = after_close, counted.runs - after_close
        finally:
            detector.close()
    tile_count = len(tiles(640, 480, 2))
    assert counts[2][0] == counts[0][0], "the close-up stream: no tile, not even on its first frame"
    assert counts[2][1] >= counts[0][1] + tile_count, "the crowd: a sweep of tiles"


@pytest.mark.parametrize("name", ["neutral/Jacqueline_Edwards_0001.jpg", "neutral/Yishan_Zhang_0001.jpg",
                                  "surprise/Chris_Neil_0001.jpg"])
def test_a_whole_head_photo_keeps_its_face_and_no_feature_of_it(muxspace_dir, default_detector, name):
    """Whole-head photos where the tiles of the close face showed an eye or a nostril as a small face,
    which then replaced the face (muxspace images, 350x350)."""
    image = convert(cv2.imread(str(muxspace_dir / name)), "bgr", "rgb")
    default_detector.reset()
    faces = default_detector.detect(image)
    assert len(faces) == 1 and min(faces[0].box[2:]) > 0.5 * max(image.shape[:2]), faces


@pytest.mark.parametrize("mode, tiling", [("auto", 0), ("auto", 2), ("full", 2)])
def test_close_ups_stay_one_face_each(frames, mode, tiling):
    detector = FaceDetector(mode, tiling=tiling)
    try:
        results = {label: found(detector, frame) for label, frame in frames.items() if frame.group == "close crops"}
    finally:
        detector.close()
    assert len(results) == 6
    assert all(result == (1, 0) for result in results.values()), results


def test_default_recall_on_the_real_frames_and_as_a_camera_frames_them(frames, default_detector):
    picked = [frame for frame in frames.values() if frame.group in ("photos", "video frames", "camera 640x480")]
    hits = [found(default_detector, frame) for frame in picked]
    assert sum(len(frame.boxes) for frame in picked) == 60
    assert sum(hit for hit, _ in hits) >= 58, "found on the day the default became tiling 2: 59 of 60"
    assert sum(extra for _, extra in hits) <= 3


@pytest.mark.parametrize("width, height", [(640, 480), (640, 360), (500, 334), (1920, 1080), (480, 640), (333, 1000)])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_tiles_are_squares_inside_the_frame_covering_it_with_a_third_overlap(width, height, level):
    found_tiles = tiles(width, height, level)
    (side,) = {tile_side for _, _, tile_side in found_tiles}
    assert side == pytest.approx(min(width, height) / (level - (level - 1) * TILE_OVERLAP), abs=1)
    covered = np.zeros((height, width), bool)
    for left, top, _ in found_tiles:
        assert 0 <= left <= width - side and 0 <= top <= height - side
        covered[top:top + side, left:left + side] = True
    assert covered.all()
    for axis in (0, 1):
        starts = sorted({tile[axis] for tile in found_tiles})
        assert all(later - earlier <= side * (1 - TILE_OVERLAP) + 1 for earlier, later in zip(starts, starts[1:]))


def test_a_frame_nearly_as_wide_as_high_gets_no_tiles_of_its_own_height():
    assert tiles(480, 438, 1) == [] and tiles(500, 500, 1) == []
    assert len(tiles(480, 438, 2)) > 1
