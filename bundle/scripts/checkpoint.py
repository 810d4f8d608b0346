"""Checkpoints: written atomically, read as tensors only, resumed exactly; clear errors for bad files."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver
from torch import nn

from .folder_lock import FolderLock
from .options import as_bool

__all__ = [
    "require_checkpoint",
    "load_checkpoint",
    "load_weights",
    "WeightsLoader",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "SelectionState",
    "latest_checkpoint",
    "resume_training",
]

LATEST = re.compile(r"^latest_checkpoint_epoch=(\d+)\.pt$")  # the names of the latest-state checkpoints
PARTIAL = ".partial"  # suffix of a checkpoint being written; one left in model_dir is a killed run's
logger = logging.getLogger(__name__)

MAX_LISTED = 20  # mismatching keys shown per kind


def load_checkpoint(path: str, map_location: str | torch.device | None = None) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file holds objects other than tensors, numbers, strings and containers of them
            (a pickle that could run code when loaded is refused, never executed), or it is truncated or
            not a checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} was refused: it holds objects that are not tensors or plain values, and loading it could "
            f"run code (torch.load(weights_only=True) stopped at: {reason}). This bundle writes only tensors and "
            "numbers; load only checkpoints whose origin you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or not a torch file): {error}") from None


def require_checkpoint(path: str) -> str:
    """``path``, or an error saying how to get one: the first step of evaluation, t-SNE and inference, so that a
    missing model is named before any data is read (initialize does not need one: the model zoo's checks run it
    on a bundle without weights)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"ckpt_path: {path} not found; train first, or point --model_dir (or --ckpt_path) at a trained model"
        )
    return path


def load_weights(network: nn.Module, path: str, map_location: str | torch.device | None = None) -> nn.Module:
    """Loads a flat state dict (``model.pt``) into ``network``, listing every mismatch if it does not fit.

    Returns:
        ``network``.
    """
    state = load_checkpoint(path, map_location)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors (model.pt); a training checkpoint?")
    check_fits(network, state, path)
    network.load_state_dict(state)
    return network


