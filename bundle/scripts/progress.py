"""Training progress: a tqdm bar per epoch with the loss terms, and one log line per epoch with the epoch's mean
losses and the whole run's estimated time left."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["TrainingProgress"]

logger = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class TrainingProgress:
    """Attach to a trainer after its validation handler, so that an epoch's time includes its validation.

    Args:
        output_transform: the iteration output's scalars to show and average (``scripts.engine.scalar_terms``).
        bar: draw the tqdm bar (off in logs to files and on ranks other than 0); the epoch line is logged always.
    """

    def __init__(self, output_transform: Callable[[object], dict[str, float]], bar: bool = True) -> None:
        self.output_transform = output_transform
        self.bar = bar
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.started = 0.0
        self.first_epoch = 0

    def attach(self, engine: Engine) -> None:
        if self.bar:
            ProgressBar(persist=False).attach(engine, output_transform=self.output_transform)
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)

    def start(self, engine: Engine) -> None:
        self.started, self.first_epoch = time.monotonic(), engine.state.epoch  # a resumed run starts later

    def reset(self, engine: Engine) -> None:
        self.sums, self.count = defaultdict(float), 0

    def accumulate(self, engine: Engine) -> None:
        for name, value in self.output_transform(engine.state.output).items():
            self.sums[name] += value
        self.count += 1

    def log_epoch(self, engine: Engine) -> None:
        state = engine.state
        elapsed = time.monotonic() - self.started
        done = state.epoch - self.first_epoch
        left = elapsed / max(done, 1) * (state.max_epochs - state.epoch)
        means = " ".join(f"{k} {v / max(self.count, 1):.4f}" for k, v in self.sums.items() if k.startswith("loss"))
        timing = f"run time {_clock(elapsed)}, about {_clock(left)} left"
        logger.info(f"Epoch {state.epoch}/{state.max_epochs} done ({means}); {timing}")
