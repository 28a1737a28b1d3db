"""The figures evaluation draws: each slide's calls against its annotation (``overlay.png``), the pooled ROC and
precision-recall curves, and the report's cohort figures (slide ROC, lesion FROC, lesions by size, IoU by burden),
drawn on matplotlib's ``Figure`` so that no pyplot state is shared."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from .annotations import LesionAnnotation  # noqa: E402
from .atomic import atomic_path  # noqa: E402
from .heatmap import ANNOTATION_COLOUR, CALL_COLOURS, CALLED_COLOUR, Outlined, save_heatmap  # noqa: E402
from .lesions import FROC_FP_RATES, FrocCurve  # noqa: E402
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


def slide_roc_figure(slide_table: pd.DataFrame, auc: float | None) -> Figure:
    """Task 1's ROC: each slide's score against its label (``slide_score``, ``slide_label`` of the slide table)."""
    figure, axis = _report_axes("slide-level ROC", "false positive rate (normal slides)", "true positive rate")
    scored = slide_table[np.isfinite(slide_table["slide_score"].astype(float))]  # a slide without tissue has none
    labels, scores = scored["slide_label"].to_numpy(), scored["slide_score"].to_numpy()
    if len(labels) == 0 or labels.min() == labels.max():
        axis.text(0.5, 0.5, "undefined: the cohort needs tumour and normal slides", ha="center", wrap=True)
    else:
        fpr, tpr, _ = roc_curve(labels, scores)
        axis.plot(fpr, tpr, drawstyle="steps-post", color=CALL_COLOURS["TP"], label=f"AUC {auc:.3f}")
        axis.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        axis.legend(loc="lower right")
    axis.set(xlim=(0, 1), ylim=(0, 1.02))
    return figure


def froc_figure(curve: FrocCurve | None) -> Figure:
    """The lesion FROC curve, its sensitivity at the challenge's rates (1/4 ... 8 false positives per slide) marked:
    the FROC score is their mean."""
    figure, axis = _report_axes("lesion FROC", "mean false positives per slide", "lesion sensitivity")
    if curve is None:
        axis.text(0.5, 0.5, "no lesion larger than an isolated tumour cell", ha="center", transform=axis.transAxes)
        return figure
    order = np.lexsort((curve.sensitivity, curve.fp_per_slide))  # ties in false positives: rising sensitivity
    axis.plot(curve.fp_per_slide[order], curve.sensitivity[order], drawstyle="steps-post", color=CALL_COLOURS["TP"])
    points = curve.sensitivity_at(FROC_FP_RATES)
    axis.plot(FROC_FP_RATES, points, "o", color=CALLED_COLOUR, label=f"challenge points, mean {np.mean(points):.3f}")
    axis.set_xscale("log", base=2)
    axis.set(xlim=(FROC_FP_RATES[0] / 2, FROC_FP_RATES[-1] * 2), ylim=(0, 1.02))
    axis.legend(loc="upper left")
    return figure


def lesion_size_figure(lesions: pd.DataFrame) -> Figure:
    """Lesion sensitivity at the called regions by the lesion's longest diameter (``lesions.csv``), with each bin's
    count: the large lesions that are found say little about the small ones."""
    figure, axis = _report_axes("lesions found, by size", "longest diameter (mm)", "lesion sensitivity")
    edges_mm = (0.2, 0.5, 1.0, 2.0, 5.0, np.inf)
    names = [f"{low:g}-{high:g}" if np.isfinite(high) else f">{low:g}" for low, high in itertools.pairwise(edges_mm)]
    bins = pd.cut(lesions["diameter_um"] / 1000, edges_mm, labels=names, right=False)
    found = lesions["found"].astype(float).groupby(bins, observed=False).agg(["mean", "size"])
    bars = axis.bar(names, found["mean"].fillna(0.0), color=CALL_COLOURS["TP"])
    axis.bar_label(bars, labels=[f"n={n}" for n in found["size"]])
    axis.set_ylim(0, 1.1)
    return figure


def slide_iou_figure(slide_table: pd.DataFrame) -> Figure:
    """Each tumour slide's IoU against its annotated tumour fraction: how the called area fares as the burden falls."""
    figure, axis = _report_axes("per-slide IoU", "annotated tumour fraction of the tissue", "IoU")
    tumour = slide_table[slide_table["tumour_fraction"] > 0]
    axis.scatter(tumour["tumour_fraction"], tumour["iou"], color=CALL_COLOURS["TP"], s=16)
    if len(tumour):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())  # a narrow range labels its minor ticks on top of each other
    axis.set_ylim(0, 1.02)
    return figure


def _report_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, plt.Axes]:
    figure = Figure(figsize=(4.2, 3.4), dpi=100)
    axis = figure.add_subplot()
    axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axis.grid(alpha=0.3)
    figure.set_layout_engine("tight")
    return figure, axis
