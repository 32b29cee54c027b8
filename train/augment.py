"""Batched augmentation in torch, on whatever device the batch is on.

A whole batch is augmented with a handful of tensor operations: one random
affine matrix per image (random resized crop, rotation, horizontal flip)
applied by a single ``affine_grid``/``grid_sample``, then per-image brightness
and contrast, then random erasing.  No per-pixel Python loops, and no
per-image calls into a library, so 2 CPU cores stay on model compute.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULTS = {
    "scale": (0.8, 1.0),        # area fraction kept by the random resized crop
    "ratio": (0.9, 1.1),        # aspect ratio of the crop
    "rotation": 10.0,           # degrees, uniform in [-r, r]
    "flip": 0.5,                # probability of a horizontal flip
    "brightness": 0.3,          # additive shift, uniform in [-b, b] (pixels in 0..1)
    "contrast": 0.3,            # factor uniform in [1-c, 1+c] around the image mean
    "erasing": 0.25,            # probability of erasing one rectangle
    "erasing_scale": (0.02, 0.2),
}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W] or [B,H,W,3] -> float [B,C,H,W] in 0..1."""
    x = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _uniform(low, high, n, generator, device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_affine(x: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + rotation + flip as one resampling of the batch.

    ``affine_grid`` maps output coordinates in [-1, 1] to input coordinates, so
    the matrix is: scale to the crop's half-size, rotate, flip, then shift the
    crop's centre to a random position that keeps it inside the image.
    """
    n, device = x.shape[0], x.device
    area = _uniform(*cfg["scale"], n, generator, device)
    log_ratio = _uniform(math.log(cfg["ratio"][0]), math.log(cfg["ratio"][1]), n, generator, device)
    ratio = log_ratio.exp()
    half_w = (area * ratio).sqrt().clamp(max=1.0)
    half_h = (area / ratio).sqrt().clamp(max=1.0)
    angle = _uniform(-cfg["rotation"], cfg["rotation"], n, generator, device) * (math.pi / 180.0)
    flip = torch.where(torch.rand(n, generator=generator, device=device) < cfg["flip"], -1.0, 1.0)
    shift_x = _uniform(-1.0, 1.0, n, generator, device) * (1.0 - half_w)
    shift_y = _uniform(-1.0, 1.0, n, generator, device) * (1.0 - half_h)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([cos * half_w * flip, -sin * half_h, shift_x], dim=1),
        torch.stack([sin * half_w * flip, cos * half_h, shift_y], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def photometric(x: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness shift and contrast scaling around the image mean, clamped to 0..1."""
    n, device = x.shape[0], x.device
    shift = _uniform(-cfg["brightness"], cfg["brightness"], n, generator, device).view(n, 1, 1, 1)
    factor = _uniform(1 - cfg["contrast"], 1 + cfg["contrast"], n, generator, device).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean + shift).clamp_(0.0, 1.0)


def random_erasing(x: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Erase one random rectangle (to 0.5 grey) in a random subset of the images."""
    n, _, h, w = x.shape
    device = x.device
    chosen = torch.rand(n, generator=generator, device=device) < cfg["erasing"]
    area = _uniform(*cfg["erasing_scale"], n, generator, device) * h * w
    ratio = _uniform(math.log(0.3), math.log(3.3), n, generator, device).exp()
    eh = (area * ratio).sqrt().clamp(max=h)
    ew = (area / ratio).sqrt().clamp(max=w)
    top = torch.rand(n, generator=generator, device=device) * (h - eh)
    left = torch.rand(n, generator=generator, device=device) * (w - ew)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1)) \
        & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)) & chosen.view(n, 1, 1)
    return x.masked_fill(inside.unsqueeze(1), 0.5)


class Augment:
    """uint8 batch -> one augmented, normalised float view (call twice for two views)."""

    def __init__(self, cfg: dict | None, mean, std):
        self.cfg = {**DEFAULTS, **(cfg or {})}
        self.mean, self.std = mean, std

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = to_float(images)
        x = random_affine(x, self.cfg, generator)
        x = photometric(x, self.cfg, generator)
        x = random_erasing(x, self.cfg, generator)
        return normalize(x, self.mean, self.std)


def prepare_eval(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The deterministic transform of evaluation and export: scale and normalise."""
    return normalize(to_float(images), mean, std)
