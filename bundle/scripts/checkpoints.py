"""Training checkpoints: written whole, never over an earlier run's, and resumed with the random state they left.

``last.pt`` (every epoch) holds all a resumed run needs; ``model.pt`` (the best validation epoch) is a bare
``state_dict`` of ``network_def``, as the Model Zoo loads it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from .atomic import atomic_path

logger = logging.getLogger(__name__)


def unwrap(module: Any) -> Any:
    """The network inside a (Distributed)DataParallel wrapper, so checkpoints load into ``network_def`` as is."""
    return (
        module.module
        if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel))
        else module
    )


class AtomicCheckpointer:
    """Save the ``state_dict`` of every object in ``save_dict`` to ``save_dir/filename`` after each epoch.

    ``engine_key`` adds the attached engine's own state (epoch, iteration) under that key, which a config cannot do
    by reference without a cycle (the engine holds this handler). With ``metric_name`` it saves only when that
    metric (lower is better, or higher with ``higher_is_better``) beats the best so far; the best score is part of
    this handler's own ``state_dict`` so that a resumed run keeps comparing against it. A ``save_dict`` of one
    object (``model.pt``) is saved as that object's bare ``state_dict``, as ignite's ``Checkpoint`` does, so it
    loads straight into ``network_def``. Writes go to a temp file in the same folder and are swapped in with
    ``os.replace``: a run killed mid-save keeps the previous file. Not ignite's ``Checkpoint`` (which MONAI's
    ``CheckpointSaver`` wraps), even with its atomic ``DiskSaver``: to keep one file of a fixed name it removes the
    old file before writing the new one (``Checkpoint.__call__``, ignite 0.5), so a kill between the two leaves no
    ``model.pt``.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict[str, Any],
        filename: str,
        metric_name: str | None = None,
        engine_key: str | None = None,
        higher_is_better: bool = False,
    ):
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.metric_name = metric_name
        self.engine_key = engine_key
        self.sign = -1.0 if higher_is_better else 1.0  # the best is kept as the lowest signed score
        self.best = math.inf

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best = float(state["best"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.metric_name is not None:
            score = self.sign * float(engine.state.metrics[self.metric_name])
            if not score < self.best:
                return
            self.best = score
        if idist.get_rank() != 0:
            return
        to_save = {**self.save_dict, self.engine_key: engine} if self.engine_key else self.save_dict
        checkpoint = {key: unwrap(obj).state_dict() for key, obj in to_save.items()}
        if len(checkpoint) == 1:
            (checkpoint,) = checkpoint.values()
        with atomic_path(self.path) as tmp:
            torch.save(checkpoint, tmp)


class RNGState:
    """The global random generators (Python, NumPy, torch) as a checkpointable object.

    Saved in ``last.pt`` after validation, so a resumed run draws the same shuffles, worker seeds, noise and skip
    dropout masks as an uninterrupted one.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])


def refuse_to_overwrite(
    ckpt_dir: str | Path, resume: bool, overwrite: bool, names: Sequence[str] = ("model.pt", "last.pt")
) -> None:
    """Stop a new run before it replaces the checkpoints ``names`` of an earlier one (a worse model would take the
    better's place as soon as its first epoch validates)."""
    existing = [name for name in names if (Path(ckpt_dir) / name).is_file()]
    if existing and not resume and not overwrite:
        raise FileExistsError(
            f"ckpt_dir {ckpt_dir} already holds {' and '.join(existing)} from an earlier run; pass --resume True to "
            "continue it, --overwrite True to replace it, or another --ckpt_dir."
        )


def resume_from(path: str | Path, to_load: dict[str, Any]) -> None:
    """Restore every object of ``to_load`` (network, optimiser, trainer, checkpointer state) from ``path``.

    The trainer keeps the ``max_epochs`` it was configured with, not the one saved, so a finished run can be extended.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} not found; run once without --resume True, or point --ckpt_dir at it.")
    trainer = to_load.get("trainer")
    max_epochs = trainer.state.max_epochs if trainer is not None else None
    Checkpoint.load_objects(to_load=to_load, checkpoint=torch.load(path, map_location="cpu", weights_only=False))
    if trainer is not None:
        if trainer.state.epoch >= max_epochs:
            raise ValueError(f"resume: {path} has already run {trainer.state.epoch} epochs; raise --max_epochs.")
        trainer.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d", path, trainer.state.epoch)
