"""Where the package's share files (parameters, Fast DDS profile) are found.

The same files live in one of three places depending on how the package was
installed: this repository itself (the editable install of ``make run``; its
files win so that edits to ``config/`` take effect), a colcon/ROS install
(found through the ament index), or a pip install of the wheel
(``<prefix>/share/wscfer_ros``, from setup.py's data_files).
"""
import os
import sys
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

PACKAGE = "wscfer_ros"
CHECKOUT_ROOT = Path(__file__).resolve().parents[1]


def _share_directories() -> list[Path]:
    directories = []
    if (CHECKOUT_ROOT / "package.xml").is_file():
        directories.append(CHECKOUT_ROOT)
    if os.environ.get("AMENT_PREFIX_PATH"):
        try:
            directories.append(Path(get_package_share_directory(PACKAGE)))
        except PackageNotFoundError:
            pass
    directories.append(Path(sys.prefix) / "share" / PACKAGE)
    return directories


def share_file(relative_path: str) -> Path:
    """The installed file ``relative_path`` (e.g. ``config/wscfer.yaml``); the first found wins."""
    searched = []
    for directory in _share_directories():
        candidate = directory / relative_path
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    raise FileNotFoundError(f"{relative_path} of {PACKAGE} not found; looked at: "
                            + ", ".join(searched))


def params_file() -> Path:
    """The node's parameter file, ``config/wscfer.yaml``."""
    return share_file("config/wscfer.yaml")


def fastdds_profile() -> Path:
    """The Fast DDS profile with a shared-memory transport sized for camera frames."""
    return share_file("config/fastdds_shm.xml")
