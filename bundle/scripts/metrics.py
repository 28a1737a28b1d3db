"""Scalar metrics of scores against labels: ROC and PR AUC (MONAI's), the overlap counts IoU and Dice come from, and
the 95 % intervals of the rates an operating point is stated in."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import compute_average_precision, compute_roc_auc
from scipy import stats


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


def rate_upper_bound(count: int, slides: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper bound of a Poisson rate per slide, ``count`` events on ``slides`` slides: none on 12
    slides bounds the rate below 0.25 at 95 % (the rule of three)."""
    return float(stats.chi2.ppf(confidence, 2 * count + 2) / 2 / slides)


def rate_interval(count: int, slides: int) -> list[float]:
    """Exact (Garwood) 95 % interval of a Poisson rate per slide: honest where the count is 0 (no false region on 4
    slides still allows 0.92 a slide)."""
    low = stats.chi2.ppf(0.025, 2 * count) / 2 / slides if count else 0.0
    return [float(low), rate_upper_bound(count, slides, 0.975)]


def proportion_interval(successes: int, trials: int) -> list[float] | None:
    """Exact (Clopper-Pearson) 95 % interval of a proportion; None without trials."""
    if not trials:
        return None
    interval = stats.binomtest(successes, trials).proportion_ci(0.95, method="exact")
    return [float(interval.low), float(interval.high)]


def slide_resampled_ratio(numerators: np.ndarray, denominators: np.ndarray, draws: int = 1000) -> list[float] | None:
    """95 % interval of ``sum(numerators) / sum(denominators)`` over slides resampled with replacement: patches of
    one slide are not independent, slides are."""
    numerators, denominators = np.asarray(numerators, float), np.asarray(denominators, float)
    if not denominators.sum():
        return None
    picks = np.random.default_rng(0).integers(0, len(numerators), (draws, len(numerators)))
    totals = denominators[picks].sum(1)
    ratios = numerators[picks].sum(1)[totals > 0] / totals[totals > 0]
    return [float(v) for v in np.percentile(ratios, [2.5, 97.5])]


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
