"""The runtime stays light: no torch, no training package, no ROS in the pipeline."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import wscfer_ros

PACKAGE_DIR = Path(wscfer_ros.__file__).parent
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "hri_msgs", "launch",
               "launch_ros")
ROS_FRONTENDS = {"node.py", "camera.py", "demo.py", "ros_process.py", "hri_topics.py"}

RUN_ONE_FRAME = """
import json, sys
import numpy as np
from wscfer_ros.pipeline import Pipeline, PipelineConfig
import wscfer_ros.infer, wscfer_ros.output

pipeline = Pipeline(PipelineConfig(model_path=sys.argv[1]))
image = np.zeros((360, 640, 3), np.uint8)
image[100:200, 250:350] = 200
result = pipeline.process(image, "bgr")
loaded = [name for name in {banned} if name in sys.modules]
print(json.dumps({{"loaded": loaded, "timings": sorted(result.timings_ms)}}))
"""


def test_pipeline_runs_without_torch_training_or_ros(tiny_model):
    banned = ("torch", "wscfer_train") + ROS_MODULES
    completed = subprocess.run(
        [sys.executable, "-c", RUN_ONE_FRAME.format(banned=repr(banned)), str(tiny_model)],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["timings"] == ["classify", "crop", "detect", "track"]  # a frame really went through
    assert report["loaded"] == []


def imported_modules(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_each_heavy_dependency_has_one_home():
    """Only classifier.py knows onnxruntime, only detector.py mediapipe, only the ROS front ends ROS."""
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        modules = imported_modules(path)
        assert not modules & {"torch", "wscfer_train"}, path.name
        if path.name != "classifier.py":
            assert "onnxruntime" not in modules, path.name
        if path.name != "detector.py":
            assert "mediapipe" not in modules, path.name
        if path.name not in ROS_FRONTENDS:
            assert not modules & set(ROS_MODULES), path.name
