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
same (the next layers see the scale they were trained on).  The classifier
is the file's last Gemm, saved with the file's class names so that ``--init``
keeps it; the projection head is not in the file and is left out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from wscfer_ros.perception.contract import Contract, ContractError
from wscfer_train.augment import prepare_eval
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX file written by wscfer-export (a ResNet, not an ensemble)")
    parser.add_argument("output", help="the .pt file to write (for --init)")
    parser.add_argument("--calibration", default=CALIBRATION, help="real faces for the BatchNorm statistics")
    parser.add_argument("--count", type=int, default=2048)
    args = parser.parse_args(argv)

    try:
        stored = onnx.load(args.model)
        meta = {prop.key: prop.value for prop in stored.metadata_props}
        contract = Contract.from_props(meta)
    except (OSError, DecodeError, ContractError) as error:
        print(f"error: {args.model}: {error}", file=sys.stderr)
        return 1
    arch, width, stem = (meta.get("arch", "?-?-?").split("-") + ["?", "?"])[:3]
    if arch not in BLOCKS:
        print(f"error: {args.model}: arch {meta.get('arch')!r} is not one of the ResNets {sorted(BLOCKS)}",
              file=sys.stderr)
        return 1
    model = build_model({**DEFAULTS["model"], "arch": arch, "width": int(width[1:]), "stem": stem},
                        len(contract.class_names), contract.channels).eval()
    modules = dict(model.named_modules())
    conv_nodes = {module_path(node.name): node for node in stored.graph.node if node.op_type == "Conv"}
    if set(conv_nodes) != {name for name, module in modules.items() if isinstance(module, torch.nn.Conv2d)} \
            or any(len(node.input) < 3 for node in conv_nodes.values()):
        print(f"error: {args.model}: its convolutions are not those of {meta['arch']} alone (an ensemble?)",
              file=sys.stderr)
        return 1
    values = float_initialisers(stored)
    convs = {name: (values[node.input[1]], values[node.input[2]]) for name, node in conv_nodes.items()}
    order = list(modules)   # registration order: each convolution's BatchNorm is the next one
    norm_of = {name: next(other for other in order[order.index(name):]
                          if isinstance(modules[other], torch.nn.BatchNorm2d)) for name in convs}

    moments: dict[str, torch.Tensor] = {}   # per convolution: [count, sum z, sum z^2] per channel

    def record(name):
        def hook(module, inputs, output):
            z = output.double().transpose(0, 1).flatten(1)   # channels x (batch * positions)
            sums = torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), z.pow(2).sum(1)])
            moments[name] = moments.get(name, 0) + sums
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

        images = load_images(args.calibration, contract.input_size[0], contract.color, args.count)
        faces = prepare_eval(torch.from_numpy(images), contract.mean, contract.std)
        hooks = [modules[name].register_forward_hook(record(name)) for name in convs]
        for batch in faces.split(256):
            model(batch)
        for hook in hooks:
            hook.remove()
        for name, (_, bias) in convs.items():   # then the statistics that make training mode agree too
            count, total, square = moments[name]
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
    weights = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("projection.")}
    torch.save({"model": weights, "class_names": list(contract.class_names), "recovered_from": str(args.model)},
               args.output)
    print(f"{args.output}: {len(convs)} convolutions of {meta['arch']} from {args.model}; "
          f"largest logit difference to the file on {len(faces)} faces {gap:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
