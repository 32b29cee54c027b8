"""wscfer-infer on a real photo, a folder and a few frames of a real video, and on bad input."""
import dataclasses
import json
import subprocess
import sys

import cv2
import pytest

from conftest import FER_CLASSES, announcing, write_tiny_model
from wscfer_ros.perception.encoded import MAX_COMPRESSED_PIXELS
from wscfer_ros.infer import _config, build_parser, main
from wscfer_ros.perception.pipeline import PipelineConfig

MESSAGE_KEYS = {"schema", "stamp", "frame_id", "width", "height", "latency_ms", "faces"}
FACE_KEYS = {"id", "box", "detection_score", "label", "score", "probabilities"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx"))


def read_lines(text):
    messages = [json.loads(line) for line in text.splitlines()]
    for message in messages:
        assert MESSAGE_KEYS <= set(message)
        assert message["schema"] == 1
        for face in message["faces"]:
            assert set(face) == FACE_KEYS
            assert list(face["probabilities"]) == FER_CLASSES
    return messages


def test_single_image_to_stdout_with_annotation(model_path, media_dir, tmp_path, capsys):
    annotated = tmp_path / "annotated.png"
    code = main([str(media_dir / "obama-720p.jpg"), "--model-path", model_path, "--annotate", str(annotated)])
    assert code == 0
    (message,) = read_lines(capsys.readouterr().out)
    assert message["frame_id"] == "obama-720p.jpg"
    assert message["stamp"] == {"sec": 0, "nanosec": 0}
    assert (message["width"], message["height"]) == (1280, 720)
    assert len(message["faces"]) == 1
    assert "frame_index" not in message
    assert cv2.imread(str(annotated)).shape == (720, 1280, 3)


def test_video_frames_to_a_file(model_path, media_dir, tmp_path, capsys):
    output, annotated = tmp_path / "out.jsonl", tmp_path / "annotated.mp4"
    code = main([str(media_dir / "woman2.mp4"), "--model-path", model_path, "--max-frames", "4",
                 "--output", str(output), "--annotate", str(annotated), "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out == ""
    messages = read_lines(output.read_text())
    assert [m["frame_id"] for m in messages] == [f"woman2.mp4#{i}" for i in range(4)]
    assert [m["frame_index"] for m in messages] == [0, 1, 2, 3]
    # Stamps follow the video position: 29.97 frames per second.
    stamps_ms = [m["stamp"]["sec"] * 1e3 + m["stamp"]["nanosec"] / 1e6 for m in messages]
    assert stamps_ms == pytest.approx([i * 1000 / 29.97 for i in range(4)], abs=0.5)
    assert all(len(m["faces"]) == 1 for m in messages)
    assert len({m["faces"][0]["id"] for m in messages}) == 1  # one person, one id

    capture = cv2.VideoCapture(str(annotated))
    try:
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 4
        assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (596, 336)
    finally:
        capture.release()


def test_folder_skips_unreadable_files(model_path, media_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("two_people.jpg", "group_2008_004176.jpg"):
        (folder / name).symlink_to(media_dir / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image either, and not counted")
    annotated = tmp_path / "annotated"

    code = main([str(folder), "--model-path", model_path, "--annotate", str(annotated)])
    captured = capsys.readouterr()
    assert code == 0
    messages = read_lines(captured.out)
    assert [m["frame_id"] for m in messages] == ["group_2008_004176.jpg", "two_people.jpg"]
    assert len(messages[1]["faces"]) == 2
    assert f"wscfer-infer: skipped {folder / 'broken.jpg'}: cannot decode 10 bytes as an image" in captured.err
    assert "1 file(s) skipped (1 undecodable)" in captured.err
    assert sorted(p.name for p in annotated.iterdir()) == ["group_2008_004176.jpg", "two_people.jpg"]


def error_lines(err: str) -> list[str]:
    """The lines of stderr but the model note."""
    return [line for line in err.splitlines() if not line.startswith("wscfer-infer: model ")]


def test_files_announcing_huge_pictures_are_skipped_by_name_and_the_rest_processed(
        model_path, media_dir, tmp_path, capsys):
    """The node's "too large" rule, before decoding; a header of 60000x60000 used to abort the folder."""
    photo = media_dir / "two_people.jpg"
    png = cv2.imencode(".png", cv2.imread(str(media_dir / "obama-720p.jpg")))[1].tobytes()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_huge.png").write_bytes(announcing(png, 60000, 60000))
    (folder / "b_real.jpg").write_bytes(photo.read_bytes())
    (folder / "c_30000.png").write_bytes(announcing(png, 30000, 30000))
    (folder / "d_huge.jpg").write_bytes(announcing(photo.read_bytes(), 65000, 65000))
    (folder / "e_empty.png").write_bytes(b"")

    code = main([str(folder), "--model-path", model_path, "--no-progress"])
    captured = capsys.readouterr()

    assert code == 0
    (message,) = read_lines(captured.out)
    assert message["frame_id"] == "b_real.jpg" and len(message["faces"]) == 2
    lines = error_lines(captured.err)
    for name, side in (("a_huge.png", 60000), ("c_30000.png", 30000), ("d_huge.jpg", 65000)):
        assert (f"wscfer-infer: skipped {folder / name}: cannot decode {(folder / name).stat().st_size} "
                f"bytes as an image: it announces {side}x{side} pixels, more than the "
                f"{MAX_COMPRESSED_PIXELS} accepted") in lines
    assert f"wscfer-infer: skipped {folder / 'e_empty.png'}: the file is empty" in lines
    assert lines[-1] == "wscfer-infer: 1 frame(s), 2 face(s); 4 file(s) skipped (1 empty, 3 too large)"
    assert len(lines) == 5


def test_a_folder_where_nothing_can_be_processed_exits_1(model_path, media_dir, tmp_path, capsys):
    png = cv2.imencode(".png", cv2.imread(str(media_dir / "obama-720p.jpg")))[1].tobytes()
    (tmp_path / "huge.png").write_bytes(announcing(png, 60000, 60000))
    assert main([str(tmp_path), "--model-path", model_path]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines[-2:] == ["wscfer-infer: 0 frame(s), 0 face(s); 1 file(s) skipped (1 too large)",
                          f"wscfer-infer: error: no frame of {tmp_path} could be processed"]



def test_bad_model_exits_1_with_one_message(media_dir, tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main([str(media_dir / "obama-720p.jpg"), "--model-path", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(missing) in errors[0]


def test_unreadable_single_image_exits_1(model_path, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    assert main([str(broken), "--model-path", model_path]) == 1
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, message", [
    ("nothing_here.jpg", None, "no such file, folder or webcam: {path}"),
    ("notes.txt", b"not an image", "cannot read {path}: not a video OpenCV can open, and not an image"),
    ("empty.mp4", b"", "{path}: the file is empty"),
    ("broken.mp4", b"\0" * 4096, "cannot read {path}: not a video OpenCV can open, and not an image"),
    ("empty_folder", "folder", "no images or videos were found in {path}"),
])
def test_an_input_that_cannot_be_read_is_one_error_line(model_path, tmp_path, capfd, name, content,
                                                         message):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main([str(path), "--model-path", model_path]) == 1
    captured = capfd.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("wscfer-infer: error: " + message.format(path=path))


def test_a_folder_of_videos_says_to_give_them_one_by_one(model_path, media_dir, tmp_path, capsys):
    (tmp_path / "clip.mp4").symlink_to(media_dir / "woman2.mp4")
    assert main([str(tmp_path), "--model-path", model_path]) == 1
    assert capsys.readouterr().err == (f"wscfer-infer: error: no images were found in {tmp_path} (a folder "
                                       f"is read for its images; give each video as the input: clip.mp4)\n")


def test_a_bad_setting_is_one_error_line_and_exit_2(model_path, media_dir, capsys):
    assert main([str(media_dir / "obama-720p.jpg"), "--model-path", model_path, "--max-frames", "-1"]) == 2
    assert capsys.readouterr().err == "wscfer-infer: error: --max-frames must be >= 0, got -1\n"


def test_a_start_prints_only_its_own_lines(model_path, media_dir):
    """No MediaPipe (EGL, XNNPACK) or ONNX Runtime (CUDA) messages: the provider line and the summary."""
    run = subprocess.run([sys.executable, "-m", "wscfer_ros.infer", str(media_dir / "two_people.jpg"),
                          "--model-path", model_path, "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    model_line, summary = run.stderr.splitlines()
    assert model_line.startswith(f"wscfer-infer: model {model_path}, ")
    assert model_line.endswith("using CPUExecutionProvider") or model_line.endswith("using CUDAExecutionProvider")
    assert summary == "wscfer-infer: 1 frame(s), 2 face(s)"


def opencv_writes_h264(path) -> bool:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"avc1"), 10, (64, 48))
    try:
        return writer.isOpened()
    finally:
        writer.release()


def test_annotated_video_is_h264_where_opencv_can_and_says_which(model_path, media_dir, tmp_path, capfd):
    annotated = tmp_path / "annotated.mp4"
    expected = "avc1" if opencv_writes_h264(tmp_path / "probe.mp4") else "mp4v"
    capfd.readouterr()
    assert main([str(media_dir / "woman2.mp4"), "--model-path", model_path, "--max-frames", "2",
                 "--annotate", str(annotated), "--no-progress"]) == 0
    err = capfd.readouterr().err
    capture = cv2.VideoCapture(str(annotated))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    capture.release()

    # What FFmpeg reports when it reads the file back.
    assert fourcc.lower() in {"avc1": {"avc1", "h264"}, "mp4v": {"mp4v", "fmp4"}}[expected], fourcc
    (line,) = [line for line in err.splitlines() if "annotated video" in line]
    assert line.startswith(f"wscfer-infer: annotated video {annotated}: ") and f"({expected})" in line
    if expected == "mp4v":
        assert line.endswith("this OpenCV build cannot encode H.264")
    assert "Could not find encoder" not in err, "OpenCV's own failure lines are not shown"


def test_pipeline_flags_reach_the_pipeline(model_path, media_dir, capsys):
    """--max-faces limits the faces of the 7-face group photo."""
    assert main([str(media_dir / "group_2008_007676.jpg"), "--model-path", model_path, "--max-faces", "2",
                 "--detector", "full", "--align", "--smoothing", "0", "--no-progress"]) == 0
    (message,) = read_lines(capsys.readouterr().out)
    assert len(message["faces"]) == 2


def test_every_pipeline_setting_has_the_node_parameters_name_as_its_flag_with_its_description():
    """Each PipelineConfig field, set to a value other than its default on the command line, reaches the config."""
    parser = build_parser()
    flags, wanted = [], {}
    for setting in dataclasses.fields(PipelineConfig):
        flag = "--" + setting.name.replace("_", "-")
        default = setting.default
        if isinstance(default, bool):
            flags.append(flag)
            wanted[setting.name] = not default
            continue
        choices = setting.metadata.get("choices")
        value = [choice for choice in choices if choice != default][-1] if choices else \
            "model.onnx" if isinstance(default, str) else default + 3
        flags += [flag, str(value)]
        wanted[setting.name] = value
    assert _config(parser.parse_args(["photo.jpg", *flags])) == PipelineConfig(**wanted)
    assert _config(parser.parse_args(["photo.jpg"])) == PipelineConfig()
    help_text = " ".join(parser.format_help().split())
    for setting in dataclasses.fields(PipelineConfig):
        assert " ".join(setting.metadata["description"].split()) in help_text


def test_annotate_never_overwrites_the_input(model_path, media_dir, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((media_dir / "obama-720p.jpg").read_bytes())
    assert main([str(photo), "--model-path", model_path, "--annotate", str(photo)]) == 2
    assert photo.read_bytes() == (media_dir / "obama-720p.jpg").read_bytes()


def test_the_older_flag_names_still_work():
    args = build_parser().parse_args(["photo.jpg", "--model", "m.onnx", "--min-confidence", "0.7"])
    assert (_config(args).model_path, _config(args).min_detection_confidence) == ("m.onnx", 0.7)


def test_a_frame_the_pipeline_fails_on_is_one_line_and_the_run_goes_on(model_path, media_dir, monkeypatch,
                                                                       capsys):
    from wscfer_ros.perception.pipeline import Pipeline

    process = Pipeline.process
    calls = []

    def failing_once(self, image, color):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return process(self, image, color)
    monkeypatch.setattr(Pipeline, "process", failing_once)
    assert main([str(media_dir / "woman2.mp4"), "--model-path", model_path, "--max-frames", "3",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert [m["frame_index"] for m in read_lines(captured.out)] == [0, 2, 3]
    lines = error_lines(captured.err)
    assert lines == ["wscfer-infer: processing woman2.mp4#1 failed: RuntimeError: injected failure",
                     "wscfer-infer: 3 frame(s), 3 face(s); 1 frame(s) failed"]
