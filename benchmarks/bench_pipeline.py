"""The pipeline alone (detect, crop, classify, track) on the shared media, as a table.

    python benchmarks/bench_pipeline.py [--model FILE] [--repeat 100] [--frames 0] [--detector-tiling 0 1]

Times :meth:`wscfer_ros.perception.pipeline.Pipeline.process` per frame, BGR frames in
as the node gets them from a camera: each photo ``--repeat`` times, and every
frame of each video once (all frames decoded before timing).  The stage
columns are the medians of ``FrameResult.timings_ms``; "faces" is the mean
number found per frame.  Rows "at 640x480" show the frames as a 4:3 camera
would frame them (centre crop, then resize), the size of the issue's targets.
The camera-size rows (the 7-face photos, the group selfie of
bench_detector_recall.py with one close face and six small ones at the edges,
and the one-face Obama photo and woman2 video) get one row per detector mode
and ``--detector-tiling`` level: what tiling costs a crowd and a lone face.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from wscfer_ros.perception.colours import convert

from bench_detector_recall import crowded_frames, real_frames
from common import (BenchmarkError, PHOTOS, add_model_argument, argument_parser, check_positive, fit_frame,
                    machine_description, ms, percentiles, print_table, read_photo, read_video, resolve_model)

STAGES = ("detect", "crop", "classify", "track")
CAMERA_SIZE = (640, 480)
VIDEO_FACES = {"woman2.mp4": "1", "short_hamilton_clip.mp4": "1-8"}   # by eye, see PROVENANCE.md
TARGETS = ("targets: p50 <= 6 ms for a 640x480 frame with one face; <= 15 ms with 7 faces")


@dataclass
class FrameSet:
    """The frames of one row (or, with ``per_mode``, one row per detector mode)."""

    label: str
    faces_by_eye: str
    frames: list[np.ndarray]      # BGR
    is_video: bool
    per_mode: bool = False


def frame_sets(video_frames: int) -> list[FrameSet]:
    """Every row's frames, decoded up front."""
    width, height = CAMERA_SIZE
    sets = []
    for name, faces in PHOTOS.items():
        photo = read_photo(name)
        sets.append(FrameSet(f"{name} ({photo.shape[1]}x{photo.shape[0]})", str(faces), [photo], False,
                             per_mode=faces == 7))
        if name == "obama-720p.jpg" or faces == 7:
            sets.append(FrameSet(f"{name} at {width}x{height}", str(faces), [fit_frame(photo, width, height)],
                                 False, per_mode=True))
    selfie = next(frame for frame in crowded_frames(real_frames()) if frame.group == "group selfie")
    sets.append(FrameSet(f"group selfie at {width}x{height}", str(len(selfie.boxes)),
                         [convert(selfie.image, "rgb", "bgr")], False, per_mode=True))
    for name, faces in VIDEO_FACES.items():
        frames = read_video(name, limit=video_frames)
        size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
        sets.append(FrameSet(f"{name} ({size}, {len(frames)} frames)", faces, frames, True))
        if name == "woman2.mp4":
            resized = [fit_frame(frame, width, height) for frame in frames]
            sets.append(FrameSet(f"{name} at {width}x{height} ({len(frames)} frames)", faces, resized, True,
                                 per_mode=True))
    return sets


def measure(pipeline, frames: list[np.ndarray], is_video: bool, repeat: int, warmup: int) -> dict:
    """Per-frame wall times, stage times and faces found for one row."""
    pipeline.reset()
    for _ in range(warmup):
        pipeline.process(frames[0], "bgr")
    pipeline.reset()
    sequence = frames if is_video else frames * repeat
    totals, faces = [], []
    stages = {stage: [] for stage in STAGES}
    for frame in sequence:
        started = time.perf_counter()
        result = pipeline.process(frame, "bgr")
        totals.append((time.perf_counter() - started) * 1000.0)
        faces.append(len(result.faces))
        for stage in STAGES:
            stages[stage].append(result.timings_ms[stage])
    return {"totals": totals, "faces": float(np.mean(faces)),
            "stages": {stage: float(np.median(values)) for stage, values in stages.items()}}


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    add_model_argument(parser)
    parser.add_argument("--repeat", type=int, default=100, help="timed runs of each photo (default 100)")
    parser.add_argument("--frames", type=int, default=0,
                        help="first N frames of each video (default 0: all)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames before each row (default 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (default 0: its own choice, as the node's default)")
    parser.add_argument("--detectors", nargs="+", default=["auto", "short", "full"],
                        help="detector modes measured on the camera-size rows (default: all three)")
    parser.add_argument("--detector-tiling", nargs="+", type=int, default=None,
                        help="detector_tiling levels measured on the camera-size rows (default: the pipeline's)")
    args = parser.parse_args(argv)
    check_positive(parser, "--repeat", args.repeat)
    if args.frames < 0 or args.warmup < 0 or args.threads < 0:
        parser.error("--frames, --warmup and --threads must be >= 0")

    try:
        from wscfer_ros.perception.pipeline import Pipeline, PipelineConfig

        model = resolve_model(args.model)
        sets = frame_sets(args.frames)
        default = PipelineConfig()
        default_detector = default.detector, default.detector_tiling
        modes = list(dict.fromkeys([default_detector] + [(mode, tiling) for mode in args.detectors
                                                         for tiling in args.detector_tiling or [default_detector[1]]]))
        pipelines = {mode: Pipeline(PipelineConfig(model_path=str(model), detector=mode[0], detector_tiling=mode[1],
                                                   threads=args.threads))
                     for mode in modes}
    except (BenchmarkError, ValueError) as error:   # ValueError: a ModelError, or a bad detector mode
        print(f"bench_pipeline: error: {error}", file=sys.stderr)
        return 1

    print(machine_description())
    classifier = pipelines[default_detector].classifier
    print(f"model: {model} ({classifier.provider}, threads {args.threads or 'default'}); photos timed "
          f"{args.repeat} times, videos once per frame, after {args.warmup} untimed frames\n")
    rows = []
    for frame_set in sets:
        for mode in modes if frame_set.per_mode else [default_detector]:
            result = measure(pipelines[mode], frame_set.frames, frame_set.is_video, args.repeat, args.warmup)
            p50, p95, p99 = percentiles(result["totals"])
            rows.append([frame_set.label, frame_set.faces_by_eye, mode[0], mode[1], len(result["totals"]),
                         f"{result['faces']:.1f}", ms(p50), ms(p95), ms(p99)] + [ms(result["stages"][stage]) for stage in STAGES])
    print("Pipeline.process per frame (ms; stage columns: median)\n")
    print_table(["frames", "faces by eye", "detector", "tiling", "timed", "faces found", "p50", "p95", "p99"]
                + [f"{stage} p50" for stage in STAGES], rows)
    print(f"- {TARGETS}")
    for pipeline in pipelines.values():
        pipeline.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
