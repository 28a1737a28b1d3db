"""The figures evaluation draws: each slide's called patches against its labels (``errors.png``), and the pooled ROC
and precision-recall curves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .metrics import pr_auc, roc_auc  # noqa: E402
from .slide_truth import SlideResult  # noqa: E402

logger = logging.getLogger(__name__)


def save_errors(s: SlideResult, z_threshold: float, min_region_tiles: int, folder: Path) -> None:
    """TP (green), FP (red) and FN (blue) patches over the slide thumbnail."""
    predicted, labels = s.predict(z_threshold, min_region_tiles).astype(bool), s.patches["label"].to_numpy() > 0
    scale = s.map_info["thumbnail_downsample"]
    figure, axis = plt.subplots(figsize=(10, 10 * s.thumbnail.shape[0] / s.thumbnail.shape[1] + 0.6), dpi=100)
    axis.imshow(s.thumbnail)
    for kind, select, color in (("TP", predicted & labels, "lime"), ("FP", predicted & ~labels, "red"),
                                ("FN", ~predicted & labels, "blue")):  # fmt: skip
        for _, row in s.patches[select].iterrows():
            size = row["size0"] / scale
            axis.add_patch(plt.Rectangle((row["x"] / scale, row["y"] / scale), size, size, color=color, alpha=0.35))
        axis.plot([], [], "s", color=color, label=f"{kind}: {int(select.sum())}")
    axis.legend(loc="upper right", fontsize=8)
    axis.set_axis_off()
    axis.set_title(f"{s.slide_id}: z > {z_threshold:.2f}, regions >= {min_region_tiles} patches", fontsize=10)
    figure.tight_layout()
    with atomic_path(folder / "errors.png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def save_curves(slides: Sequence[SlideResult], folder: Path) -> None:
    labels = np.concatenate([s.patches["label"].to_numpy() for s in slides])
    z = np.concatenate([s.patches["z"].to_numpy() for s in slides])
    if labels.min() == labels.max():
        logger.warning("ROC/PR curves skipped: the evaluated patches hold only one class.")
        return
    for name, (xs, ys, xlabel, ylabel, value) in {
        "roc": (*roc_curve(labels, z)[:2], "false positive rate", "true positive rate", roc_auc(z, labels)),
        "pr": (*precision_recall_curve(labels, z)[1::-1], "recall", "precision", pr_auc(z, labels)),
    }.items():
        figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
        axis.plot(xs, ys)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(f"pooled patches ({len(labels)}): {name.upper()}-AUC {value:.3f}")
        figure.tight_layout()
        with atomic_path(folder / f"{name}.png") as tmp:
            figure.savefig(tmp, format="png")
        plt.close(figure)
