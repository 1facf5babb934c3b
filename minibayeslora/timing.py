"""Timing that compares fairly: interleaved repeats and medians, so that a change in the machine's load
(another process, thermal throttling) hits every contender alike. Used by ``bench/`` and notebook 06.

On a GPU the work is asynchronous: each timed step synchronises the model's device before reading the clock.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .config import model_device, synchronize, to_device


def timed(fn: Callable[[], object], device) -> Callable[[], float]:
    """A step for ``interleaved_medians``: run ``fn`` once and return its wall time in seconds, the device
    synchronised before and after (on a GPU the work is asynchronous)."""
    def step() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - t0
    return step


def training_step(model, optimizer, batch: dict, labels: torch.Tensor, loss_fn: Callable | None = None) -> Callable[[], float]:
    """A closure running forward + backward + optimizer step; returns its wall time in seconds.

    ``loss_fn(model, batch, labels)`` defaults to the cross-entropy of ``model(**batch)``. The batch and
    labels are moved to the model's device once, here, so that no timed step includes the copy.
    """
    device = model_device(model)
    batch, labels = to_device(batch, device), labels.to(device)
    def step() -> None:
        if loss_fn is None:
            loss = torch.nn.functional.cross_entropy(model(**batch), labels)
        else:
            loss = loss_fn(model, batch, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return timed(step, device)


def interleaved_medians(steps: dict[str, Callable[[], float]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median time of each step, running them in alternating order so drifts hit all alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}.")
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(steps[name]())
    return {name: statistics.median(t) for name, t in times.items()}
