"""Detection quality of every anomaly score and of label-free one-number baselines on real CAMELYON16 tiles.

    python bench/detection_quality.py --tiles_dir ../shared/data/camelyon16_tiles [--ckpt bundle/models/model.pt]
    python bench/detection_quality.py --tiles_dir ../shared/data/camelyon16_tiles --ensemble CKPT CKPT ...
    python bench/detection_quality.py --tiles_dir ../shared/data/camelyon16_tiles --folds OUT  (bench/train_folds.py)

Each 512-px tile is cut into a 5 x 5 grid of 96-px patches (~0.972 µm/px), stain-normalised with a Macenko fit per
tile, and labelled by the PCam centre rule from its tumour mask. Prints, for the 8 held-out demo tiles and for the
other 24 (whose normal parts the model was trained on, so their numbers are optimistic), the patch AUC-ROC and
PR-AUC of each score and baseline. Baselines use a direction fixed before looking at labels (higher optical
density, higher OD spread and lower brightness = anomalous) and are also shown in both directions, labelled.
AUC, PR-AUC and IoU use a per-tile z-score (each tile treated as a slide of its own); "AUC 1 slide" ranks the raw
scores of all tiles together, as on the demo slide that stitches them (a per-slide z-score does not change a ranking
within one slide); "AUC in tile" is the mean of each tile's own AUC (tiles holding both classes), which no
normalisation across tiles affects; "AUC 95% CI" resamples the tiles (1,000 draws). IoU uses a threshold calibrated
leave-one-tile-out on the other held-out tiles and no region filter (a 5 x 5 grid is too small for one); the
per-tile oracle IoU is shown beside it. The ``latent`` score is shown over all the latent's principal components and
over its minor components only (``--ignored_variance``: the share of the normal latents' variance left out, as
inference.json's ``latent_ignored_variance`` does). With ``--ensemble`` it reports
only the ``latent`` score (all components) of each checkpoint, in one orientation and with ``tta``, and of the
ensemble of them all. With ``--folds`` every tile is scored by a model that never saw it (tile cross-validation: the
three fold models of ``bench/train_folds.py`` on their held-out training tiles, ``--ckpt`` on the demo tiles), so the
comparison with the baselines rests on 32 held-out tiles instead of 8. The default score is also compared with each
baseline in its better direction, with the tile-resampled interval of the difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, as_batch
from monai.bundle import ConfigParser
from skimage import io

from scripts.datasets import DEMO_TILES, read_tumour_mask
from scripts.metrics import overlap, pr_auc, roc_auc
from scripts.model_files import load_network, read_normal_stats
from scripts.scores import SCORES, AnomalyScoreInferer
from scripts.stain import StainNormalizer, optical_density
from scripts.transforms import ChannelStats, PrepareSlideBatch

PATCH, GRID = 96, 5
THRESHOLDS = np.linspace(-3, 5, 100)
BOOTSTRAP_DRAWS = 1000
BASELINES = ("mean optical density", "std of optical density", "darkness (-mean brightness)")
TTA_SCORE = "latent, tta"
ONE_ORIENTATION = "latent, one orientation"
VERSUS = "latent, tta, versus models"
FOLD_SIZE = 8


def tile_patches(tiles_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw HWC uint8 patches of one tile and their PCam centre-rule labels."""
    image = io.imread(tiles_dir / "images" / f"{name}.jpg")[..., :3]
    tumour = read_tumour_mask(tiles_dir / "masks" / f"{name}.jpg")
    patches, labels = [], []
    for i in range(GRID):
        for j in range(GRID):
            y, x = i * PATCH, j * PATCH
            patches.append(image[y : y + PATCH, x : x + PATCH])
            labels.append(int(tumour[y + 32 : y + 64, x + 32 : x + 64].any()))
    return np.stack(patches), np.array(labels)


def baselines(patches: np.ndarray) -> dict[str, np.ndarray]:
    """Label-free statistics, oriented so that higher is (assumed) more anomalous."""
    od = optical_density(patches.reshape(len(patches), -1, 3)).mean(2)  # per pixel, over the channels
    return dict(zip(BASELINES, (od.mean(1), od.std(1), -patches.reshape(len(patches), -1).mean(1)), strict=True))


