"""``wscfer_node --help`` and ``wscfer_camera --help``: the parameters, and no ROS started."""
import os
import subprocess
import sys

import pytest

from wscfer_ros import camera, node
from wscfer_ros.ros_process import _ros_value


@pytest.mark.parametrize("module, parameters, example", [
    ("node", node.PARAMETERS, "min_detection_confidence:=0.5"),
    ("camera", camera.PARAMETERS, "source:=astronaut"),
])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_parameter_with_its_default_and_exits_0(tmp_path, module, parameters,
                                                                 example, flag):
    log_dir = tmp_path / "ros_log"
    # A node started by mistake would spin until the timeout.
    run = subprocess.run([sys.executable, "-m", f"wscfer_ros.{module}", flag],
                         env=dict(os.environ, ROS_LOG_DIR=str(log_dir)),
                         capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stdout + run.stderr
    assert example in run.stdout
    assert "--ros-args -p NAME:=VALUE" in run.stdout
    flowing = " ".join(run.stdout.split())
    for name, (default, description) in parameters.items():
        assert f"  {name}:={_ros_value(default)}\n" in run.stdout
        assert " ".join(description.split()) in flowing
    assert not log_dir.exists(), "ROS was initialised (it wrote a log)"


@pytest.mark.parametrize("value, written", [
    ("", "''"), ("auto", "auto"), (True, "true"), (False, "false"), (0.5, "0.5"), (0.0, "0.0"), (10, "10"),
])
def test_defaults_are_written_as_a_ros_args_value_reads_back(value, written):
    assert _ros_value(value) == written
