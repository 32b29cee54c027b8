"""Evaluation of a model on a labelled face dataset."""
from __future__ import annotations

import numpy as np
import torch

from .augment import prepare_eval
from .metrics import confusion_matrix, summarize


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int,
                   device: torch.device) -> np.ndarray:
    """Logits for uint8 images, one forward pass per image (no test-time augmentation)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        outputs.append(model(prepare_eval(batch, mean, std)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs).numpy()


def evaluate_model(model, dataset, mean, std, batch_size: int, device) -> dict:
    """Accuracy, mean per-class recall, per-class recall and confusion matrix on ``dataset``."""
    predictions = predict_logits(model, dataset.images, mean, std, batch_size, device).argmax(1)
    confusion = confusion_matrix(dataset.labels, predictions, len(dataset.class_names))
    return summarize(confusion, dataset.class_names)