def model_scores(patches: np.ndarray, network, inferers: dict, prepare_batch: PrepareSlideBatch) -> dict:
    stain_fit = prepare_batch.stain.slide_fit(list(patches))
    x, _ = prepare_batch.for_slide(stain_fit)({"image": as_batch(patches)})
    with torch.inference_mode():
        return {name: inferer(x, network).numpy() for name, inferer in inferers.items()}


def collect(tiles_dir: Path, names: list[str], scorers: list[tuple]) -> list[dict]:
    """Each tile's labels, baselines and the scores of every ``(network, inferers, prepare_batch)`` in ``scorers``;
    a tile is read once however many models or preprocessings score it."""
    tiles = []
    for name in names:
        patches, labels = tile_patches(tiles_dir, name)
        tile = {"name": name, "labels": labels, **baselines(patches)}
        for network, inferers, prepare_batch in scorers:
            tile.update(model_scores(patches, network, inferers, prepare_batch))
        tiles.append(tile)
    return tiles


def zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() or 1.0)


def iou_at(tiles: list[dict], key: str, threshold: float) -> float:
    return float(np.mean([overlap(zscore(t[key]) > threshold, t["labels"])["iou"] for t in tiles]))


def pooled_auc(tiles: list[dict], key: str) -> float:
    """AUC of the per-tile z-scores of ``key`` over all patches of ``tiles`` (each tile a slide of its own)."""
    labels = np.concatenate([t["labels"] for t in tiles])
    return roc_auc(np.concatenate([zscore(t[key]) for t in tiles]), labels)


def tile_bootstrap(tiles: list[dict], statistic, draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float]:
    """95 % interval of ``statistic(tiles)`` with the tiles resampled: the patches of one tile are not independent
    samples, so the tile is the unit of resampling."""
    rng = np.random.default_rng(0)
    values = [statistic([tiles[k] for k in rng.integers(0, len(tiles), len(tiles))]) for _ in range(draws)]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def report(tiles: list[dict], keys: list[str], title: str) -> None:
    labels = np.concatenate([t["labels"] for t in tiles])
    print(f"\n{title}: {len(tiles)} tiles, {len(labels)} patches, {labels.mean():.0%} tumour (PCam centre rule)")
    header = f"{'score':<38}{'AUC':>7}{'AUC rev':>9}{'PR-AUC':>8}{'IoU LOTO':>10}{'oracle IoU':>12}{'AUC 1 slide':>13}"
    print(header + f"{'AUC in tile':>13}{'AUC 95% CI':>14}")
    mixed = [t for t in tiles if 0 < t["labels"].mean() < 1]  # a tile's own AUC needs both classes
    for key in keys:
        scores = np.concatenate([zscore(t[key]) for t in tiles])
        held_out = []
        for k, tile in enumerate(tiles):
            others = tiles[:k] + tiles[k + 1 :]
            best = max(THRESHOLDS, key=lambda th, others=others: iou_at(others, key, th))
            held_out.append(iou_at([tile], key, best))
        oracle = np.mean([max(iou_at([t], key, th) for th in THRESHOLDS) for t in tiles])
        auc, ap = pooled_auc(tiles, key), pr_auc(scores, labels)
        pooled = roc_auc(np.concatenate([t[key] for t in tiles]), labels)
        within = np.mean([roc_auc(t[key], t["labels"]) for t in mixed])
        low, high = tile_bootstrap(tiles, lambda sample, key=key: pooled_auc(sample, key))
        print(
            f"{key:<38}{auc:>7.3f}{1 - auc:>9.3f}{ap:>8.3f}{np.mean(held_out):>10.3f}{oracle:>12.3f}{pooled:>13.3f}"
            f"{within:>13.3f}{f'{low:.2f}-{high:.2f}':>14}"
        )


def paired_difference(tiles: list[dict], key: str, other: str, label: str) -> None:
    """``key``'s AUC minus ``other``'s on the same patches, with the 95 % interval of the difference when the tiles
    are resampled (draw by draw, so what the two share cancels)."""

    def difference(sample: list[dict]) -> float:
        return pooled_auc(sample, key) - pooled_auc(sample, other)

    low, high = tile_bootstrap(tiles, difference)
    print(f"  {label:<60}{difference(tiles):>+8.3f}   95% CI {low:+.3f} to {high:+.3f}")


