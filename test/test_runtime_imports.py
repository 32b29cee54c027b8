"""The runtime stays light: no torch, no training package; the perception core imports no ROS at all.

The rule is checked per package, for every module in it, not for a list of
files: ``wscfer_ros.perception`` may import the standard library, itself
and what ``pip install wscfer_ros`` installs without extras (numpy, OpenCV,
MediaPipe, ONNX Runtime and their dependencies), nothing else; ROS comes
only with the ``ros`` extra.  The whole of ``wscfer_ros`` never imports
torch or the training wing.
"""
import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

import wscfer_ros

PACKAGE_DIR = Path(wscfer_ros.__file__).parent
CORE_DIR = PACKAGE_DIR / "perception"
TRAINING = {"torch", "wscfer_train"}

# What the interpreter loaded before the first import (site hooks of the venv) does not count.
RUN_ONE_FRAME = """
import json, sys
at_start = set(sys.modules)
import numpy as np
from wscfer_ros.perception.pipeline import Pipeline, PipelineConfig
import wscfer_ros.infer, wscfer_ros.perception.output

pipeline = Pipeline(PipelineConfig(model_path=sys.argv[1]))
image = np.zeros((360, 640, 3), np.uint8)
image[100:200, 250:350] = 200
result = pipeline.process(image, "bgr")
print(json.dumps({"loaded": sorted(set(sys.modules) - at_start), "timings": sorted(result.timings_ms)}))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_modules() -> set[str]:
    """Top-level modules installed by wscfer_ros's requirements without extras, dependencies included."""
    wanted, seen = ["wscfer_ros"], set()
    while wanted:
        name = _canonical(wanted.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return {module for module, distributions in importlib.metadata.packages_distributions().items()
            if any(_canonical(distribution) in seen for distribution in distributions)}


def ros_modules() -> set[str]:
    """Top-level modules of the ``ros`` and ``interfaces`` extras' distributions (rclpy, ament_index_python, ...)."""
    return {module for module, distributions in importlib.metadata.packages_distributions().items()
            if any(_canonical(distribution).startswith("ros-") for distribution in distributions)}


def test_pipeline_runs_without_torch_training_or_ros(tiny_model):
    completed = subprocess.run([sys.executable, "-c", RUN_ONE_FRAME, str(tiny_model)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["timings"] == ["classify", "crop", "detect", "track"]  # a frame really went through
    loaded = {name.split(".")[0] for name in report["loaded"]}
    assert ros_modules(), "no ROS distribution found: the check below would prove nothing"
    assert loaded & (TRAINING | ros_modules()) == set()


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(absolute imports as dotted names, relative imports as dotted names resolved against ``path``)."""
    package = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts[:-1])
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            absolute.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            absolute.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            relative.add(f"{base}.{node.module}" if node.module else base)
    return absolute, relative


def test_the_perception_core_imports_only_the_runtime_requirements():
    allowed = runtime_modules() | set(sys.stdlib_module_names)
    modules = sorted(CORE_DIR.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        absolute, relative = imports_of(path)
        outside = {name for name in absolute if name.split(".")[0] not in allowed | {"wscfer_ros"}}
        assert not outside, f"{path.name} imports {sorted(outside)}: not installed by the runtime requirements"
        own = {name for name in absolute | relative if name.split(".")[0] == "wscfer_ros"}
        assert all(name.startswith("wscfer_ros.perception.") for name in own), \
            f"{path.name} imports {sorted(own)}: the core imports nothing of the ROS side"


def test_no_runtime_module_imports_torch_or_the_training_wing():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        absolute, _ = imports_of(path)
        assert not {name.split(".")[0] for name in absolute} & TRAINING, path.name


def test_each_heavy_dependency_has_one_home():
    """Only classifier.py knows onnxruntime, only detector.py mediapipe."""
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        top_level = {name.split(".")[0] for name in imports_of(path)[0]}
        if path.name != "classifier.py":
            assert "onnxruntime" not in top_level, path.name
        if path.name != "detector.py":
            assert "mediapipe" not in top_level, path.name
