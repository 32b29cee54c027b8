"""``wscfer-infer``: the expression pipeline on files or a webcam, without ROS.

Reads an image, a folder of images, a video file or a webcam (its index,
e.g. ``0``), runs the same :class:`~wscfer_ros.perception.pipeline.Pipeline` as the node
and writes one JSON object per frame, in the schema of the ``expressions``
topic, to stdout or ``--output``.  ``--annotate`` writes the frames with the
faces drawn: an image, a folder of images or an mp4 video, following the input.

    wscfer-infer photo.jpg
    wscfer-infer clip.mp4 --output clip.jsonl --annotate clip_faces.mp4

Bad input never stops it: an image file that cannot be decoded, or whose
header announces more pixels than the node accepts (the node's own check,
``encoded.decode``), is skipped with one line naming it and why, the rest is
processed, and the summary counts what was skipped.  The exit status is 0
when at least one frame was processed, 1 when none was, 2 for a bad setting.
"""
import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from .perception.classifier import ModelError
from .perception.encoded import IMAGE_SUFFIXES, ImageError, decode
from .perception.output import draw_faces, frame_message
from .perception.pipeline import Pipeline, PipelineConfig
from .perception.quiet import captured_stderr, pass_on

_PROG = "wscfer-infer"
# Video files a folder may hold (a folder is read for its images only).
_VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# Codecs for --annotate videos, preferred first: H.264 plays everywhere, but
# the OpenCV wheel installed here (4.11) has no H.264 encoder; MPEG-4 part 2 it has.
_VIDEO_CODECS = (("avc1", "H.264"), ("mp4v", "MPEG-4 part 2"))


class InputError(Exception):
    """The input cannot be read at all; the message says why in one line."""


@dataclasses.dataclass
class _Frame:
    image: np.ndarray      # BGR, as OpenCV reads it
    name: str              # file name; the annotated copy of an image gets it too
    index: int | None      # position in a video or webcam stream, None for still images
    stamp_ns: int


