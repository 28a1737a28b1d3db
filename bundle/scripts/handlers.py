"""Ignite handlers for the beta-VAE workflows: loss schedules, a reconstruction grid, the normal statistics, memory,
NaN losses."""

from __future__ import annotations

import ctypes
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TerminateOnNan
from torch.utils.tensorboard import SummaryWriter

from .checkpoints import unwrap
from .domain import colour_descriptors, fit_colour_stats
from .gaussian import fit_gaussian, mahalanobis
from .model_files import read_normal_stats, read_weights, save_normal_stats, stats_path
from .scores import SCORE_QUANTILES
from .transforms import ChannelStats

logger = logging.getLogger(__name__)


class ConsoleProgress:
    """Ignite's progress bar where the console is a terminal; in a file or a pipe, where a redrawn bar is one line of
    carriage returns, a plain log line every ``every_seconds`` instead."""

    def __init__(self, desc: str, every_seconds: float = 30.0) -> None:
        self.desc = desc
        self.every_seconds = every_seconds
        self._last = 0.0

    def attach(self, engine: Engine) -> None:
        if sys.stderr.isatty():
            ProgressBar(desc=self.desc, persist=False).attach(engine)
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._restart)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._log)

    def _restart(self, engine: Engine) -> None:
        self._last = time.monotonic()

    def _log(self, engine: Engine) -> None:
        if time.monotonic() - self._last < self.every_seconds:
            return
        self._last = time.monotonic()
        done, total = (engine.state.iteration - 1) % engine.state.epoch_length + 1, engine.state.epoch_length
        logger.info("%s: %d/%d batches (%d %%)", self.desc, done, total, 100 * done // total)


class LinearScheduleHandler:
    """Set ``target.<attribute>`` at the start of every epoch, linear from ``start`` to ``end`` over ``epochs``.

    The value is a function of ``engine.state.epoch`` alone, so a run resumed from a checkpoint (which restores the
    epoch) continues the schedule exactly where it stopped. The value is also put in ``engine.state.metrics[name]``
    so StatsHandler and TensorBoardStatsHandler log it with the epoch's metrics.
    """

    def __init__(
        self, target: Any, attribute: str, end: float, epochs: int, start: float = 0.0, name: str | None = None
    ):
        if not hasattr(target, attribute):
            raise AttributeError(f"{type(target).__name__} has no attribute {attribute!r} to schedule.")
        self.target = target
        self.attribute = attribute
        self.start = float(start)
        self.end = float(end)
        self.epochs = int(epochs)
        self.name = name or attribute

    def value(self, epoch: int) -> float:
        """The value during 1-based ``epoch``: ``start`` in epoch 1, ``end`` from epoch ``epochs + 1`` on."""
        progress = 1.0 if self.epochs <= 0 else min(1.0, (epoch - 1) / self.epochs)
        return self.start + (self.end - self.start) * progress

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        value = self.value(engine.state.epoch)
        setattr(self.target, self.attribute, value)
        engine.state.metrics[self.name] = value


class ReconstructionGridHandler:
    """Write the first validation batch's inputs above their reconstructions to TensorBoard after every epoch.

    The first thing to look at when training: a blur means the latent is unused, a perfect copy means the skips are.
    Images are mapped back from the normalised space with the training ``ChannelStats``.
    """

    def __init__(self, log_dir: str, stats: ChannelStats, max_images: int = 8, tag: str = "val/input_vs_recon"):
        self.log_dir = log_dir
        self.stats = stats
        self.max_images = max_images
        self.tag = tag
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if (engine.state.iteration - 1) % engine.state.epoch_length != 0:
            return
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        output = engine.state.output
        images = output["image"][: self.max_images].detach().float().cpu()
        recon = output["pred"][0][: self.max_images].detach().float().cpu()
        mean = torch.tensor(self.stats.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.stats.std).view(1, -1, 1, 1)
        rows = [torch.cat(list(batch * std + mean), dim=-1) for batch in (images, recon)]
        grid = torch.cat(rows, dim=-2).clamp(0, 1)
        self._writer.add_image(self.tag, grid, global_step=engine.state.epoch)
        self._writer.flush()


class LatentStatsHandler:
    """When training completes, fit a Gaussian to the latent means of normal patches and write ``normal_stats.pt``.

    The ``latent`` anomaly score is the Mahalanobis distance of a patch's mu from this Gaussian. It is fitted with the
    best weights (loaded from ``checkpoint_path``) and saved with ``norm_stats`` beside them
    (``scripts.model_files``), on up to ``max_samples`` patches of ``dataset`` put through
    ``prepare_batch`` (the validation one: normalised, no noise), with the covariance shrunk
    towards a scaled identity by ``shrinkage`` so that it stays invertible when the latent has more dimensions than
    there are patches. ``tiling`` (the training's ``target_mpp`` and ``patch_size``) is recorded with them.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        dataset: Any,
        prepare_batch: Callable,
        checkpoint_path: str | Path,
        norm_stats: ChannelStats,
        batch_size: int = 128,
        max_samples: int = 20000,
        shrinkage: float = 0.1,
        seed: int = 42,
        tiling: dict[str, float | int] | None = None,
    ):
        self.network = network
        self.dataset = dataset
        self.prepare_batch = prepare_batch
        self.checkpoint_path = Path(checkpoint_path)
        self.norm_stats = norm_stats
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.shrinkage = shrinkage
        self.seed = seed
        self.tiling = tiling

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or not self.checkpoint_path.is_file() or not _loss_is_finite(engine):
            return
        self.write()

    def _keep_recorded_tiling(self) -> None:
        """Refuse to write a tiling other than the one already recorded for these weights: the record says what the
        model was trained at, which refitting statistics does not change."""
        if not stats_path(self.checkpoint_path).is_file():
            return
        try:
            recorded = read_normal_stats(self.checkpoint_path).get("tiling")
        except ValueError:  # statistics of other weights: replaced by these
            return
        if (
            recorded
            and self.tiling
            and any(not math.isclose(recorded[k], self.tiling[k], rel_tol=1e-6) for k in ("target_mpp", "patch_size"))
        ):
            raise ValueError(
                f"{stats_path(self.checkpoint_path)} records that the model was trained at target_mpp "
                f"{recorded['target_mpp']}, patch_size {recorded['patch_size']}, not the {self.tiling['target_mpp']}, "
                f"{self.tiling['patch_size']} given; pass --target_mpp {recorded['target_mpp']} --patch_size "
                f"{recorded['patch_size']}."
            )

    def write(self) -> Path:
        """Fit the statistics for the weights in ``checkpoint_path`` and write them; also run on its own by the
        training config's ``write_normal_stats`` workflow, for a model whose statistics lack one."""
        self._keep_recorded_tiling()
        network = unwrap(self.network)
        network.load_state_dict(read_weights(self.checkpoint_path))
        network.eval()
        device = next(network.parameters()).device
        generator = torch.Generator().manual_seed(self.seed)
        indices = torch.randperm(len(self.dataset), generator=generator)[: self.max_samples].tolist()
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.dataset, indices), batch_size=self.batch_size)
        mus, colours = [], []
        with torch.inference_mode():
            for batch in loader:
                colours.append(colour_descriptors(torch.as_tensor(batch["image"])))
                mus.append(network.encode(self.prepare_batch(batch, device)[0])[0].flatten(1).double().cpu())
        mu = torch.cat(mus)
        gaussian = fit_gaussian(mu, shrinkage=self.shrinkage)
        scores = mahalanobis(mu, gaussian["mean"], gaussian["precision"])
        probabilities = torch.linspace(0, 1, SCORE_QUANTILES, dtype=scores.dtype)
        latent_stats = {
            "mean": gaussian["mean"].float(), "precision": gaussian["precision"].float(), "num_samples": len(mu),
            "score_quantiles": torch.quantile(scores, probabilities).float(),
        }  # fmt: skip
        colour_stats = fit_colour_stats(np.concatenate(colours)) if len(mu) >= 4 else None
        path = save_normal_stats(
            self.checkpoint_path, network, self.norm_stats.state_dict(), latent_stats, colour_stats, self.tiling
        )
        logger.info("latent and colour statistics of %d normal patches written to %s", len(mu), path)
        return path


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


