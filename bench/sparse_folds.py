"""Lesion-level results on tumour-sparse slides, cross-validated over the tile folds, as a user would get them.

    python bench/sparse_folds.py --tiles_dir ../shared/data/camelyon16_tiles \\
        --normals_dir ../shared/data/pcam_normals --folds FOLDS --ckpt bundle/models/model.pt --out OUT \\
        [--versus BASE] [--heads HEADS] [--z_statistics mean_std median_mad] [-- --tta False]

For every fold (the three of ``bench/train_folds.py`` and the demo tiles with ``--ckpt``): calibration slides are
built (``tools/sparse_slides.py``) from the tiles that fold's model was trained on (tumour-sparse slides, and
``--cal_normal_slides`` tumour-free ones, half of them of the PCam normals outside the held-out fifth), test slides from
the tiles it never saw (and ``--test_normal_slides`` tumour-free ones, half of the held-out PCam fifth); ``run
calibrate`` chooses the operating point on the calibration slides and ``run evaluate`` applies it to the test slides,
both through the bundle's CLI with every other setting at its default. Prints, per fold and over all folds, the false
regions and false mm² per tumour-free slide (by the source of its tissue), lesion sensitivity by size, mean IoU and
Dice of the tumour slides, the CAMELYON16 FROC score and the pooled patch AUC, with 95 % intervals from resampling the
test slides; the oracle IoU (threshold chosen on each slide's own labels) is shown beside them. Each
``--z_statistics`` value is run in turn, so they compare on the same slides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from common import BUNDLE
from detection_quality import tile_folds

from scripts.datasets import DEMO_TILES, tile_names
from scripts.metrics import rate_interval
from tools.sparse_slides import SOURCES, build

CONFIGS = str([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "evaluate.json")])
DRAWS = 1000


def fold_tiles(tiles_dir: Path) -> list[tuple[str, list[str], list[str]]]:
    """Each fold's name, training tiles and test tiles: the three of ``bench/train_folds.py`` and the demo tiles (the
    shipped model's test tiles)."""
    training = [Path(name).stem for name in tile_names(tiles_dir, DEMO_TILES)]
    folds = [(f"fold{k}", [t for t in training if t not in held_out], held_out)
             for k, held_out in enumerate(tile_folds(training))]  # fmt: skip
    return [*folds, ("demo", training, list(DEMO_TILES))]


def bundle_run(workflow: str, log: Path, *args: str) -> None:
    """``python -m monai.bundle run <workflow>`` from the repository root, as the docs write it; output to ``log``."""
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", CONFIGS, *args]
    with open(log, "w") as handle:
        subprocess.run(
            command, cwd=BUNDLE.parent, env={**os.environ, "PYTHONPATH": "bundle"}, stdout=handle, stderr=handle,
            check=True,
        )  # fmt: skip


def fold_results(
    out: Path, fold: str, model: Path, train_tiles: list[str], test_tiles: list[str], args, statistics: str
) -> list[dict]:
    """Calibrate on slides of ``train_tiles``, evaluate slides of ``test_tiles``; one row per test slide."""
    root = out / fold
    if not (root / "cal").is_dir():
        build(root / "cal", args.tiles_dir, train_tiles, args.normals_dir, slides=args.slides, seed=1,
              normal_slides=args.cal_normal_slides, normals_part="rest")  # fmt: skip
        build(root / "test", args.tiles_dir, test_tiles, args.normals_dir, slides=args.slides, seed=2,
              normal_slides=args.test_normal_slides, normals_part="held_out")  # fmt: skip
    common = ["--ckpt_path", str(model), "--z_statistics", statistics, *args.extra]
    if args.heads:  # the fold's own head (bench/head_folds.py), trained on the fold's training tiles
        common += ["--score", "head", "--head_path", str(args.heads / fold / "head.pt")]
    cal_out, test_out = root / f"cal_{statistics}", root / f"test_{statistics}"
    bundle_run("calibrate", root / f"calibrate_{statistics}.log", "--dataset_dir", str(root / "cal"),
               "--annotation_dir", str(root / "cal"), "--output_dir", str(cal_out), *common)  # fmt: skip
    bundle_run("evaluate", root / f"evaluate_{statistics}.log", "--dataset_dir", str(root / "test"),
               "--annotation_dir", str(root / "test"), "--output_dir", str(test_out),
               "--calibration_file", str(cal_out / "calibration.json"), *common)  # fmt: skip
    return collect(root, fold, statistics)


