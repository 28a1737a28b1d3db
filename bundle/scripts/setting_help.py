"""One line on each setting of the shipped configs, grouped by the stage it acts on, for ``--help``.

A setting missing here is listed under "Other" and fails a test, so a new knob cannot ship undescribed.
"""

from __future__ import annotations

STAGES: dict[str, dict[str, str]] = {
    "Data": {
        "dataset_dir": "folder of the slides (inference) or of the training data (training)",
        "datalist": "JSON or CSV list of slides, instead of dataset_dir",
        "data_source": "training data: pcam (HDF5), tiles (images/ + masks/), wsi (normal slides), patches; "
        "train_head: pcam, tiles or folders (normal/ and tumour/)",
        "normals_dir": "folder of normal patch images mixed into any training source",
        "normals_holdout": "fraction of normals_dir never trained on (kept for calibration slides)",
        "exclude": "tile names left out of tiles training (the demo slide's by default)",
        "annotation_dir": "tumour annotations (ASAP XML, GeoJSON, mask TIFF), matched by slide id",
        "tumour_free_slides": "slide ids or patterns that are tumour-free without an annotation file",
        "reference_csv": "CAMELYON16 reference.csv with each slide's label, for the slide-level AUC",
    },
    "Outputs": {
        "output_dir": "where results go: a folder per slide and summary.csv (training: runs and logs)",
        "ckpt_dir": "where training writes model.pt, normal_stats.pt and last.pt (train_head: head.pt, head_last.pt)",
        "overwrite": "redo finished slides / replace an existing trained model",
        "strict": "exit non-zero when any slide of the cohort failed",
        "patch_detections": "also write patches.geojson: each patch a QuPath detection with its z and score",
        "resume": "continue training from ckpt_dir/last.pt",
    },
    "Model": {
        "ckpt_path": "the weights (normal_stats.pt is read from beside them)",
        "channels": "encoder widths per level (must match the weights)",
        "latent_channels": "latent channels (must match the weights)",
    },
    "Tiling and reading": {
        "wsi_reader": "slide reader through MONAI's WSIReader: cuCIM, OpenSlide or tifffile",
        "read_device": "where tiles are decoded (cpu only: GPU decoding measured slower)",
        "assume_mpp": "µm/px to use for a slide that records none (otherwise it is refused)",
        "target_mpp": "µm/px the model reads at (recorded with the weights)",
        "patch_size": "patch side in pixels (recorded with the weights)",
        "stride": "grid step in pixels at target_mpp (patch_size: no overlap)",
        "min_tissue": "minimum tissue fraction for a patch to be scored or trained on",
        "read_block": "patches per side read in one region (each stored tile decoded once)",
    },
    "Score": {
        "stain_mode": "Macenko stain normalisation: slide (one fit a slide), per_patch or none",
        "score": "anomaly score: latent (distance from normal latents), rarity, l1, ..., or head (supervised)",
        "head_path": "score head: the head.pt that train_head wrote for these weights",
        "tta": "average the score over the 8 flips and turns (about 5x the time)",
        "latent_ignored_variance": "share of the normal latents' leading variance the latent score leaves out",
        "rarity_neighbours": "rarity score: nearest patches of the same slide compared",
        "rarity_exclusion": "rarity score: neighbourhood (in patches) left out of the comparison",
    },
    "Decision": {
        "calibration_file": "calibration.json that sets z_threshold, min_region_tiles, normal_quantile and "
        "min_slide_score",
        "z_statistics": "per-slide z-score from mean_std or median_mad",
        "z_threshold": "per-slide z-score a patch must reach to be called",
        "min_region_tiles": "smallest called region, in patches",
        "normal_quantile": "quantile of the training normals' scores a patch must also exceed (0: off)",
        "min_slide_score": "slide gate: no region on a slide whose score (highest 3x3-patch mean z) is below it "
        "(-inf: off)",
        "domain_limit": "colour distance above which a slide is flagged out of domain",
    },
    "Evaluation": {
        "target_false_regions": "calibrate finds the most lesions with at most this many false regions per "
        "tumour-free slide",
        "label_rule": "patch label from its annotation: centre pixel or tumour fraction",
        "min_tumour_fraction": "tumour fraction that makes a patch tumour under the fraction rule",
        "sweep_thresholds": "z thresholds calibrate tries",
        "sweep_min_region_tiles": "minimum region sizes calibrate tries",
        "sweep_normal_quantiles": "normal_quantile values calibrate tries",
    },
    "Training": {
        "seed": "random seed of splits, initialisation and augmentation",
        "max_epochs": "epochs at most",
        "learning_rate": "AdamW learning rate",
        "skip_dropout": "probability of dropping each skip connection while training",
        "recon_loss": "reconstruction loss: l1 or mse",
        "beta": "final weight of the KL term",
        "beta_warmup_epochs": "epochs over which beta rises from 0",
        "capacity_max": "final free KL capacity C in nats",
        "capacity_epochs": "epochs over which C rises from 0",
        "track_capacity": "penalise |KL - C| (Burgess) instead of max(KL - C, 0)",
        "denoise_sigma": "noise added to the input (the clean patch is the target)",
        "hed_jitter": "HED stain jitter as augmentation",
        "patience": "epochs without improvement before early stop",
        "select_metric": "validation metric that picks the best model",
        "head_hidden": "train_head: hidden units of the head (latent -> hidden -> 1 logit)",
        "head_dropout": "train_head: dropout before the head's last layer",
        "class_balance": "train_head: pos_weight (the loss weighs both classes alike) or none",
        "val_interval": "epochs between validations",
        "val_fraction": "share of patches, tiles or slides held out for validation",
        "stats_samples": "patches sampled for the channel statistics",
        "latent_stats_samples": "patches whose latents fit the normal Gaussian",
        "preload": "decode the training patches once into memory",
        "loader_workers": "DataLoader workers while training (0 with preload)",
    },
    "Compute": {
        "device": "cpu, cuda or cuda:N (cuda when available)",
        "batch_size": "patches a batch",
        "num_workers": "worker processes reading patches",
        "amp": "fp16 autocast on a GPU (measured slower on an H200)",
        "pin_memory": "pinned host memory for transfers to a GPU",
        "cudnn_benchmark": "let cuDNN pick kernels by timing",
        "channels_last": "channels-last memory format for the network",
        "cpu_bf16": "bf16 autocast on CPUs with native bf16 units",
        "overlap": "prepare the next slide and write the last while a slide is scored (auto: beside a GPU)",
        "trim_memory_every": "batches between handing freed heap memory back to the system",
        "shard_index": "this process's share of the cohort (torchrun sets it)",
        "num_shards": "processes sharing the cohort (torchrun sets it)",
    },
}

DESCRIPTIONS = {name: (stage, text) for stage, settings in STAGES.items() for name, text in settings.items()}