class ReleaseFreedMemory:
    """Every ``every`` iterations and at the end of a run, hand the heap's free pages back to the OS (``malloc_trim``).

    glibc raises its mmap threshold after the first large free, so batch-sized tensors then come from the heap, and
    the heap fragments: streaming a 3,860-patch slide, the inference process grew by ~700 MB of freed but unreturned
    pages, about 40 MB a batch, until it levelled off. Trimming bounds that to about ``every`` batches' worth; each
    trim costs the page faults of the memory it returned (``bench/memory.py``, ``bench/infer_throughput.py``).
    Without glibc it does nothing.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.trim = _glibc_malloc_trim()

    def attach(self, engine: Engine) -> None:
        if self.trim is not None and self.every > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every) | Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.trim(0)


class TerminateOnNanHandler(TerminateOnNan):
    """ignite's ``TerminateOnNan`` with the ``attach`` that MONAI engines call on their handlers."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)


def _last_loss(engine: Engine) -> float | None:
    """The loss of the engine's last iteration, detached from its graph; None before any iteration."""
    output = engine.state.output
    if not isinstance(output, dict) or "loss" not in output:
        return None
    return float(torch.as_tensor(output["loss"]).detach())


def _loss_is_finite(engine: Engine) -> bool:
    loss = _last_loss(engine)
    return loss is None or math.isfinite(loss)


def raise_if_stopped_on_nan(
    trainer: Engine, ckpt_dir: str | Path, best_file: str = "model.pt", remedy: str = "--learning_rate or --beta"
) -> None:
    """After ``trainer.run()``: turn a stop by ignite's ``TerminateOnNan`` into an error with a clear message.

    The checkpoints need no repair: ``best_file`` is only replaced after a finite, better validation score.
    """
    if not _loss_is_finite(trainer):
        raise RuntimeError(
            f"training stopped: the loss became {_last_loss(trainer)} at epoch {trainer.state.epoch}, "
            f"iteration {trainer.state.iteration}; {Path(ckpt_dir) / best_file} still holds the best finite model. "
            f"Lower {remedy}, or check the data for blank patches."
        )
