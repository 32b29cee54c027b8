"""Classification metrics from a confusion matrix."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts; row = true class, column = predicted class."""
    index = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(confusion: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class recall and their mean over the classes present in the data."""
    support = confusion.sum(1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros(len(support)), where=support > 0)
    return {
        "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
        "mean_recall": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class_recall": {name: float(r) for name, r in zip(class_names, recall)},
        "support": {name: int(s) for name, s in zip(class_names, support)},
        "confusion": confusion.tolist(),
    }
