"""Build the project's ROS interface package (msg/hri_msgs) and install it into this Python's prefix.

    .venv/bin/python scripts/build_interfaces.py [--source msg/hri_msgs] [--build-dir build/hri_msgs]

For the pip-only set-up (``make venv``): ``hri_msgs`` is not on PyPI, so the
set-up generates it from the ROS4HRI definitions in ``msg/hri_msgs`` with
the ``ros-rosidl-*`` and ``ros-ament-cmake*`` wheels (the ``interfaces``
extra), which install a ROS prefix at the venv's root (``share/``,
``lib/``).  Installing into that same prefix puts the libraries beside the
other ROS wheels' and the Python package into ``site-packages``: ``from
hri_msgs.msg import Expression`` then works with no environment variable.

One patch comes first: the wheels' exported CMake targets name the include
directories of the machine that built them (``/opt/python/cp3XX-cp3XX/...``)
for Python and numpy; they are rewritten to this interpreter's.

Repeatable and idempotent: nothing is rebuilt when the installed package was
built from the same files and imports.  On failure one line says what failed
and where the full log is; the exit status is 1.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hri_msgs"
STAMP_NAME = ".wscfer-source-digest"
# Importing is not enough: serializing loads the generated C type support.
IMPORT_CHECK = ("from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D; "
                "from rclpy.serialization import serialize_message; "
                "serialize_message(Expression(expression=Expression.HAPPY))")
# What the wheel builder's paths look like in the exported targets.
_BUILDER_PYTHON_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
_BUILDER_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")


class BuildError(RuntimeError):
    """One step of the build failed; the message says which and where the log is."""


def source_digest(source: Path) -> str:
    """A digest of every file of the interface package (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def patch_exported_targets(prefix: Path) -> list[Path]:
    """Point the wheels' CMake targets at this interpreter's Python and numpy headers; the files changed."""
    import numpy

    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    patched = []
    for path in sorted((prefix / "share").glob("*/cmake/*.cmake")):
        text = path.read_text()
        if "/opt/python/" not in text:
            continue
        new = _BUILDER_NUMPY_INCLUDE.sub(numpy_include, text)
        new = _BUILDER_PYTHON_INCLUDE.sub(python_include, new)
        if new != text:
            path.write_text(new)
            patched.append(path)
    return patched


def clean_environment(prefix: Path) -> dict[str, str]:
    """The environment of a plain shell: no ROS variables, this prefix's bin first on PATH.

    Also without the guard of the ROS wheels' start-up hook (which sets
    LD_LIBRARY_PATH and re-executes Python), so a child starts as from a shell.
    """
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AMENT_", "COLCON_", "ROS_", "_ROS_")) and name not in
           ("CMAKE_PREFIX_PATH", "PYTHONPATH", "LD_LIBRARY_PATH")}
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def imports(python: str, env: dict[str, str]) -> bool:
    """Whether ``python`` imports the messages in ``env`` (run in a fresh process)."""
    return subprocess.run([python, "-c", IMPORT_CHECK], env=env, cwd="/",
                          capture_output=True).returncode == 0


def run_step(what: str, command: list[str], env: dict[str, str], log) -> None:
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    if subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
        raise BuildError(f"{what} failed (full log: {log.name})")


def build(source: Path, build_dir: Path, prefix: Path) -> str:
    """Build and install the package; returns what was done, raises BuildError."""
    if not (source / "package.xml").is_file():
        raise BuildError(f"no interface package at {source} (package.xml missing)")
    if not (prefix / "share" / "rosidl_default_generators").is_dir():
        raise BuildError(f"the interface build tools are not installed in {prefix}: "
                         f"pip install -e '.[interfaces]' first")
    digest = source_digest(source)
    stamp = prefix / "share" / PACKAGE / STAMP_NAME
    plain_env = clean_environment(prefix)
    if stamp.is_file() and stamp.read_text() == digest and imports(sys.executable, plain_env):
        return f"{PACKAGE} is up to date in {prefix}"

    patched = patch_exported_targets(prefix)
    build_dir.mkdir(parents=True, exist_ok=True)
    env = {**plain_env, "AMENT_PREFIX_PATH": str(prefix), "CMAKE_PREFIX_PATH": str(prefix)}
    with open(build_dir / "build.log", "w") as log:
        log.write(f"patched {len(patched)} exported CMake target files\n")
        run_step("cmake configure", ["cmake", "-S", str(source), "-B", str(build_dir),
                                     f"-DCMAKE_INSTALL_PREFIX={prefix}",
                                     f"-DCMAKE_PREFIX_PATH={prefix}",
                                     f"-DPython3_EXECUTABLE={sys.executable}",
                                     "-DBUILD_TESTING=OFF"], env, log)
        run_step("cmake build", ["cmake", "--build", str(build_dir), "--parallel", "2"], env, log)
        run_step("cmake install", ["cmake", "--install", str(build_dir)], env, log)
    if not imports(sys.executable, plain_env):
        raise BuildError(f"{PACKAGE} was installed into {prefix} but does not import and "
                         f"serialize in a plain environment ({IMPORT_CHECK!r})")
    stamp.write_text(digest)
    return f"built and installed {PACKAGE} into {prefix} (patched {len(patched)} CMake files)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO_ROOT / "msg" / PACKAGE,
                        help="the interface package (default: msg/hri_msgs)")
    parser.add_argument("--build-dir", type=Path, default=REPO_ROOT / "build" / PACKAGE,
                        help="CMake's build folder (default: build/hri_msgs)")
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="where to install (default: this Python's prefix, the venv)")
    args = parser.parse_args(argv)
    try:
        print(f"build_interfaces: {build(args.source.resolve(), args.build_dir.resolve(), args.prefix)}")
    except (BuildError, OSError) as error:
        print(f"build_interfaces: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