def compare(tiles: list[dict], key: str) -> None:
    """``key``'s AUC minus each baseline's, the baseline taken in whichever direction does better on these tiles (so
    the comparison is with its best, sign chosen after the fact), with the 95 % interval of the difference when the
    tiles are resampled: two scores measured on the same patches are compared draw by draw."""
    print(f"\n{key} against each baseline in its better direction (per-tile z AUC difference, tiles resampled):")
    for baseline in BASELINES:
        if pooled_auc(tiles, baseline) < 0.5:  # reversed: the negated statistic's AUC is exactly 1 - AUC
            label = f"{baseline} reversed"
            paired = [{**tile, label: -tile[baseline]} for tile in tiles]
        else:
            label, paired = baseline, tiles
        paired_difference(paired, key, label, f"minus {label}")


def ensemble(tiles_dir: Path, names: list[str], parser: ConfigParser, ckpts: list[Path]) -> tuple[list, list[str]]:
    """``latent`` of each checkpoint, in one orientation and with ``tta``, and of their ensemble: the Mahalanobis
    distance over the members' concatenated mu with a block-diagonal precision, i.e. the root of the summed squares."""
    scorers, keys = [], []
    for i, ckpt in enumerate(ckpts):
        # a network of its own (lazy=False): the parser would hand every member the same instance
        network = load_network(parser.get_parsed_content("network_def", lazy=False), ckpt, "cpu")
        inferers = {f"member {i}": AnomalyScoreInferer.from_checkpoint("latent", ckpt),
                    f"member {i}, tta": AnomalyScoreInferer.from_checkpoint("latent", ckpt, tta=True)}  # fmt: skip
        scorers.append(
            (network, inferers, PrepareSlideBatch(StainNormalizer("slide"), ChannelStats.from_checkpoint(ckpt)))
        )
        keys += list(inferers)
    tiles = collect(tiles_dir, names, scorers)
    for suffix in ("", ", tta"):
        for tile in tiles:
            tile["ensemble" + suffix] = np.sqrt(sum(tile[f"member {i}{suffix}"] ** 2 for i in range(len(ckpts))))
    return tiles, keys + ["ensemble", "ensemble, tta"]


def latent_inferers(ckpt: Path, ignored_variance: float) -> dict[str, AnomalyScoreInferer]:
    """The default score (``latent`` with ``tta``) and its minor-component variant, the rows every mode reports."""
    minor = f"latent minor ({ignored_variance:.0%} ignored), tta"
    return {
        TTA_SCORE: AnomalyScoreInferer.from_checkpoint("latent", ckpt, tta=True),
        minor: AnomalyScoreInferer.from_checkpoint("latent", ckpt, tta=True, latent_ignored_variance=ignored_variance),
    }


def tile_folds(training: list[str]) -> list[list[str]]:
    """The training tiles in runs of ``FOLD_SIZE`` by name: what each fold model of ``bench/train_folds.py`` leaves
    out (consecutive names keep neighbouring tiles, often of one slide, on the same side)."""
    return [training[i : i + FOLD_SIZE] for i in range(0, len(training), FOLD_SIZE)]


