"""Face detector recall on the shared media and on crowded frames made from them, per detector mode.

    python benchmarks/bench_detector_recall.py [--modes auto short full] [--tiling 0 1 2] [--min-iou 0.5]

Ground truth: the boxes in test/fixtures/face_boxes.json (checked by eye),
for the photos and some frames of the videos of the shared media.  The
crowded frames are made from them, with their boxes carried along: each
photo as a 640x480 camera frames it, at 0.75 and double size, 2x2 mosaics
of the multi-face photos (1280x960 and squeezed to 640x480), close crops
(one face filling 60 % and 85 % of the frame's height) and a group selfie
(a close face from obama-720p with six small faces from the group photos
at its edges, 640x480).  A true face counts as found when a detection
overlaps it by ``--min-iou`` (one detection per face); "extra" counts the
detections that match no true face.  Every frame is a fresh scene
(``FaceDetector.reset``), max_faces is lifted to 100 so that only the
detector limits what is found; "ms" is the median detection time per frame
of the group, a comparison between the columns of one run.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from wscfer_ros.perception.colours import convert

from common import REPO_ROOT, BenchmarkError, argument_parser, machine_description, media_dir, print_table

TRUTH_FILE = REPO_ROOT / "test" / "fixtures" / "face_boxes.json"
CAMERA_SIZE = (640, 480)


@dataclass
class Frame:
    """An RGB frame and its true face boxes (N x 4: x, y, w, h)."""

    label: str
    group: str
    image: np.ndarray
    boxes: np.ndarray


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BenchmarkError(f"cannot read {path}")
    return convert(image, "bgr", "rgb")


def real_frames(media=None, truth_file=TRUTH_FILE) -> list[Frame]:
    """The photos and the video frames that face_boxes.json has boxes for."""
    media = media or media_dir()
    truth = json.loads(truth_file.read_text())
    frames = [Frame(name, "photos", read_rgb(media / name), np.array(boxes, np.float64))
              for name, boxes in truth["photos"].items()]
    for name, by_index in truth["videos"].items():
        capture = cv2.VideoCapture(str(media / name))
        index, wanted = 0, {int(key): boxes for key, boxes in by_index.items()}
        while wanted:
            ok, frame = capture.read()
            if not ok:
                raise BenchmarkError(f"{media / name} has no frame {min(wanted)}")
            if index in wanted:
                frames.append(Frame(f"{name} #{index}", "video frames", convert(frame, "bgr", "rgb"),
                                    np.array(wanted.pop(index), np.float64)))
            index += 1
        capture.release()
    return frames


def transformed(frame: Frame, label: str, group: str, region: tuple[int, int, int, int],
                size: tuple[int, int]) -> Frame:
    """``region`` (x, y, w, h) of the frame resized to ``size`` (width, height); faces less than half
    inside the region are dropped, the others clipped to it."""
    x, y, w, h = region
    interpolation = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
    image = cv2.resize(np.ascontiguousarray(frame.image[y:y + h, x:x + w]), size, interpolation=interpolation)
    boxes = []
    for bx, by, bw, bh in frame.boxes:
        left, top = max(bx, x), max(by, y)
        right, bottom = min(bx + bw, x + w), min(by + bh, y + h)
        if right > left and bottom > top and (right - left) * (bottom - top) >= 0.5 * bw * bh:
            boxes.append([left - x, top - y, right - left, bottom - top])
    scale = np.array([size[0] / w, size[1] / h] * 2)
    return Frame(label, group, image, np.array(boxes, np.float64).reshape(-1, 4) * scale)


def camera_frame(frame: Frame, width: int = CAMERA_SIZE[0], height: int = CAMERA_SIZE[1]) -> Frame:
    """The frame as a camera of width x height frames it: centre crop to its aspect, then resize."""
    source_height, source_width = frame.image.shape[:2]
    crop_width = min(source_width, round(source_height * width / height))
    crop_height = min(source_height, round(crop_width * height / width))
    region = ((source_width - crop_width) // 2, (source_height - crop_height) // 2, crop_width, crop_height)
    return transformed(frame, f"{frame.label} at {width}x{height}", "camera 640x480", region, (width, height))


def scaled(frame: Frame, factor: float) -> Frame:
    height, width = frame.image.shape[:2]
    size = (round(width * factor), round(height * factor))
    return transformed(frame, f"{frame.label} x{factor:g}", f"scaled x{factor:g}", (0, 0, width, height), size)


def mosaic(frames: list[Frame], size: tuple[int, int], label: str, group: str) -> Frame:
    """Four frames as camera frames of half of ``size`` each, in a 2x2 grid."""
    cell_width, cell_height = size[0] // 2, size[1] // 2
    image = np.zeros((cell_height * 2, cell_width * 2, 3), np.uint8)
    boxes = []
    for index, frame in enumerate(frames[:4]):
        cell = camera_frame(frame, cell_width, cell_height)
        left, top = (index % 2) * cell_width, (index // 2) * cell_height
        image[top:top + cell_height, left:left + cell_width] = cell.image
        boxes.append(cell.boxes + [left, top, 0, 0])
    return Frame(label, group, image, np.concatenate(boxes))


def close_crop(frame: Frame, face: int, fill: float) -> Frame:
    """A 4:3 crop around one face, the face filling ``fill`` of its height, resized to 640x480."""
    x, y, w, h = frame.boxes[face]
    crop_height = min(round(h / fill), frame.image.shape[0])
    crop_width = min(round(crop_height * 4 / 3), frame.image.shape[1])
    left = int(np.clip(x + w / 2 - crop_width / 2, 0, frame.image.shape[1] - crop_width))
    top = int(np.clip(y + h / 2 - crop_height / 2, 0, frame.image.shape[0] - crop_height))
    return transformed(frame, f"{frame.label}, face {face} at {fill:.0%}", "close crops",
                       (left, top, crop_width, crop_height), CAMERA_SIZE)


def group_selfie(photos: dict[str, Frame]) -> Frame:
    """The issue's group selfie, 640x480: one close face (obama-720p's, 45 % of the height) in the
    middle and six smaller faces (36-80 px wide, from the group photos, with some of their
    surroundings) at the left and right edges."""
    close = photos["obama-720p.jpg"]
    x, y, w, h = close.boxes[0]
    crop_height = round(h / 0.45)
    crop_width = round(crop_height * 4 / 3)
    region = (round(x + w / 2 - crop_width / 2), 0, crop_width, crop_height)
    frame = transformed(close, "group selfie", "group selfie", region, CAMERA_SIZE)
    image, boxes = frame.image.copy(), list(frame.boxes)
    small = [("group_2008_007676.jpg", 1), ("group_2008_007676.jpg", 3), ("group_2008_007676.jpg", 6),
             ("group_2008_004176.jpg", 0), ("group_2008_004176.jpg", 3), ("group_2008_004176.jpg", 6)]
    for slot, ((name, face), width) in enumerate(zip(small, (80, 44, 64, 36, 72, 50))):
        source = photos[name]
        fx, fy, fw, fh = source.boxes[face]
        margin = 0.4 * fw                                 # some hair, neck and background around the face
        patch_region = (round(fx - margin), round(fy - margin), round(fw + 2 * margin), round(fh + 2 * margin))
        patch_side = round(width * patch_region[2] / fw)
        patch = transformed(source, "", "", patch_region, (patch_side, patch_side))
        left = 8 if slot < 3 else CAMERA_SIZE[0] - patch_side - 8
        top = [30, 190, 350][slot % 3]
        image[top:top + patch_side, left:left + patch_side] = patch.image
        boxes.append(patch.boxes[0] + [left, top, 0, 0])
    return Frame("group selfie (1 close face, 6 small at the edges)", "group selfie", image, np.array(boxes))


def crowded_frames(real: list[Frame]) -> list[Frame]:
    """The made-up frames, from the photos among ``real``."""
    photos = {frame.label: frame for frame in real if frame.group == "photos"}
    frames = [group_selfie(photos)]
    frames += [camera_frame(frame) for frame in photos.values()]
    frames += [scaled(frame, factor) for factor in (0.75, 2.0) for frame in photos.values()]
    crowd = [photos[name] for name in ("group_2008_007676.jpg", "group_2008_004176.jpg", "two_people.jpg",
                                       "obama_and_biden.jpg")]
    frames.append(mosaic(crowd, (1280, 960), "2x2 mosaic, 1280x960", "mosaic 1280x960"))
    frames.append(mosaic(crowd, CAMERA_SIZE, "2x2 mosaic, 640x480", "mosaic 640x480"))
    frames += [close_crop(photos[name], face, fill) for name, face in (("obama-720p.jpg", 0), ("two_people.jpg", 0),
                                                                     ("two_people.jpg", 1))
               for fill in (0.6, 0.85)]
    return frames


def matched(found: np.ndarray, truth: np.ndarray, min_iou: float) -> int:
    """How many true boxes a detection overlaps by at least ``min_iou``, one detection per true box
    (the best overlaps first)."""
    from wscfer_ros.perception.boxes import iou_matrix

    if not len(found) or not len(truth):
        return 0
    overlaps = iou_matrix(truth, found)
    used_truth, used_found = set(), set()
    for flat in np.argsort(overlaps, axis=None)[::-1]:
        row, column = np.unravel_index(flat, overlaps.shape)
        if overlaps[row, column] < min_iou:
            break
        if row not in used_truth and column not in used_found:
            used_truth.add(row)
            used_found.add(column)
    return len(used_truth)


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--modes", nargs="+", default=["auto", "short", "full"], help="detector modes")
    parser.add_argument("--tiling", nargs="+", type=int, default=[0, 1, 2],
                        help="detector_tiling levels (default: 0 1 2)")
    parser.add_argument("--min-iou", type=float, default=0.5, help="overlap that counts as found (default 0.5)")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="min_detection_confidence (default 0.5)")
    parser.add_argument("--frames", action="store_true", help="also print one row per frame")
    args = parser.parse_args(argv)
    try:
        from wscfer_ros.perception.detector import FaceDetector

        real = real_frames()
        frames = real + crowded_frames(real)
        # Tiling changes only the full-range model's input: the short-range mode gets one column.
        columns = [(mode, tiling) for mode in args.modes
                   for tiling in (args.tiling[:1] if mode == "short" else args.tiling)]
        detectors = {column: FaceDetector(column[0], args.min_confidence, max_faces=100, tiling=column[1])
                     for column in columns}
    except (BenchmarkError, ValueError) as error:
        print(f"bench_detector_recall: error: {error}", file=sys.stderr)
        return 1

    print(machine_description())
    print(f"min_detection_confidence {args.min_confidence}, min_face_size 16, found: IoU >= {args.min_iou}\n")
    results = {}       # (column, frame index) -> (found, extra, ms)
    for index, frame in enumerate(frames):
        for column, detector in detectors.items():
            detector.reset()
            started = time.perf_counter()
            faces = detector.detect(frame.image)
            elapsed = (time.perf_counter() - started) * 1000.0
            found = matched(np.array([face.box for face in faces], np.float64).reshape(-1, 4), frame.boxes,
                            args.min_iou)
            results[column, index] = (found, len(faces) - found, elapsed)
    names = [mode if mode == "short" else f"{mode}, tiling {tiling}" for mode, tiling in columns]
    groups = list(dict.fromkeys(frame.group for frame in frames))
    rows = []
    for group in groups + ["all"]:
        indices = [i for i, frame in enumerate(frames) if group in ("all", frame.group)]
        truth = sum(len(frames[i].boxes) for i in indices)
        row = [group, len(indices), truth]
        for column in columns:
            found = sum(results[column, i][0] for i in indices)
            extra = sum(results[column, i][1] for i in indices)
            row.append(f"{found} ({found / truth:.0%}), +{extra}, "
                       f"{np.median([results[column, i][2] for i in indices]):.1f} ms")
        rows.append(row)
    print("Faces found (recall), extra detections, median ms per frame\n")
    print_table(["frames", "n", "faces"] + names, rows)
    if args.frames:
        print_table(["frame", "faces"] + names,
                    [[frame.label, len(frame.boxes)] + [f"{results[column, i][0]} +{results[column, i][1]}"
                                                        for column in columns]
                     for i, frame in enumerate(frames)])
    for detector in detectors.values():
        detector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
