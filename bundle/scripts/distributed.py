"""What training on several processes (torchrun, configs/multi_gpu_train.yaml) needs beyond DistributedDataParallel."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["BroadcastBuffers", "gather_rows", "is_main_process", "report_process", "training_sampler", "world_size"]


def world_size() -> int:
    """Processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process logs and writes files: rank 0, or the only process."""
    return world_size() == 1 or dist.get_rank() == 0


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates every process's ``tensor`` along its first axis; the row counts may differ (a split
    shared out without padding), which ``all_gather`` of tensors does not allow.

    Returns:
        the rows of rank 0, then rank 1, ..., on ``tensor``'s device (``tensor`` itself in one process).
    """
    if world_size() == 1:
        return tensor
    parts: list[torch.Tensor | None] = [None] * world_size()
    dist.all_gather_object(parts, tensor.detach().cpu())
    return torch.cat(parts).to(tensor.device)


class BroadcastBuffers:
    """Copies rank 0's buffers of ``network`` (BatchNorm statistics, also those of the EMA copy) to every
    process when the engine starts.

    DistributedDataParallel keeps the weights equal across processes but lets each process's BatchNorm
    statistics follow its own last batch; attached to the validation engine, this makes every process
    validate the model that rank 0 saves.

    Args:
        network: the module whose buffers are broadcast.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if world_size() == 1:
            return
        for buffer in self.network.buffers():
            dist.broadcast(buffer.data, src=0)


def training_sampler(dataset: torch.utils.data.Dataset, class_balanced: bool, seed: int) -> torch.utils.data.Sampler:
    """Each process's share of the shuffled training set (MONAI's DistributedSampler, reshuffled every epoch).

    Raises:
        ValueError: for ``class_balanced_sampling``, which draws with replacement from the whole set and has
            no distributed form here.
    """
    from monai.data import DistributedSampler

    if class_balanced:
        raise ValueError("class_balanced_sampling is not supported with several processes; use class_weighted_loss")
    return DistributedSampler(dataset, shuffle=True, seed=seed)


def report_process(engine: Engine) -> str:
    """Prints (and returns) which process this is and how far its engine ran: the check that every rank trained."""
    rank = dist.get_rank() if world_size() > 1 else 0
    line = f"rank {rank} of {world_size()}: {engine.state.epoch} epochs, {engine.state.iteration} iterations"
    print(line, flush=True)
    return line