def cross_validation(
    tiles_dir: Path, training: list[str], demo: list[str], parser: ConfigParser, folds_dir: Path, ckpt: Path,
    ignored_variance: float,
) -> tuple[list[dict], list[str]]:  # fmt: skip
    """Scores of every tile by a model that never saw it: fold k's model (``folds_dir/fold<k>/model.pt``, trained by
    ``bench/train_folds.py`` without the k-th of ``tile_folds``) on those tiles, and
    ``ckpt`` on the demo tiles; also the default score without stain normalisation (the model trains on raw colours)."""
    folds = [(folds_dir / f"fold{k}" / "model.pt", names) for k, names in enumerate(tile_folds(training))]
    tiles, keys = [], []
    for model, names in [*folds, (ckpt, demo)]:
        print(f"{model}: {' '.join(names)}")
        network = load_network(parser.get_parsed_content("network_def"), model, "cpu")
        inferers = {**latent_inferers(model, ignored_variance),
                    ONE_ORIENTATION: AnomalyScoreInferer.from_checkpoint("latent", model)}  # fmt: skip
        norm_stats = ChannelStats.from_checkpoint(model)
        raw_colour = {"latent, tta, no stain normalisation": inferers[TTA_SCORE]}
        tiles += collect(tiles_dir, names, [
            (network, inferers, PrepareSlideBatch(StainNormalizer("slide"), norm_stats)),
            (network, raw_colour, PrepareSlideBatch(StainNormalizer("none"), norm_stats)),
        ])  # fmt: skip
        keys = list(inferers) + list(raw_colour)
    return tiles, keys


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt")
    cli.add_argument("--channels", default=None, help="network widths, if not those of inference.json")
    cli.add_argument("--latent_channels", type=int, default=None)
    cli.add_argument("--ensemble", type=Path, nargs="+", help="checkpoints: each one's latent score and their ensemble")
    cli.add_argument("--ignored_variance", type=float, default=0.5, help="for the minor-component latent rows")
    cli.add_argument(
        "--folds", type=Path, help="folder of bench/train_folds.py: score every tile by a model that never saw it"
    )
    cli.add_argument("--versus_folds", type=Path, help="with --folds: another train_folds.py folder, compared paired")
    cli.add_argument("--versus_ckpt", type=Path, help="with --versus_folds: its model for the demo tiles")
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    if args.channels:
        parser["channels"] = json.loads(args.channels)
    if args.latent_channels:
        parser["latent_channels"] = args.latent_channels
    names = sorted(p.stem for p in (args.tiles_dir / "images").glob("*.jpg"))
    demo = [n for n in names if n in DEMO_TILES]
    groups = {
        "held-out demo tiles": demo,
        "training tiles (normal parts seen in training)": sorted(set(names) - set(demo)),
    }
    if args.folds:
        training = groups["training tiles (normal parts seen in training)"]
        tiles, keys = cross_validation(
            args.tiles_dir, training, demo, parser, args.folds, args.ckpt, args.ignored_variance
        )
        if args.versus_folds:
            versus, _ = cross_validation(
                args.tiles_dir,
                training,
                demo,
                parser,
                args.versus_folds,
                args.versus_ckpt or args.ckpt,
                args.ignored_variance,
            )
            for tile, other in zip(tiles, versus, strict=True):
                tile[VERSUS] = other[TTA_SCORE]
            keys.append(VERSUS)
        for k in range(0, len(tiles), FOLD_SIZE):
            report(
                tiles[k : k + FOLD_SIZE],
                keys + list(BASELINES),
                f"tiles {tiles[k]['name']}-{tiles[k + FOLD_SIZE - 1]['name']}",
            )
        report(tiles, keys + list(BASELINES), "every tile, each scored by a model that never saw it")
        compare(tiles, TTA_SCORE)
        print("\npaired differences (per-tile z AUC, tiles resampled):")
        paired_difference(tiles, TTA_SCORE, ONE_ORIENTATION, "tta minus one orientation")
        if args.versus_folds:
            paired_difference(tiles, TTA_SCORE, VERSUS, f"{args.folds.name} minus {args.versus_folds.name} (both tta)")
        return
    if args.ensemble:
        print("\n".join(f"member {i}: {ckpt}" for i, ckpt in enumerate(args.ensemble)))
        for title, group in groups.items():
            tiles, keys = ensemble(args.tiles_dir, group, parser, args.ensemble)
            report(tiles, keys + list(BASELINES), title)
        return
    network = load_network(parser.get_parsed_content("network_def"), args.ckpt, "cpu")
    has_latent = "latent_stats" in read_normal_stats(args.ckpt)
    inferers = {s: AnomalyScoreInferer.from_checkpoint(s, args.ckpt) for s in SCORES if s != "latent" or has_latent}
    if has_latent:
        ignored = args.ignored_variance
        inferers[f"latent minor ({ignored:.0%} ignored)"] = AnomalyScoreInferer.from_checkpoint(
            "latent", args.ckpt, latent_ignored_variance=ignored
        )
        inferers.update(latent_inferers(args.ckpt, ignored))
    print(f"checkpoint {args.ckpt}" + ("" if has_latent else " (no latent_stats: 'latent' score skipped)"))
    prepare_batch = PrepareSlideBatch(StainNormalizer("slide"), ChannelStats.from_checkpoint(args.ckpt))
    for title, group in groups.items():
        tiles = collect(args.tiles_dir, group, [(network, inferers, prepare_batch)])
        report(tiles, list(inferers) + list(BASELINES), title)
        if has_latent:
            compare(tiles, TTA_SCORE)


if __name__ == "__main__":
    main()
