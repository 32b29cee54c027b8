"""wscfer_node in its own process, driven over ROS with frames of a real video.

The node runs the tiny model of conftest (the detector is the real MediaPipe
one), so faces, boxes, stamps and ids are real; the labels are not meaningful.
"""
import array
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import onnx
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from sensor_msgs.msg import CompressedImage, Image

from conftest import FER_CLASSES
from ros_helpers import (REPLY_TIMEOUT_S, REPO_ROOT, STARTUP_TIMEOUT_S, TEST_PARAMETERS,
                         LifecycleManager, NodeProcess, NodeUnderTest, image_message, jpeg_message)

PARAMS_FILE = REPO_ROOT / "config" / "wscfer.yaml"
BURST_FRAMES = 60


@pytest.fixture(scope="module")
def frames(media_dir) -> list[np.ndarray]:
    """Consecutive frames of one woman talking to the camera (one face in each)."""
    capture = cv2.VideoCapture(str(media_dir / "woman2.mp4"))
    decoded = [capture.read()[1] for _ in range(BURST_FRAMES)]
    capture.release()
    assert all(frame is not None for frame in decoded)
    return decoded


def start_node(ros_dir, name: str, *ros_args: str) -> NodeProcess:
    return NodeProcess("node", list(ros_args), ros_dir / f"{name}.log")