def collect(root: Path, fold: str, statistics: str) -> tuple[list[dict], list[dict]]:
    """One row per test slide and one per lesion of a fold, from the outputs of its ``run calibrate`` and
    ``run evaluate``."""
    cal_out, test_out = root / f"cal_{statistics}", root / f"test_{statistics}"
    metrics = json.loads((test_out / "metrics.json").read_text())
    calibration = json.loads((cal_out / "calibration.json").read_text())
    table = pd.read_csv(test_out / "heatmap_summary.csv", dtype={"slide": str})
    tissue = pd.read_csv(root / "test" / SOURCES, dtype=str).set_index("slide")["tissue"]
    rows = []
    for row in table.to_dict("records"):
        slide = row["slide"]
        rows.append({
            **row, "fold": fold, "tumour_free": row["tumour_fraction"] == 0, "tissue": tissue[slide],
            "dice": metrics["per_slide"][slide]["dice"],
            "regions": len(json.loads((test_out / slide / "regions.geojson").read_text())["features"]),
            "false_mm2": metrics["tumour_free_false_positive_mm2"].get(slide),
            "z_threshold": calibration["z_threshold"], "min_region_tiles": calibration["min_region_tiles"],
            "normal_quantile": calibration.get("normal_quantile", 0.0),
            "min_slide_score": calibration.get("min_slide_score"),
            "target": calibration.get("operating_point", {}).get("target_false_regions"),
            "lesion_sensitivity": metrics["lesion_detection"]["lesion_sensitivity"],
            "froc": metrics["froc"].get("score"), "pooled_auc": metrics["pooled"]["auc"],
            "pooled_pr_auc": metrics["pooled"]["pr_auc"],
        })  # fmt: skip
    lesions = pd.read_csv(test_out / "lesions.csv", dtype={"slide": str}).assign(fold=fold)
    return rows, lesions.to_dict("records")


