"""``wscfer-infer``: the expression pipeline on files or a webcam, without ROS.

Reads an image, a folder of images, a video file or a webcam (its index,
e.g. ``0``), runs the same :class:`~wscfer_ros.pipeline.Pipeline` as the node
and writes one JSON object per frame, in the schema of the ``expressions``
topic, to stdout or ``--output``.  ``--annotate`` writes the frames with the
faces drawn: an image, a folder of images or an mp4 video, following the input.

    wscfer-infer photo.jpg
    wscfer-infer clip.mp4 --output clip.jsonl --annotate clip_faces.mp4
"""
import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from .classifier import ModelError
from .output import draw_faces, frame_message
from .pipeline import Pipeline, PipelineConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_PROG = "wscfer-infer"


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
        self.unreadable = 0
        self.is_webcam = self.is_folder = False
        self.name = path.name
        self.total: int | None = None
        self._images: list[Path] = []
        self._capture = None
        if spec.isdigit() and not path.exists():
            self.is_webcam, self.name = True, f"camera{spec}"
            self._capture = cv2.VideoCapture(int(spec))
            if not self._capture.isOpened():
                raise FileNotFoundError(f"cannot open webcam {spec}")
        elif path.is_dir():
            self.is_folder = True
            self._images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.total = len(self._images)
        elif not path.is_file():
            raise FileNotFoundError(f"no such file, folder or webcam: {spec}")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            self._images = [path]
            self.total = 1
        else:
            self._capture = cv2.VideoCapture(str(path))
            if not self._capture.isOpened():
                raise FileNotFoundError(f"cannot open video {spec}")
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
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.unreadable += 1
                tqdm.write(f"{_PROG}: warning: cannot read image {path}, skipped", file=sys.stderr)
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


class _Annotator:
    """Writes annotated frames: one image, a folder of images, or an mp4 video."""

    def __init__(self, target: Path, source: _Source):
        if target.resolve() == source.path.resolve():
            raise ValueError(f"--annotate {target} would overwrite the input")
        self.target = target
        self._source = source
        self._writer = None
        if source.is_folder:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_stream:
            fps = source.fps if source.fps > 0 else 30.0
            self._writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                           source.frame_size)
            if not self._writer.isOpened():
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

    pipeline = parser.add_argument_group("pipeline (the settings of the node's parameters)")
    for setting in dataclasses.fields(PipelineConfig):
        flag = setting.metadata.get("flag", "--" + setting.name.replace("_", "-"))
        description = setting.metadata["description"]
        if isinstance(setting.default, bool):
            pipeline.add_argument(flag, dest=setting.name, action="store_true", help=description)
        else:
            pipeline.add_argument(flag, dest=setting.name, type=type(setting.default), default=setting.default,
                                  choices=setting.metadata.get("choices"),
                                  metavar=None if "choices" in setting.metadata else _METAVARS[type(setting.default)],
                                  help=f"{description} (default: %(default)r)")
    return parser


def _config(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(**{setting.name: getattr(args, setting.name)
                             for setting in dataclasses.fields(PipelineConfig)})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_frames < 0:
        parser.error("--max-frames must be >= 0")
    try:
        config = _config(args)
        source = _Source(args.input)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    with contextlib.ExitStack() as stack:
        stack.callback(source.close)
        try:
            pipeline = Pipeline(config)
        except ModelError as error:
            print(f"{_PROG}: error: {error}", file=sys.stderr)
            return 1
        except ValueError as error:
            parser.error(str(error))
        stack.callback(pipeline.close)
        classifier = pipeline.classifier
        print(f"{_PROG}: model {classifier.model_path}, {classifier.provider_note}", file=sys.stderr)
        if classifier.provider_warning:
            print(f"{_PROG}: warning: {classifier.provider_warning}", file=sys.stderr)

        try:
            annotator = _Annotator(args.annotate, source) if args.annotate else None
        except ValueError as error:
            parser.error(str(error))
        if annotator is not None:
            stack.callback(annotator.close)
        output = stack.enter_context(open(args.output, "w")) if args.output else sys.stdout

        total = source.total
        if args.max_frames and total is not None:
            total = min(total, args.max_frames)
        progress = stack.enter_context(tqdm(
            total=total, unit="frame" if source.is_stream else "image", file=sys.stderr,
            disable=args.no_progress or source.is_webcam))
        processed = faces = 0
        try:
            for frame in source.frames():
                if not source.is_stream:
                    pipeline.reset()  # unrelated photos: no ids or smoothing across them
                started = time.perf_counter()
                result = pipeline.process(frame.image, "bgr")
                latency_ms = (time.perf_counter() - started) * 1000.0
                height, width = frame.image.shape[:2]
                frame_id = frame.name if frame.index is None else f"{frame.name}#{frame.index}"
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

    skipped = f", {source.unreadable} unreadable file(s) skipped" if source.unreadable else ""
    print(f"{_PROG}: {processed} frame(s), {faces} face(s){skipped}", file=sys.stderr)
    if processed == 0:
        print(f"{_PROG}: error: no frame could be read from {args.input}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
