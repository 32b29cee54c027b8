"""scripts/build_interfaces.py: hri_msgs built from msg/hri_msgs into the venv by the set-up.

``make venv`` (and so ``make test``) has run it before these tests.
"""
import os
import shutil
import subprocess
import sys
import time

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "build_interfaces.py"


def plain_environment() -> dict[str, str]:
    """A shell's environment with nothing that points at ROS or at extra libraries.

    Also without the guard of the ROS wheels' start-up hook, which this
    process (started by .venv/bin/python) has set.
    """
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("AMENT_", "COLCON_", "ROS_", "RMW_", "_ROS_"))
            and name not in ("CMAKE_PREFIX_PATH", "PYTHONPATH", "LD_LIBRARY_PATH")}


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=plain_environment(), timeout=300)


def test_the_messages_import_and_serialize_with_no_environment_variable(tmp_path):
    code = ("from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D\n"
            "from rclpy.serialization import serialize_message, deserialize_message\n"
            "m = Expression(expression=Expression.HAPPY, valence=0.5, confidence=0.9)\n"
            "back = deserialize_message(serialize_message(m), Expression)\n"
            "print(back.expression, back.valence, IdsList(ids=['a']).ids)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=plain_environment(), cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["happy", "0.5", "['a']"]


def test_a_second_build_is_a_no_op():
    started = time.monotonic()
    run = build()
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"build_interfaces: hri_msgs is up to date in {sys.prefix}"
    assert time.monotonic() - started < 20


def test_a_broken_definition_fails_with_one_line_and_leaves_the_installed_package(tmp_path):
    source = tmp_path / "hri_msgs"
    shutil.copytree(REPO_ROOT / "msg" / "hri_msgs", source)
    with open(source / "msg" / "IdsList.msg", "a") as definition:
        definition.write("floot32 confidence\n")

    run = build("--source", str(source), "--build-dir", str(tmp_path / "build"))

    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"build_interfaces: error: cmake configure failed (full log: {tmp_path / 'build' / 'build.log'})"]
    assert "floot32" in (tmp_path / "build" / "build.log").read_text()
    assert build().stdout.strip().endswith("up to date in " + sys.prefix)


def test_no_package_is_one_line(tmp_path):
    run = build("--source", str(tmp_path / "nothing"))
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"build_interfaces: error: no interface package at {tmp_path / 'nothing'} "
        f"(package.xml missing)"]