def interval(values: np.ndarray, statistic=np.mean, groups: np.ndarray | None = None) -> str:
    """The statistic and its 95 % interval over ``DRAWS`` resamples of the slides (of ``groups``, where values of
    one slide, such as its lesions, are resampled together)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return "-"
    if groups is None:
        members = [np.array([k]) for k in range(len(values))]
    else:
        members = [np.flatnonzero(groups == g) for g in pd.unique(groups)]
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(DRAWS):
        picked = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        draws.append(statistic(values[picked]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return f"{statistic(values):.3f} [{low:.2f}, {high:.2f}]"


def slide_keys(table: pd.DataFrame) -> np.ndarray:
    return (table["fold"] + "/" + table["slide"]).to_numpy()


def paired(rows: list[dict], lesions: list[dict], versus: list[dict], versus_lesions: list[dict]) -> None:
    """Differences from the same slides' rows of another run (``--versus``), resampled by slide: IoU per tumour slide,
    false regions and mm² per tumour-free slide, each lesion found or not; FROC by fold (4 folds: a rough interval)."""
    keys = ["fold", "slide"]
    both = pd.DataFrame(rows).merge(pd.DataFrame(versus), on=keys, suffixes=("", "_versus"), validate="one_to_one")
    tumour, normal = both[~both["tumour_free"]], both[both["tumour_free"]]
    found = pd.DataFrame(lesions).merge(pd.DataFrame(versus_lesions), on=[*keys, "lesion"], suffixes=("", "_versus"),
                                        validate="one_to_one")  # fmt: skip
    by_fold = ["froc", "froc_versus", "pooled_auc", "pooled_auc_versus", "pooled_pr_auc", "pooled_pr_auc_versus"]
    folds = both.groupby("fold")[by_fold].first()
    print(
        f"\n  paired against --versus ({len(tumour)} tumour, {len(normal)} tumour-free slides, {len(found)} lesions):"
    )
    print("  measure                          this run    --versus    difference [95 %]")
    for name, values, versus_values, groups in (
        ("IoU, tumour slides", tumour["iou"], tumour["iou_versus"], None),
        ("false regions, tumour-free slides", normal["regions"], normal["regions_versus"], None),
        ("false mm², tumour-free slides", normal["false_mm2"], normal["false_mm2_versus"], None),
        ("lesion sensitivity", found["found"], found["found_versus"], slide_keys(found)),
        ("FROC (by fold)", folds["froc"], folds["froc_versus"], None),
        ("pooled patch AUC (by fold)", folds["pooled_auc"], folds["pooled_auc_versus"], None),
        ("pooled patch PR-AUC (by fold)", folds["pooled_pr_auc"], folds["pooled_pr_auc_versus"], None),
    ):
        this, other = values.astype(float), versus_values.astype(float)
        print(f"  {name:32} {this.mean():8.3f}    {other.mean():8.3f}    {interval(this - other, groups=groups)}")


def summarise(rows: list[dict], lesions: list[dict], title: str) -> None:
    table, found = pd.DataFrame(rows), pd.DataFrame(lesions, columns=["fold", "slide", "lesion", "size", "found"])
    tumour, normal = table[~table["tumour_free"]], table[table["tumour_free"]]
    print(f"\n{title}: {len(tumour)} tumour-sparse and {len(normal)} tumour-free test slides")
    print(f"  IoU (calibrated threshold)      {interval(tumour['iou'])}    oracle {tumour['oracle_iou'].mean():.3f}")
    print(f"  Dice                            {interval(tumour['dice'])}")
    print(f"  FROC (per fold, mean)           {table.groupby('fold')['froc'].first().mean():.3f}")
    print(f"  pooled patch AUC (per fold, mean) {table.groupby('fold')['pooled_auc'].first().mean():.3f}")
    print(f"  pooled patch PR-AUC (per fold, mean) {table.groupby('fold')['pooled_pr_auc'].first().mean():.3f}")
    poisson = rate_interval(int(normal["regions"].sum()), len(normal)) if len(normal) else [np.nan] * 2
    target = table["target"].dropna().max()  # the calibrations' target (NaN: calibrated before targets existed)
    met = "met" if normal["regions"].mean() <= target else "MISSED"
    within = "" if pd.isna(target) else f"; target {target:g} {met}"
    print(f"  tumour-free slides: false regions {interval(normal['regions'])} (exact Poisson [{poisson[0]:.2f}, "
          f"{poisson[1]:.2f}]{within}), false mm² {interval(normal['false_mm2'])}, false patches "
          f"{interval(normal['fp'])}")  # fmt: skip
    for source, slides in normal.groupby("tissue"):
        print(f"    of which normal tissue from the {source} ({len(slides)} slides): false regions "
              f"{interval(slides['regions'])}")  # fmt: skip
    for size in ("all", "macro", "micro"):
        chosen = found if size == "all" else found[found["size"] == size]
        if len(chosen):
            print(f"  lesion sensitivity, {size:5} ({len(chosen):2} lesions) "
                  f"{interval(chosen['found'].astype(float), groups=slide_keys(chosen))}")  # fmt: skip
    thresholds = table.groupby("fold")[["z_threshold", "min_region_tiles", "normal_quantile", "min_slide_score"]]
    print("  calibrated per fold: " + ", ".join(
        f"{f}: z {r.z_threshold:.2f} / {r.min_region_tiles:.0f} / normal quantile {r.normal_quantile:.2f} / "
        f"slide gate {'-' if pd.isna(r.min_slide_score) else f'{r.min_slide_score:.2f}'}"
        for f, r in thresholds.first().iterrows()))  # fmt: skip


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--normals_dir", type=Path, required=True)
    cli.add_argument("--folds", type=Path, required=True, help="the OUT of bench/train_folds.py")
    cli.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt", help="the demo tiles' model")
    cli.add_argument("--out", type=Path, required=True)
    cli.add_argument("--slides", type=int, default=6, help="tumour-sparse slides per fold and set")
    cli.add_argument("--cal_normal_slides", type=int, default=12, help="tumour-free calibration slides per fold")
    cli.add_argument("--test_normal_slides", type=int, default=6, help="tumour-free test slides per fold")
    cli.add_argument("--z_statistics", nargs="+", default=["mean_std"])
    cli.add_argument("--versus", type=Path, help="the --out of another run on the same slides, for paired differences")
    cli.add_argument("--heads", type=Path, help="score head with each fold's OUT/<fold>/head.pt of bench/head_folds.py")
    cli.add_argument("extra", nargs="*", help="more bundle settings after --, e.g. -- --tta False")
    args = cli.parse_args()
    folds = [(fold, args.folds / fold / "model.pt" if fold != "demo" else args.ckpt, train_tiles, test_tiles)
             for fold, train_tiles, test_tiles in fold_tiles(args.tiles_dir)]  # fmt: skip
    for statistics in args.z_statistics:
        rows, lesions = [], []
        for fold, model, train_tiles, test_tiles in folds:
            fold_rows, fold_lesions = fold_results(args.out, fold, model, train_tiles, test_tiles, args, statistics)
            summarise(fold_rows, fold_lesions, f"{fold} ({statistics})")
            rows, lesions = rows + fold_rows, lesions + fold_lesions
        summarise(rows, lesions, f"all folds ({statistics})")
        if args.versus:
            versus = [collect(args.versus / fold, fold, statistics) for fold, *_ in folds]
            paired(rows, lesions, [r for v in versus for r in v[0]], [r for v in versus for r in v[1]])


if __name__ == "__main__":
    main()
