"""Read TensorFlow.js weight files with numpy: no TensorFlow needed.

A TF.js model is a JSON file and one or more ``.bin`` shards.  The JSON's
weights manifest lists, in order, each tensor's name, shape, dtype and
optional quantisation; the shards, concatenated, hold the tensors back to
back as little-endian values.  A quantised tensor stores ``q`` (uint8 or
uint16) with ``value = q * scale + min``, or float16 halves
(``quantization.dtype == "float16"``).  Both layers models (face-api's
``*-weights_manifest.json``, a bare list of groups) and graph models
(``model.json`` with ``modelTopology`` and ``weightsManifest``) are read.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16, "bool": np.bool_}


def read_manifest(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(model_json, tensors)`` of the TF.js file at ``path``.

    ``model_json`` is the parsed JSON (``{}`` besides the manifest for a bare
    weights manifest); ``tensors`` maps each weight name to a float32 array
    (int32 for integer tensors) in TensorFlow's layout (HWIO for convolutions).
    """
    path = Path(path)
    model = json.loads(path.read_text())
    groups = model if isinstance(model, list) else model["weightsManifest"]
    tensors: dict[str, np.ndarray] = {}
    for group in groups:
        data = b"".join((path.parent / shard).read_bytes() for shard in group["paths"])
        offset = 0
        for spec in group["weights"]:
            array, offset = _read_tensor(spec, data, offset)
            tensors[spec["name"]] = array
        if offset != len(data):
            raise ValueError(f"{path}: the manifest describes {offset} bytes, its shards hold {len(data)}")
    return ({} if isinstance(model, list) else model), tensors


def _read_tensor(spec: dict, data: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape = [int(n) for n in spec["shape"]]
    count = int(np.prod(shape, dtype=np.int64))
    quantization = spec.get("quantization")
    stored = np.dtype(_DTYPES[quantization["dtype"] if quantization else spec["dtype"]]).newbyteorder("<")
    end = offset + count * stored.itemsize
    if end > len(data):
        raise ValueError(f"tensor {spec['name']} runs past the end of the weights")
    values = np.frombuffer(data, stored, count, offset)
    if quantization and quantization["dtype"] in ("uint8", "uint16"):
        values = values.astype(np.float32) * np.float32(quantization["scale"]) + np.float32(quantization["min"])
    elif spec["dtype"] == "float32":
        values = values.astype(np.float32)
    return values.reshape(shape).copy(), end
