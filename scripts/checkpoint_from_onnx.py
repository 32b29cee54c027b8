"""Recover trainable ResNet weights from an exported model file, to warm-start training from it.

    python scripts/checkpoint_from_onnx.py wscfer_ros/models/default.onnx runs/default_weights.pt
    wscfer-train --config ... --init runs/default_weights.pt

For when the ``best.pt`` behind a shipped file is gone.  ``wscfer-export``
folds every BatchNorm into its convolution, so the file holds W' and b' with
W' x + b' = BN(W x).  Here each convolution gets W' back and its BatchNorm is
chosen to reproduce b' in both modes: with z = W' x and m, s the per-channel
mean and standard deviation of z over real faces,

    gamma = s,  beta = m + b',  running_mean = m,  running_var = s^2 - eps

so that eval mode gives gamma (z - m) / s + beta = z + b' exactly, and
training mode, normalising by the batch's own statistics, gives about the
same (the next layers see the scale they were trained on).  The projection
head is not in the file; ``--init`` loads the backbone only anyway.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from wscfer_train.config import DEFAULTS
from wscfer_train.export import load_images, onnx_logits
from wscfer_train.model import BLOCKS, build_model

CALIBRATION = "{format: fer2013_folder, root: fer2013/train}"


def module_path(node_name: str) -> str:
    """'/net/backbone/layer1/layer1.0/conv1/Conv' -> 'backbone.layer1.0.conv1' (tracer scopes nest full names)."""
    path: list[str] = []
    for scope in node_name.strip("/").split("/")[1:-1]:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path)


def float_initialisers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every weight by the name the graph uses, fp16 storage ('x_fp16' Cast to 'x') back in float32."""
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return {name: value.astype(np.float32) for name, value in values.items()}


def normalised_faces(source: str, count: int, meta: dict[str, str]) -> torch.Tensor:
    """Real faces as the network sees them: resized, scaled to [0, 1], normalised with the file's mean and std."""
    size, color = json.loads(meta["input_size"])[0], meta["color"]
    pixels = load_images(source, size, color, count).astype(np.float32) / 255.0
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    mean = np.array(json.loads(meta["mean"]), np.float32)[:, None, None]
    std = np.array(json.loads(meta["std"]), np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray((pixels - mean) / std))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX file written by wscfer-export (a ResNet, not an ensemble)")
    parser.add_argument("output", help="the .pt file to write (for --init)")
    parser.add_argument("--calibration", default=CALIBRATION, help="real faces for the BatchNorm statistics")
    parser.add_argument("--count", type=int, default=2048)
    args = parser.parse_args(argv)

    stored = onnx.load(args.model)
    meta = {prop.key: prop.value for prop in stored.metadata_props}
    arch, width, stem = meta.get("arch", "?-?-?").split("-")
    if arch not in BLOCKS:
        print(f"error: {args.model}: arch {meta.get('arch')!r} is not one of the ResNets {sorted(BLOCKS)}",
              file=sys.stderr)
        return 1
    classes = json.loads(meta["class_names"])
    model = build_model({**DEFAULTS["model"], "arch": arch, "width": int(width[1:]), "stem": stem},
                        len(classes), 1 if meta["color"] == "gray" else 3).eval()
    modules = dict(model.named_modules())
    values = float_initialisers(stored)
    convs = {module_path(node.name): (values[node.input[1]], values[node.input[2]])
             for node in stored.graph.node if node.op_type == "Conv"}
    if set(convs) != {name for name, module in modules.items() if isinstance(module, torch.nn.Conv2d)}:
        print(f"error: {args.model}: its convolutions are not those of {meta['arch']} (an ensemble?)",
              file=sys.stderr)
        return 1
    order = list(modules)   # registration order: each convolution's BatchNorm is the next one
    norm_of = {name: next(other for other in order[order.index(name):]
                          if isinstance(modules[other], torch.nn.BatchNorm2d)) for name in convs}

    moments: dict[str, list[torch.Tensor]] = {}

    def record(name):
        def hook(module, inputs, output):
            z = output.double().transpose(0, 1).flatten(1)
            totals = moments.setdefault(name, [0, 0, 0])
            totals[0], totals[1], totals[2] = totals[0] + z.sum(1), totals[1] + z.pow(2).sum(1), totals[2] + z.shape[1]
        return hook

    with torch.no_grad():
        for name, (weight, bias) in convs.items():   # first the exact eval-mode equivalent: BN = identity + b'
            modules[name].weight.copy_(torch.from_numpy(weight))
            norm = modules[norm_of[name]]
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(bias))
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        gemm = next(node for node in stored.graph.node if node.op_type == "Gemm")
        model.classifier.weight.copy_(torch.from_numpy(values[gemm.input[1]]))
        model.classifier.bias.copy_(torch.from_numpy(values[gemm.input[2]]))

        faces = normalised_faces(args.calibration, args.count, meta)
        hooks = [modules[name].register_forward_hook(record(name)) for name in convs]
        for batch in faces.split(256):
            model(batch)
        for hook in hooks:
            hook.remove()
        for name, (_, bias) in convs.items():   # then the statistics that make training mode agree too
            total, square, count = moments[name]
            mean = total / count
            std = (square / count - mean.pow(2)).clamp_min(1e-8).sqrt()
            norm = modules[norm_of[name]]
            norm.weight.copy_(std.float())
            norm.bias.copy_(mean.float() + torch.from_numpy(bias))
            norm.running_mean.copy_(mean.float())
            norm.running_var.copy_(std.float().pow(2) - norm.eps)
        logits = torch.cat([model(batch) for batch in faces.split(256)]).numpy()
    gap = np.abs(logits - onnx_logits(args.model, faces.numpy())).max()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "recovered_from": str(args.model)}, args.output)
    print(f"{args.output}: {len(convs)} convolutions of {meta['arch']} from {args.model}; "
          f"largest logit difference to the file on {len(faces)} faces {gap:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
