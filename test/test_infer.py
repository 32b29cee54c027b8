"""wscfer-infer on a real photo, a folder and a few frames of a real video."""
import dataclasses
import json

import cv2
import pytest

from conftest import FER_CLASSES, write_tiny_model
from wscfer_ros.infer import _config, build_parser, main
from wscfer_ros.pipeline import PipelineConfig

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
    code = main([str(media_dir / "obama-720p.jpg"), "--model", model_path, "--annotate", str(annotated)])
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
    code = main([str(media_dir / "woman2.mp4"), "--model", model_path, "--max-frames", "4",
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

    code = main([str(folder), "--model", model_path, "--annotate", str(annotated)])
    captured = capsys.readouterr()
    assert code == 0
    messages = read_lines(captured.out)
    assert [m["frame_id"] for m in messages] == ["group_2008_004176.jpg", "two_people.jpg"]
    assert len(messages[1]["faces"]) == 2
    assert "broken.jpg" in captured.err and "1 unreadable" in captured.err
    assert sorted(p.name for p in annotated.iterdir()) == ["group_2008_004176.jpg", "two_people.jpg"]


def test_bad_model_exits_1_with_one_message(media_dir, tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main([str(media_dir / "obama-720p.jpg"), "--model", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(missing) in errors[0]


def test_unreadable_single_image_exits_1(model_path, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    assert main([str(broken), "--model", model_path]) == 1
    assert "broken.png" in capsys.readouterr().err


def test_missing_input_is_a_usage_error(model_path, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nothing_here.jpg"), "--model", model_path])
    assert exit_info.value.code == 2


def test_pipeline_flags_reach_the_pipeline(model_path, media_dir, capsys):
    """--max-faces limits the faces of the 7-face group photo."""
    assert main([str(media_dir / "group_2008_007676.jpg"), "--model", model_path, "--max-faces", "2",
                 "--detector", "full", "--align", "--smoothing", "0", "--no-progress"]) == 0
    (message,) = read_lines(capsys.readouterr().out)
    assert len(message["faces"]) == 2


def test_every_pipeline_setting_has_a_flag_with_its_description():
    """Each PipelineConfig field, set to a value other than its default on the command line, reaches the config."""
    parser = build_parser()
    flags, wanted = [], {}
    for setting in dataclasses.fields(PipelineConfig):
        flag = setting.metadata.get("flag", "--" + setting.name.replace("_", "-"))
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
    with pytest.raises(SystemExit) as exit_info:
        main([str(photo), "--model", model_path, "--annotate", str(photo)])
    assert exit_info.value.code == 2
    assert photo.read_bytes() == (media_dir / "obama-720p.jpg").read_bytes()