class _Source:
    """Where the frames come from, and what goes wrong while reading them."""

    def __init__(self, spec: str):
        path = Path(spec)
        self.path = path
        self.skipped = Counter()   # reason -> image files skipped
        self.is_webcam = self.is_folder = False
        self.name = path.name
        self.total: int | None = None
        self._images: list[Path] = []
        self._capture = None
        if spec.isdigit() and not path.exists():
            self.is_webcam, self.name = True, f"camera{spec}"
            self._capture = _open_capture(int(spec), f"cannot open webcam {spec}")
        elif path.is_dir():
            self.is_folder = True
            self._images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                videos = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _VIDEO_SUFFIXES)
                raise InputError(f"no images were found in {path} (a folder is read for its images; "
                                 f"give each video as the input: {', '.join(videos)})" if videos else
                                 f"no images or videos were found in {path}")
            self.total = len(self._images)
        elif not path.is_file():
            raise InputError(f"no such file, folder or webcam: {spec}")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            self._images = [path]
            self.total = 1
        elif path.stat().st_size == 0:
            raise InputError(f"{spec}: the file is empty")
        else:
            self._capture = _open_capture(
                str(path), f"cannot read {spec}: not a video OpenCV can open, and not an image "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            self.total = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        # A video or webcam is one sequence: ids and smoothing carry across its frames.
        self.is_stream = self._capture is not None
        if self.is_stream:
            self.fps = self._capture.get(cv2.CAP_PROP_FPS)
            self.frame_size = (int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                               int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def frames(self) -> Iterator[_Frame]:
        if self._capture is None:
            yield from self._image_frames()
        else:
            yield from self._stream_frames()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()

    def _image_frames(self) -> Iterator[_Frame]:
        for path in self._images:
            try:
                image = _read_image(path)
            except ImageError as error:
                self.skipped[error.reason] += 1
                tqdm.write(f"{_PROG}: skipped {path}: {error}", file=sys.stderr)
                continue
            yield _Frame(image, path.name, None, 0)

    def _stream_frames(self) -> Iterator[_Frame]:
        index = 0
        while True:
            ok, image = self._capture.read()
            if not ok:
                return
            if self.is_webcam:
                stamp_ns = time.time_ns()
            else:
                stamp_ns = round(self._capture.get(cv2.CAP_PROP_POS_MSEC) * 1e6)
            yield _Frame(image, self.name, index, stamp_ns)
            index += 1


def _open_capture(source, failure: str) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture; InputError(``failure``) instead of OpenCV's and FFmpeg's messages."""
    with captured_stderr() as chatter:
        capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise InputError(failure)
    pass_on(chatter)
    return capture


def _read_image(path: Path) -> np.ndarray:
    """The BGR picture in an image file; ImageError (with a reason) when it cannot or must not be decoded."""
    try:
        encoded = np.fromfile(path, np.uint8)
    except OSError as error:
        raise ImageError(f"cannot read the file ({error.strerror})", "unreadable") from None
    if encoded.size == 0:
        raise ImageError("the file is empty", "empty")
    return decode(encoded, cv2.IMREAD_COLOR, "an image")


class _Annotator:
    """Writes annotated frames: one image, a folder of images, or an mp4 video."""

    def __init__(self, target: Path, source: _Source):
        if target.resolve() == source.path.resolve():
            raise ValueError(f"--annotate {target} would overwrite the input")
        self.target = target
        self._source = source
        self._writer = None
        self.codec = None   # of a video: what the user is told
        if source.is_folder:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_stream:
            fps = source.fps if source.fps > 0 else 30.0
            for fourcc, codec in _VIDEO_CODECS:
                # A codec this OpenCV build cannot encode only fails to open, with
                # several lines from OpenCV and FFmpeg that the note below replaces.
                with captured_stderr():
                    self._writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), fps,
                                                   source.frame_size)
                if self._writer.isOpened():
                    self.codec = f"{codec} ({fourcc})"
                    break
            else:
                raise ValueError(f"cannot write a video to {target}")
        elif not cv2.haveImageWriter(str(target)):
            raise ValueError(f"cannot write an image to {target} (unknown image format)")

    def write(self, frame: _Frame, annotated: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.write(annotated)
            return
        path = self.target / frame.name if self._source.is_folder else self.target
        if not cv2.imwrite(str(path), annotated):
            tqdm.write(f"{_PROG}: warning: cannot write {path}", file=sys.stderr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


_METAVARS = {str: "PATH", int: "N", float: "X"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Facial expressions of the faces in images, videos or a webcam, "
                                "as JSON lines in the schema of the ROS 'expressions' topic.")
    parser.add_argument("input", help="image file, folder of images, video file, or webcam index (e.g. 0)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the JSON lines here instead of stdout")
    parser.add_argument("--annotate", metavar="PATH", type=Path,
                        help="write annotated output: an image for an image, a folder for a folder, "
                             "an mp4 video for a video or webcam")
    parser.add_argument("--max-frames", type=int, default=0, metavar="N",
                        help="stop after N frames or images (0 = all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    pipeline = parser.add_argument_group(
        "pipeline (the node's parameters: --NAME-WITH-DASHES for NAME_WITH_UNDERSCORES; "
        "--model and --min-confidence, the older names, still work)")
    for setting in dataclasses.fields(PipelineConfig):
        flags = ["--" + setting.name.replace("_", "-"), *setting.metadata.get("aliases", ())]
        description = setting.metadata["description"]
        if isinstance(setting.default, bool):
            pipeline.add_argument(*flags, dest=setting.name, action="store_true", help=description)
        else:
            pipeline.add_argument(*flags, dest=setting.name, type=type(setting.default), default=setting.default,
                                  choices=setting.metadata.get("choices"),
                                  metavar=None if "choices" in setting.metadata else _METAVARS[type(setting.default)],
                                  help=f"{description} (default: %(default)r)")
    return parser


def _config(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(**{setting.name: getattr(args, setting.name)
                             for setting in dataclasses.fields(PipelineConfig)})


def _error(message: str, status: int) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline over the input; the exit status (see the module docstring).

    Only a malformed command line (an unknown flag, a missing input
    argument) gets argparse's usage text; every other problem is one line.
    """
    args = build_parser().parse_args(argv)
    if args.max_frames < 0:
        return _error(f"--max-frames must be >= 0, got {args.max_frames}", 2)
    try:
        source = _Source(args.input)
    except InputError as error:
        return _error(str(error), 1)

    with contextlib.ExitStack() as stack:
        stack.callback(source.close)
        try:
            pipeline = Pipeline(_config(args))
        except ModelError as error:
            return _error(str(error), 1)
        except ValueError as error:
            return _error(str(error), 2)
        stack.callback(pipeline.close)
        classifier = pipeline.classifier
        print(f"{_PROG}: model {classifier.model_path}, {classifier.provider_note}", file=sys.stderr)
        if classifier.provider_warning:
            print(f"{_PROG}: warning: {classifier.provider_warning}", file=sys.stderr)

        try:
            annotator = _Annotator(args.annotate, source) if args.annotate else None
        except ValueError as error:
            return _error(str(error), 2)
        if annotator is not None:
            stack.callback(annotator.close)
            if annotator.codec:
                missing = "" if annotator.codec.startswith("H.264") else \
                    "; this OpenCV build cannot encode H.264"
                print(f"{_PROG}: annotated video {args.annotate}: {annotator.codec}{missing}",
                      file=sys.stderr)
        try:
            output = stack.enter_context(open(args.output, "w")) if args.output else sys.stdout
        except OSError as error:
            return _error(f"cannot write {args.output}: {error.strerror}", 1)

        total = source.total
        if args.max_frames and total is not None:
            total = min(total, args.max_frames)
        progress = stack.enter_context(tqdm(
            total=total, unit="frame" if source.is_stream else "image", file=sys.stderr,
            disable=args.no_progress or source.is_webcam))
        processed = faces = failed = 0
        try:
            for frame in source.frames():
                frame_id = frame.name if frame.index is None else f"{frame.name}#{frame.index}"
                if not source.is_stream:
                    pipeline.reset()  # unrelated photos: no ids or smoothing across them
                started = time.perf_counter()
                try:
                    result = pipeline.process(frame.image, "bgr")
                except Exception as error:   # a library failing on one frame must not end the run
                    failed += 1
                    tqdm.write(f"{_PROG}: processing {frame_id} failed: {type(error).__name__}: {error}",
                               file=sys.stderr)
                    continue
                latency_ms = (time.perf_counter() - started) * 1000.0
                height, width = frame.image.shape[:2]
                message = frame_message(result, stamp_sec=frame.stamp_ns // 1_000_000_000,
                                        stamp_nanosec=frame.stamp_ns % 1_000_000_000,
                                        frame_id=frame_id, width=width, height=height,
                                        latency_ms=latency_ms)
                if frame.index is not None:
                    message["frame_index"] = frame.index
                output.write(json.dumps(message) + "\n")
                if source.is_webcam:
                    output.flush()
                if annotator is not None:
                    annotator.write(frame, draw_faces(frame.image, result))
                processed += 1
                faces += len(result.faces)
                progress.update()
                if processed == args.max_frames:
                    break
        except KeyboardInterrupt:
            pass

    print(f"{_PROG}: {processed} frame(s), {faces} face(s){_summary(source.skipped, failed)}",
          file=sys.stderr)
    if processed == 0:
        return _error(f"no frame of {args.input} could be processed", 1)
    return 0


def _summary(skipped: Counter, failed: int) -> str:
    """What was left out, for the last line: '; 2 file(s) skipped (1 too large, 1 undecodable)'."""
    parts = []
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
        parts.append(f"{sum(skipped.values())} file(s) skipped ({reasons})")
    if failed:
        parts.append(f"{failed} frame(s) failed")
    return "".join(f"; {part}" for part in parts)


if __name__ == "__main__":
    sys.exit(main())
