"""The figures evaluation draws: each slide's calls against its annotation (``overlay.png``), and the pooled ROC and
precision-recall curves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from .annotations import LesionAnnotation  # noqa: E402
from .atomic import atomic_path  # noqa: E402
from .heatmap import ANNOTATION_COLOUR, CALL_COLOURS, Outlined, save_heatmap  # noqa: E402
from .metrics import pr_auc, roc_auc  # noqa: E402
from .slide_truth import SlideResult  # noqa: E402

logger = logging.getLogger(__name__)


def judged_layers(s: SlideResult, z_threshold: float, min_region_tiles: int) -> list[Outlined]:
    """What the overlay outlines after evaluation: the right calls (TP), the wrong ones (FP), the missed tumour
    patches (FN), each on the slide's grid, and the annotated tumour on the thumbnail."""
    predicted, labels = s.predict(z_threshold, min_region_tiles).astype(bool), s.patches["label"].to_numpy() > 0
    rows, cols = s.cells
    ds, stride = s.map_info["thumbnail_downsample"], s.map_info["stride"]
    layers = []
    for kind, chosen in (("TP", predicted & labels), ("FP", predicted & ~labels), ("FN", ~predicted & labels)):
        cells = np.zeros(s.z_map.shape, bool)
        cells[rows[chosen], cols[chosen]] = True
        layers.append(Outlined(cells, stride, CALL_COLOURS[kind], f"{kind}: {int(chosen.sum())} patches"))
    return [*layers, Outlined(s.truth, ds, ANNOTATION_COLOUR, "annotated tumour")]


def save_overlay(s: SlideResult, z_threshold: float, min_region_tiles: int, folder: Path) -> None:
    """``overlay.png``: the slide's heatmap with its calls judged against the annotation (``judged_layers``) and the
    exclusions hatched: one picture a slide answers whether the calls are right."""
    exclusions = s.annotation.exclusion if isinstance(s.annotation, LesionAnnotation) else []
    title = f"{s.slide_id}: z > {z_threshold:.2f}, regions >= {min_region_tiles} patches, against the annotation"
    save_heatmap(folder / "overlay.png", s.thumbnail, s.map_info["thumbnail_downsample"], s.z_map,
                 s.map_info["stride"], s.map_info["mpp0"], z_threshold, judged_layers(s, z_threshold, min_region_tiles),
                 title, exclusions)  # fmt: skip


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
