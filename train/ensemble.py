"""Several networks as one model: the weighted mean of their class probabilities.

    p(y | x) = sum_k w_k softmax(z_k(x))_y / sum_k w_k,   logits = log p

The first member is a network of ours with the model-file contract (its
input size, colour and normalisation become the file's); the others are
published peers (``peers.py``), each fed the same face in its own size,
colour and normalisation inside the graph.  The node then runs the ensemble
as one model, one ONNX Runtime call per batch of faces.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .peers import load_peer


class Ensemble(nn.Module):
    def __init__(self, net: nn.Module, mean, std, class_names: list[str], peers: list[tuple[str, float]]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.peers = nn.ModuleList()
        orders = []
        for name, _ in peers:
            peer = load_peer(name)
            missing = set(class_names) - set(peer.class_names)
            if missing:
                raise ValueError(f"peer {name} has no class {sorted(missing)}")
            self.peers.append(peer)
            orders.append(torch.tensor([peer.class_names.index(c) for c in class_names]))
        self.orders = orders
        weights = [1.0] + [float(weight) for _, weight in peers]
        if min(weights) <= 0:
            raise ValueError(f"ensemble weights must be positive, got {weights}")
        self.own_weight, *self.peer_weights = [weight / sum(weights) for weight in weights]

    def forward(self, x):
        """Logits (log of the mixed probabilities) for input normalised as the contract says."""
        probs = self.own_weight * torch.softmax(self.net(x), dim=1)
        pixels = (x * self.std + self.mean) * 255.0
        for weight, peer, order in zip(self.peer_weights, self.peers, self.orders):
            probs = probs + weight * torch.softmax(peer(pixels)[:, order], dim=1)
        return torch.log(probs.clamp_min(1e-12))


def parse_peer(text: str) -> tuple[str, float]:
    """``name`` or ``name:weight`` (the command-line form)."""
    name, _, weight = text.partition(":")
    try:
        return name, float(weight) if weight else 1.0
    except ValueError as error:
        raise ValueError(f"peer {text!r}: the weight after ':' must be a number") from error
