"""Ignite handlers of the bundle's workflows."""

from __future__ import annotations

import json
import os

from ignite.engine import Engine, Events

__all__ = ["MetricsJSONWriter"]


class MetricsJSONWriter:
    """Writes an evaluator's metrics to a JSON file when it completes, atomically (temporary file, rename).

    Metrics named ``prior_*`` go to a ``prior`` block (the DCG guidance alone), the others to a
    ``denoised`` block (the diffusion's prediction).

    Args:
        path: the JSON file to write.
        info: extra entries (checkpoint, sampler settings, seed, split, ...) written beside the metrics.
    """

    def __init__(self, path: str, info: dict | None = None) -> None:
        self.path = path
        self.info = dict(info or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items()}
        report = {
            "denoised": {k: v for k, v in metrics.items() if not k.startswith("prior_")},
            "prior": {k.removeprefix("prior_"): v for k, v in metrics.items() if k.startswith("prior_")},
            **self.info,
        }
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        partial = f"{self.path}.partial"
        with open(partial, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(partial, self.path)
