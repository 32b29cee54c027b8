"""Training throughput of the WSCFER step, printed as a table.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--steps 10]

One step = two augmented views of a batch of stored uint8 faces, forward,
the full WSCFER objective (cross-entropy + WSC + PCL) and an SGD update, as
in ``wscfer-train``.  Images/s counts source images (each gives two views);
the epoch time is for FER2013's 28,709 training images.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from wscfer_train.augment import Augment
from wscfer_train.losses import objective
from wscfer_train.model import build_model
from wscfer_train.trainer import make_optimizer

FER2013_TRAIN = 28_709
MODELS = [  # (label, arch, width, stem)
    ("ResNet-18 (paper)", "resnet18", 64, "imagenet"),
    ("ResNet-18 w32 (default)", "resnet18", 32, "imagenet"),
    ("ResNet-18 w32, small stem", "resnet18", 32, "small"),
]
LOSS = {"aux": "wscfer", "tau": 0.1, "lambda_aux": 0.5, "lambda_pcl": 0.5}


def images_per_second(arch, width, stem, size, batch, steps, device, amp) -> float:
    model = build_model({"arch": arch, "width": width, "stem": stem, "proj_dim": 128}, 7, 1).to(device)
    optimizer = make_optimizer(model, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})
    augment = Augment({}, [0.5], [0.25])
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 7, (batch,), device=device).repeat(2)
    pair = (torch.arange(2 * batch, device=device) + batch) % (2 * batch)
    anchors = torch.arange(2 * batch, device=device)
    dtype = torch.bfloat16 if amp else None

    def step():
        x = torch.cat([augment(images, generator), augment(images, generator)])
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            logits, u = model(x, with_embedding=True)
        loss, _ = objective(logits.float(), u.float(), labels, pair, anchors, LOSS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if amp else f"{platform.processor() or platform.machine()}, " \
                                                             f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({name}), torch {torch.__version__}, batch {args.batch}, "
          f"{'bf16 autocast' if amp else 'fp32'}\n")
    print("| model | input | images/s | FER2013 epoch |")
    print("|---|---|---:|---:|")
    for label, arch, width, stem in MODELS:
        for size in args.sizes:
            rate = images_per_second(arch, width, stem, size, args.batch, args.steps, device, amp)
            print(f"| {label} | {size} px | {rate:.0f} | {FER2013_TRAIN / rate / 60:.1f} min |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