@pytest.fixture(scope="module")
def raw_node(ros_dir, model_file):
    """The node on raw images with the shipped parameters file, debug image on, autostarted."""
    process = start_node(ros_dir, "raw_node", "--params-file", str(PARAMS_FILE),
                         "-p", f"model_path:={model_file}",
                         "-p", "publish_debug_image:=true", *TEST_PARAMETERS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def compressed_node(ros_dir, model_file):
    """The node on compressed images, in its own namespace."""
    process = start_node(ros_dir, "compressed_node", "-r", "__ns:=/compressed",
                         "-p", f"model_path:={model_file}", "-p", "input:=compressed",
                         *TEST_PARAMETERS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def lifecycle_node(ros_dir, model_file):
    """The node waiting for a lifecycle manager (autostart false), in its own namespace."""
    process = start_node(ros_dir, "lifecycle_node", "-r", "__ns:=/managed",
                         "-p", f"model_path:={model_file}", "-p", "autostart:=false",
                         *TEST_PARAMETERS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def raw(client, raw_node) -> NodeUnderTest:
    under_test = NodeUnderTest(client, raw_node, debug_image=True)
    under_test.wait_until_subscribed()
    return under_test


def test_expressions_carry_the_input_stamps_and_stable_ids(raw, frames):
    answers = []
    for index, frame in enumerate(frames[:10]):
        msg = image_message(frame)
        msg.header.stamp.nanosec = 5000 + index
        answers.append(raw.send_and_wait(msg, stamp=1000 + index))

    height, width = frames[0].shape[:2]
    for index, answer in enumerate(answers):
        assert answer["schema"] == 1
        assert answer["stamp"] == {"sec": 1000 + index, "nanosec": 5000 + index}
        assert answer["frame_id"] == "test_camera"
        assert (answer["width"], answer["height"]) == (width, height)
        assert answer["latency_ms"] > 0
        assert len(answer["faces"]) == 1, answer
        face = answer["faces"][0]
        assert face["label"] in FER_CLASSES
        assert set(face["probabilities"]) == set(FER_CLASSES)
        x, y, w, h = face["box"]
        assert 0 <= x < x + w <= width and 0 <= y < y + h <= height
    assert len({answer["faces"][0]["id"] for answer in answers}) == 1, "the face changed id"
    raw.wait_until(lambda: len(raw.labels) >= len(answers), "a label per frame with a face")
    assert [label.data for label in raw.labels] == [a["faces"][0]["label"] for a in answers]


def test_debug_image_shows_the_boxes(raw, frames):
    raw.send_and_wait(image_message(frames[20]), stamp=2000)
    raw.wait_until(lambda: any(m.header.stamp.sec == 2000 for m in raw.debug_images),
                   "the debug image of frame 2000")
    debug = next(m for m in raw.debug_images if m.header.stamp.sec == 2000)
    assert (debug.encoding, debug.height, debug.width) == ("bgr8", *frames[20].shape[:2])
    drawn = np.frombuffer(debug.data, np.uint8).reshape(frames[20].shape)
    changed = np.any(drawn != frames[20], axis=2)
    x, y, w, h = raw.answer_to(2000)["faces"][0]["box"]
    assert changed[y, x:x + w].all(), "the box's top edge is drawn"
    assert not changed[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].any(), \
        "the face inside the box is left as it was"


def test_frames_sent_faster_than_processed_are_skipped_not_queued(raw, frames):
    before = raw.wait_until_accounted()
    answered_before = len(raw.expressions)
    messages = [image_message(frame) for frame in frames]

    for index, msg in enumerate(messages):
        raw.send(msg, stamp=3000 + index)
    after = raw.wait_until_accounted()

    processed = after["processed"] - before["processed"]
    skipped = after["skipped"] - before["skipped"]
    assert after["rejected"] == before["rejected"] and after["failed"] == before["failed"]
    assert skipped > 0 and processed + skipped == BURST_FRAMES
    raw.wait_until(lambda: len(raw.expressions) == answered_before + processed,
                   "one answer per processed frame")
    burst_answers = raw.answers()[answered_before:]
    stamps = [answer["stamp"]["sec"] for answer in burst_answers]
    assert stamps == sorted(stamps), "frames are answered in order"
    assert stamps[-1] == 3000 + BURST_FRAMES - 1, "the newest frame is always processed"


def bad_images(frame):
    unknown = image_message(frame)
    unknown.encoding = "yuv422"
    short = image_message(frame)
    short.data = array.array("B", bytes(short.step * short.height - 1))
    empty = Image(encoding="bgr8")
    sixteen_bit = Image(height=2, width=2, encoding="mono16", step=4,
                        data=array.array("B", bytes(8)))
    return {"unknown encoding": unknown, "data shorter than step*height": short,
            "0x0 image": empty, "16-bit image": sixteen_bit}


def test_bad_images_are_rejected_and_the_next_good_frame_answered(raw, frames):
    for index, (case, bad) in enumerate(bad_images(frames[0]).items()):
        before = raw.wait_until_accounted()
        raw.send(bad, stamp=4000 + 2 * index)
        rejected = raw.wait_until_accounted()
        answer = raw.send_and_wait(image_message(frames[index]), stamp=4001 + 2 * index)

        assert rejected["rejected"] - before["rejected"] == 1, case
        assert len(answer["faces"]) == 1, case
        assert raw.answer_to(4000 + 2 * index) is None, f"{case} got an answer"
    # Warnings are throttled: the first one gives the reason and the count.
    assert "rejected a frame (1 rejected so far): unsupported image encoding 'yuv422'" \
        in raw.process.output()


def test_random_bytes_as_jpeg_are_rejected_then_a_jpeg_is_answered(client, compressed_node, frames):
    node = NodeUnderTest(client, compressed_node, namespace="/compressed", compressed=True)
    node.wait_until_subscribed()
    garbage = CompressedImage(format="jpeg",
                              data=array.array("B", np.random.default_rng(0).bytes(5000)))

    node.send(garbage, stamp=5000)
    counts = node.wait_until_accounted()
    answer = node.send_and_wait(jpeg_message(frames[0]), stamp=5001)

    assert counts["rejected"] == 1
    assert node.answer_to(5000) is None
    assert (answer["width"], answer["height"]) == (frames[0].shape[1], frames[0].shape[0])
    assert len(answer["faces"]) == 1
    assert "cannot decode 5000 bytes as jpeg" in compressed_node.output()


def test_lifecycle_transitions(client, lifecycle_node, frames):
    node = NodeUnderTest(client, lifecycle_node, namespace="/managed")
    manager = LifecycleManager(client, lifecycle_node, node.fqn)

    def transition(transition_id: int, expected_state: int) -> None:
        assert manager.change(transition_id)
        assert manager.state() == expected_state

    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert node.input.get_subscription_count() == 0

    transition(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)
    node.wait_until(lambda: node.status() == (DiagnosticStatus.OK, "inactive"),
                    "diagnostics say inactive")
    assert node.input.get_subscription_count() == 0

    transition(Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE)
    node.wait_until_subscribed()
    assert len(node.send_and_wait(image_message(frames[0]), stamp=6000)["faces"]) == 1

    transition(Transition.TRANSITION_DEACTIVATE, State.PRIMARY_STATE_INACTIVE)
    node.wait_until(lambda: node.input.get_subscription_count() == 0,
                    "the inactive node drops its subscription")

    transition(Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE)
    node.wait_until_subscribed()
    assert len(node.send_and_wait(image_message(frames[1]), stamp=6001)["faces"]) == 1

    transition(Transition.TRANSITION_DEACTIVATE, State.PRIMARY_STATE_INACTIVE)
    transition(Transition.TRANSITION_CLEANUP, State.PRIMARY_STATE_UNCONFIGURED)
    transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, State.PRIMARY_STATE_FINALIZED)
    manager.close()


def test_camera_silence_warns_and_frames_coming_back_clear_it(client, ros_dir, model_file, frames):
    process = start_node(ros_dir, "idle_node", "-r", "__ns:=/idle",
                         "-p", f"model_path:={model_file}", "-p", "providers:=cpu",
                         "-p", "no_image_warn_after:=0.5", *TEST_PARAMETERS)
    node = NodeUnderTest(client, process, namespace="/idle")
    try:
        node.wait_until(lambda: node.status()[0] == DiagnosticStatus.WARN, "diagnostics turn WARN",
                        STARTUP_TIMEOUT_S)
        assert node.status()[1].startswith("no image received on /idle/image for ")
        assert node.counts()["provider"] == "CPUExecutionProvider"
        assert node.counts()["model"] == str(model_file)

        node.wait_until_subscribed()
        assert len(node.send_and_wait(image_message(frames[0]), stamp=7000)["faces"]) == 1
        node.wait_until(lambda: node.status() == (DiagnosticStatus.OK, "processing the newest frames"),
                        "diagnostics back to OK once frames arrive")

        # The camera stops again: WARN after no_image_warn_after (0.5 s), reported at the
        # next diagnostics (every 0.2 s), with a margin for a busy machine.
        stopped = time.monotonic()
        node.wait_until(lambda: node.status()[0] == DiagnosticStatus.WARN, "WARN again")
        assert time.monotonic() - stopped < 0.5 + 0.2 + 1.5
    finally:
        assert process.stop(signal.SIGTERM) == 0
    assert "Traceback" not in process.output()


def pickle_that_writes(marker):
    """A pickle that creates ``marker`` when unpickled: a model file no loader may unpickle."""
    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")
    return pickle.dumps(Payload())


def bad_model_files(directory, model_file):
    """Model files a user can get wrong, each written to ``directory``."""
    (directory / "corrupt.onnx").write_bytes(b"not an onnx model")
    whole = model_file.read_bytes()
    (directory / "truncated.onnx").write_bytes(whole[:len(whole) // 2])
    without_metadata = onnx.load(str(model_file))
    del without_metadata.metadata_props[:]
    onnx.save(without_metadata, str(directory / "no_metadata.onnx"))
    (directory / "model.pkl").write_bytes(pickle_that_writes(directory / "unpickled"))


@pytest.mark.parametrize("case, parameter, expected", [
    ("missing model", "model_path:={dir}/missing.onnx", "model file not found: {dir}/missing.onnx"),
    ("corrupt model", "model_path:={dir}/corrupt.onnx", "{dir}/corrupt.onnx: not a valid ONNX model"),
    ("truncated model", "model_path:={dir}/truncated.onnx",
     "{dir}/truncated.onnx: not a valid ONNX model"),
    ("model without metadata", "model_path:={dir}/no_metadata.onnx",
     "{dir}/no_metadata.onnx: metadata key 'class_names' is missing"),
    ("pickled model", "model_path:={dir}/model.pkl", "{dir}/model.pkl: not a valid ONNX model"),
    ("unknown input", "input:=video",
     "parameter input must be one of raw, compressed, ros4hri, got 'video'"),
    ("unknown qos", "qos:=fast", "parameter qos must be one of sensor_data, reliable, got 'fast'"),
    ("unknown provider", "providers:=tensorrt",
     "providers must be one of auto, cpu, cuda, got 'tensorrt'"),
    ("unknown detector", "detector:=far", "detector must be one of"),
    ("negative crop scale", "crop_scale:=-1.2", "crop_scale must be >= 0"),
    ("negative face size", "min_face_size:=-4", "min_face_size must be >= 0, got -4"),
    ("no faces", "max_faces:=0", "max_faces must be >= 1, got 0"),
    ("confidence above 1", "min_detection_confidence:=1.5", "min_confidence must be in [0, 1]"),
    ("smoothing of 1", "smoothing:=1.0", "smoothing must be in [0, 1), got 1.0"),
    ("zero queue", "queue_depth:=0", "parameter queue_depth must be positive, got 0"),
    ("wrong type", "max_faces:=2.5",
     "'max_faces' to '2.5' of type 'DOUBLE', expecting type 'INTEGER'"),
])
def test_bad_configuration_exits_1_with_one_clear_error(ros_dir, model_file, case, parameter,
                                                       expected):
    bad_model_files(ros_dir, model_file)
    process = start_node(ros_dir, case.replace(" ", "_"), "-p", f"model_path:={model_file}",
                         "-p", parameter.format(dir=ros_dir))
    assert process.wait() == 1
    errors = [line for line in process.output().splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and expected.format(dir=ros_dir) in errors[0], process.output()
    assert "Traceback" not in process.output()
    assert not (ros_dir / "unpickled").exists(), "the node unpickled a model file"


def test_sigint_stops_the_node_cleanly(raw):
    assert raw.process.stop(signal.SIGINT) == 0
    assert "Traceback" not in raw.process.output()


def test_run_command_prints_the_expressions_of_the_astronaut(ros_dir):
    """`make run` (python -m wscfer_ros.demo): camera, node on the shipped model, one line per message."""
    with open(ros_dir / "demo.log", "w") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "wscfer_ros.demo", "--source", "astronaut",
             "--duration", str(STARTUP_TIMEOUT_S)],
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        started = time.monotonic()
        # The demo ends by itself after --duration: reading stops there at the latest.
        printed = []
        for line in demo.stdout:
            printed.append(line)
            if " ms  face " in line:
                break
        waited_s = time.monotonic() - started
        demo.send_signal(signal.SIGINT)
        try:
            exit_status = demo.wait(REPLY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)     # the demo, its camera and its node
            demo.wait()
            exit_status = f"still running {REPLY_TIMEOUT_S:.0f} s after SIGINT"

    output = (ros_dir / "demo.log").read_text()
    seen = f"after {waited_s:.1f} s, {len(printed)} lines printed, the last: {printed[-3:]}\n{output}"
    assert printed and " ms  face " in printed[-1], seen
    assert re.fullmatch(r" *\d+\.\d ms  face \d+ happy [01]\.\d\d box \[\d+, \d+, \d+, \d+\]\n",
                        printed[-1]), seen
    assert exit_status == 0 and "Traceback" not in output, seen
