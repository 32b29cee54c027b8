"""wscfer_camera: the frame sources, and the published images in a real ROS process."""
import signal

import cv2
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ros_helpers import STARTUP_TIMEOUT_S, NodeProcess, RosClient, isolated_ros
from wscfer_ros.camera import SourceError, open_source, output_size
from wscfer_ros.messages import image_to_array


def test_folder_is_read_in_name_order_and_loops(tmp_path):
    first, second = np.zeros((4, 6, 3), np.uint8), np.full((4, 6, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "b.png"), second)
    cv2.imwrite(str(tmp_path / "a.png"), first)
    (tmp_path / "notes.txt").write_text("not an image")

    frames = open_source(str(tmp_path), loop=True)
    values = [int(next(frames)[0, 0, 0]) for _ in range(5)]

    assert values == [0, 200, 0, 200, 0]
    assert len(list(open_source(str(tmp_path), loop=False))) == 2


def test_video_frames_without_loop_end_with_the_file(media_dir, tmp_path):
    capture = cv2.VideoCapture(str(media_dir / "woman2.mp4"))
    writer = cv2.VideoWriter(str(tmp_path / "short.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                             (596, 336))
    for _ in range(3):
        writer.write(capture.read()[1])
    writer.release()
    capture.release()

    frames = list(open_source(str(tmp_path / "short.avi"), loop=False))

    assert [frame.shape for frame in frames] == [(336, 596, 3)] * 3


def test_astronaut_is_a_bgr_photo():
    frame = next(open_source("astronaut", loop=False))
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("source, message", [
    ("/no/such/file.mp4", "is not a webcam index, 'astronaut', or an existing file or folder"),
    ("{empty}", "no images"),
])
def test_bad_sources_are_named(tmp_path, source, message):
    source = source.format(empty=tmp_path)
    with pytest.raises(SourceError, match=message) as error:
        open_source(source, loop=True)
    assert source in str(error.value)


@pytest.mark.parametrize("width, height, expected", [
    (0, 0, (1126, 661)), (320, 0, (320, 188)), (0, 100, (170, 100)), (64, 48, (64, 48)),
])
def test_output_size(width, height, expected):
    assert output_size((661, 1126, 3), width, height) == expected


@pytest.fixture
def ros_dir(tmp_path):
    with isolated_ros(tmp_path / "log"):
        yield tmp_path


def test_publishes_an_image_file_at_a_rate(ros_dir, media_dir):
    photo = media_dir / "two_people.jpg"
    expected = cv2.resize(cv2.imread(str(photo)), (320, 188), interpolation=cv2.INTER_AREA)
    client = RosClient("camera_test_client")
    _, received = client.collect(Image, "image", qos_profile_sensor_data)
    camera = NodeProcess("camera", ["-p", f"source:={photo}", "-p", "rate:=20.0",
                                    "-p", "width:=320", "-p", "frame_id:=test_frame"],
                         ros_dir / "camera.log")
    try:
        client.spin_until(lambda: len(received) >= 5, "five frames from the camera",
                          STARTUP_TIMEOUT_S, processes=(camera,))
    finally:
        client.close()
        exit_status = camera.stop(signal.SIGINT)

    assert exit_status == 0
    stamps = [message.header.stamp.sec * 10**9 + message.header.stamp.nanosec
              for message in received]
    assert stamps == sorted(set(stamps))
    for message in received:
        assert message.header.frame_id == "test_frame"
        image, color = image_to_array(message)
        assert color == "bgr"
        np.testing.assert_array_equal(image, expected)
    assert "published" in camera.output() and "Traceback" not in camera.output()


@pytest.mark.parametrize("parameter, expected", [
    ("source:=/no/such/video.mp4", "/no/such/video.mp4"),
    ("source:=99", "cannot open webcam 99"),
    ("rate:=30", "'rate' to '30' of type 'INTEGER', expecting type 'DOUBLE'"),
    ("rate:=0.0", "parameter rate must be positive, got 0.0"),
])
def test_bad_parameters_exit_1_with_the_reason(ros_dir, parameter, expected):
    camera = NodeProcess("camera", ["-p", parameter], ros_dir / "camera.log")
    assert camera.wait() == 1
    assert expected in camera.output() and "Traceback" not in camera.output()
