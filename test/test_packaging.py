"""What pip installs where: the runtime without torch, and a dependency set that resolves on every robot platform."""
import importlib.metadata

import pytest
from packaging.requirements import Requirement

PLATFORMS = {  # marker environment -> (ONNX Runtime distribution, MediaPipe pin)
    "linux x86_64": ({"sys_platform": "linux", "platform_machine": "x86_64"}, "onnxruntime-gpu", "==0.10.21"),
    "jetson (linux aarch64)": ({"sys_platform": "linux", "platform_machine": "aarch64"}, "onnxruntime",
                               "==0.10.18"),
    "macos arm64": ({"sys_platform": "darwin", "platform_machine": "arm64"}, "onnxruntime", "==0.10.21"),
    "macos x86_64": ({"sys_platform": "darwin", "platform_machine": "x86_64"}, "onnxruntime", "==0.10.21"),
}


def requirements(extra: str = "", **environment) -> dict[str, Requirement]:
    """The installed distribution's requirements that apply on ``environment`` with ``extra`` asked for."""
    applying = {}
    for text in importlib.metadata.requires("wscfer_ros"):
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": extra}):
            applying[requirement.name] = requirement
    return applying


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_gets_one_onnxruntime_and_a_mediapipe_with_wheels_for_it(platform):
    environment, onnxruntime, mediapipe = PLATFORMS[platform]
    runtime = requirements(**environment)
    assert {"onnxruntime", "onnxruntime-gpu"} & runtime.keys() == {onnxruntime}
    assert str(runtime["mediapipe"].specifier) == mediapipe


def test_torch_and_the_training_tools_are_an_extra_not_runtime_requirements():
    runtime = requirements(sys_platform="linux", platform_machine="x86_64")
    training = requirements("train", sys_platform="linux", platform_machine="x86_64")
    assert not {"torch", "tensorboard", "matplotlib", "onnx"} & runtime.keys()
    assert {"torch", "tensorboard", "matplotlib", "onnx"} <= training.keys()
