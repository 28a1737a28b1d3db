"""Scalar metrics of scores against labels: ROC and PR AUC (MONAI's), and the overlap counts IoU and Dice come from."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import compute_average_precision, compute_roc_auc


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    if labels.min() == labels.max():
        return float("nan")
    return float(compute_roc_auc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve); NaN without positives."""
    if labels.max() == 0:
        return float("nan")
    return float(compute_average_precision(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))


def overlap(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """TP / FP / FN and IoU, Dice, precision, recall. IoU and Dice are 1 when both sets are empty (a tumour-free
    slide with no false alarm is perfect); precision and recall are NaN when undefined."""
    predicted, labels = predicted.astype(bool), labels.astype(bool)
    tp, fp, fn = int((predicted & labels).sum()), int((predicted & ~labels).sum()), int((~predicted & labels).sum())
    union = tp + fp + fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "iou": tp / union if union else 1.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
    }


def strict_json(content: object) -> object:
    """``content`` as strict JSON can hold it: NumPy numbers as Python ones, NaN and infinities (an AUC of one class,
    a precision with no call) as null, which ``JSON.parse`` and every JSON reader accept, where bare NaN is no JSON."""
    if isinstance(content, dict):
        return {key: strict_json(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [strict_json(value) for value in content]
    if isinstance(content, np.generic):
        content = content.item()
    if isinstance(content, float) and not math.isfinite(content):
        return None
    return content