def check_fits(network: nn.Module, state: dict, path: str) -> None:
    """Raises an error listing every missing, unexpected and mis-shaped key of ``state`` for ``network``."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("shape mismatches", shapes), ("missing from the checkpoint", missing)):
            parts += [f"{len(keys)} {title}:"] + [f"  {k}" for k in keys[:MAX_LISTED]] if keys else []
        if unexpected:
            parts += [f"{len(unexpected)} not in the network:"] + [f"  {k}" for k in unexpected[:MAX_LISTED]]
        raise ValueError(
            f"{path} does not fit the network of this config (check class_names/num_classes, variant, width, "
            "depths, stems, ema_decay: the dataset overlay and recipe used for training):\n" + "\n".join(parts)
        )


class WeightsLoader:
    """Loads ``model.pt`` into the network when the engine starts (:func:`load_weights`).

    Args:
        network: the network of the workflow.
        path: the flat state dict written by training.
        map_location: device of the loaded tensors.
    """

    def __init__(self, network: nn.Module, path: str, map_location: str | torch.device | None = None) -> None:
        self.network, self.path, self.map_location = network, path, map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_weights(self.network, self.path, self.map_location)
        engine.logger.info(f"Restored the network's weights from {self.path}")


class AtomicDiskSaver(DiskSaver):
    """Writes each checkpoint to ``<name>.<pid>.partial`` and renames it into place, and deletes the checkpoint
    it replaces only after that, so that a process killed at any moment leaves a complete checkpoint
    (MONAI's CheckpointSaver writes in place, and ignite deletes the old file before writing the new).
    A failed write (a full disk, a read-only folder) removes its partial file and raises an error naming
    the file, the free space and what to do; the previous checkpoint stays.

    Args:
        dirname: the folder of the checkpoints.
        filename: a fixed file name (``model.pt``) instead of ignite's generated one.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True, create_dir=True)
        self.filename = filename
        self.pending: list[str] = []  # files to delete once the next checkpoint is in place

    def __call__(self, checkpoint: dict, filename: str, metadata: dict | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:  # several processes: only rank 0 writes, as ignite's DiskSaver
            return
        path = self.dirname / (self.filename or filename)
        partial = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL}")  # two writers never share a name
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.remove(partial)
            if not isinstance(error, OSError | RuntimeError):
                raise
            free = shutil.disk_usage(self.dirname).free / 2**20 if self.dirname.is_dir() else 0.0
            raise OSError(
                f"could not write {path} ({type(error).__name__}: {str(error).strip() or 'write failed'}); "
                f"{free:.0f} MiB free in {self.dirname}. Free some space or make the folder writable (or choose "
                "another --model_dir) and resume with --resume true: the previous checkpoint is kept"
            ) from error
        for name in self.pending:
            if name != path.name and (self.dirname / name).exists():
                os.remove(self.dirname / name)
        self.pending.clear()

    def remove(self, filename: str) -> None:
        # ignite calls this just before saving the replacement: deferred to after it (a fixed name is
        # replaced by the rename itself)
        if self.filename is None:
            self.pending.append(filename)

    def supersede(self, filenames: list[str]) -> None:
        """Deletes these files once the next checkpoint is in place (those a resumed run started from)."""
        self.pending.extend(filenames)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` (same arguments) writing through :class:`AtomicDiskSaver`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                saver = checkpoint.save_handler
                checkpoint.save_handler = AtomicDiskSaver(saver.dirname, getattr(saver, "filename", None))

    def supersede(self, filenames: list[str]) -> None:
        """Deletes these files once the next interval checkpoint is written (see :meth:`AtomicDiskSaver.supersede`)."""
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler.supersede(filenames)


class SelectionState:
    """The model-selection record a resumed run needs: the best validation score, its epoch, and the
    best-model saver's record of ``model.pt`` (so a worse epoch after resuming does not replace it).

    Args:
        evaluator: the validation engine (its ``best_metric`` and ``best_metric_epoch``).
        saver: the CheckpointSaver that writes ``model.pt`` on a better key metric.
    """

    def __init__(self, evaluator: Engine, saver: CheckpointSaver) -> None:
        self.evaluator, self.saver = evaluator, saver

    def state_dict(self) -> dict:
        record = self.saver._key_metric_checkpoint  # ignite's Checkpoint: lists of (score, file name)
        return {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            "saver": {k: [(float(p), str(f)) for p, f in v] for k, v in record.state_dict().items()} if record else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if state["saver"]:
            self.saver.load_state_dict(state["saver"])


def latest_checkpoint(model_dir: str) -> str | None:
    """The ``latest_checkpoint_epoch=N.pt`` of ``model_dir`` with the largest N, or None."""
    if not os.path.isdir(model_dir):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(model_dir) if (m := LATEST.match(name))]
    return os.path.join(model_dir, max(found)[1]) if found else None


def _horizon(scheduler: object) -> dict:
    """The length settings of a warm-up/cosine LR schedule, which the config sets from ``max_epochs``."""
    return (
        {k: v for k, v in vars(scheduler).items() if k in ("t_total", "warmup_steps")}
        if hasattr(scheduler, "t_total")
        else {}
    )


def _inert(obj: object) -> bool:
    """What a checkpoint of an older version may lack: a step LR schedule without milestones (it never changes a
    rate) and a module without state (no cross-fitted priors' DCG copies)."""
    if isinstance(obj, nn.Module):
        return not obj.state_dict()
    return isinstance(obj, torch.optim.lr_scheduler.MultiStepLR) and not obj.milestones


def resume_training(
    trainer: Engine,
    objects: dict,
    model_dir: str,
    resume: bool = False,
    resume_from: str | None = None,
    overwrite: bool = False,
    saver: AtomicCheckpointSaver | None = None,
) -> str | None:
    """Locks ``model_dir``, removes a killed run's partial files, then restores every object of the latest
    checkpoint before training starts, or refuses to write over a finished or interrupted training.

    Args:
        trainer: the training engine (its epoch and iteration are restored; ``max_epochs`` stays the config's).
        objects: what the latest checkpoint holds, by name (networks, optimizers, scheduler, trainer, ...).
        model_dir: where training writes ``model.pt`` and ``latest_checkpoint_epoch=N.pt``; created if missing.
        resume: continue from the newest latest checkpoint in ``model_dir`` (start afresh if there is none).
        resume_from: continue from this checkpoint file.
        overwrite: start a new training although ``model_dir`` holds one (its checkpoints are deleted).
        saver: the latest-checkpoint saver; the checkpoints a resumed run starts from are deleted once it
            has written its next one.

    Returns:
        the checkpoint resumed from, or None for a new training.
    """
    resume, overwrite = as_bool(resume), as_bool(overwrite)
    if idist.get_rank() == 0:  # one lock for a torchrun job: rank 0 writes every file
        lock = FolderLock(model_dir).acquire()
        if trainer is not None:
            trainer.add_event_handler(Events.COMPLETED, lock.release)
        for name in sorted(os.listdir(model_dir)):
            if name.endswith(PARTIAL):  # no other process writes here while we hold the lock
                os.remove(os.path.join(model_dir, name))
                logger.info(f"removed {name}, a checkpoint that an interrupted run did not finish writing")
    else:
        os.makedirs(model_dir, exist_ok=True)
    latest = latest_checkpoint(model_dir)
    if resume_from is None and not resume:
        existing = [p for p in (latest, os.path.join(model_dir, "model.pt")) if p and os.path.isfile(p)]
        if existing and not overwrite:
            raise FileExistsError(
                f"{model_dir} already holds a training ({', '.join(os.path.basename(p) for p in existing)}): "
                "--resume true continues it, --overwrite true starts a new one in its place, or choose another "
                "--model_dir"
            )
        for name in os.listdir(model_dir) if existing else []:
            if LATEST.match(name) or name == "model.pt":
                os.remove(os.path.join(model_dir, name))
        return None
    path = resume_from or latest
    if path is None:
        logger.info(f"resume: no latest checkpoint in {model_dir}; starting a new training")
        return None
    checkpoint = load_checkpoint(path, map_location="cpu")
    absent = [name for name in objects if name not in checkpoint]
    inert = [name for name in absent if _inert(objects[name])]  # e.g. a constant DCG rate, before it had a schedule
    objects = {name: obj for name, obj in objects.items() if name not in inert}
    absent = [name for name in absent if name not in inert]
    if absent:
        raise ValueError(f"{path} lacks {absent}: not a latest checkpoint of this bundle's training")
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            check_fits(obj, checkpoint[name], path)
    max_epochs = trainer.state.max_epochs
    horizons = {name: _horizon(obj) for name, obj in objects.items() if _horizon(obj)}
    Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
    trainer.state.max_epochs = max_epochs  # the config may extend a finished training ...
    for name, horizon in horizons.items():  # ... and its LR schedule with it (a checkpoint holds the old length)
        scheduler = objects[name]
        scheduler.__dict__.update(horizon)
        steps = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        rates = [base * rate(scheduler.last_epoch) for base, rate in steps]
        for group, lr in zip(scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = lr  # the rate of the resumed step on the new schedule
    if saver is not None:  # n_saved=1: the next latest checkpoint replaces those found here
        saver.supersede(sorted(name for name in os.listdir(model_dir) if LATEST.match(name)))
    logger.info(f"resumed from {path} after epoch {trainer.state.epoch} (iteration {trainer.state.iteration})")
    return path
