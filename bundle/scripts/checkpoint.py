"""Loading checkpoints safely: tensors only, clear errors for untrusted, corrupt or mismatching files."""

from __future__ import annotations

import os
import pickle

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["load_checkpoint", "load_weights", "WeightsLoader"]

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


def load_weights(network: nn.Module, path: str, map_location: str | torch.device | None = None) -> nn.Module:
    """Loads a flat state dict (``model.pt``) into ``network``, listing every mismatch if it does not fit.

    Returns:
        ``network``.
    """
    state = load_checkpoint(path, map_location)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors (model.pt); a training checkpoint?")
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
    network.load_state_dict(state)
    return network


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
