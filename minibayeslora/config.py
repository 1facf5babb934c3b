"""Profiles, seeding, device and cache location.

A *profile* changes sizes and step counts only, never the code path:

- ``smoke``: tiny sizes so every notebook runs in seconds (env ``MINIBAYESLORA_SMOKE=1``);
- ``cpu``:   the default without CUDA; real results within minutes on a 2-core laptop;
- ``gpu``:   the default with CUDA; bigger models and longer runs.

``MINIBAYESLORA_PROFILE`` forces a profile by name (e.g. ``cpu`` on a GPU machine).
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
T = TypeVar("T")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _detect_profile() -> str:
    forced = os.environ.get("MINIBAYESLORA_PROFILE", "").strip().lower()
    if forced:
        if forced not in PROFILES:
            raise ValueError(f"MINIBAYESLORA_PROFILE={forced!r} is not one of {PROFILES}.")
        return forced
    if _truthy(os.environ.get("MINIBAYESLORA_SMOKE")):
        return "smoke"
    return "gpu" if torch.cuda.is_available() else "cpu"


PROFILE: str = _detect_profile()
SMOKE: bool = PROFILE == "smoke"


def by_profile(smoke: T, cpu: T, gpu: T | None = None, profile: str | None = None) -> T:
    """Pick a size for the active profile: ``n_steps = by_profile(smoke=5, cpu=300, gpu=1000)``.

    ``gpu`` defaults to the ``cpu`` value; ``profile`` overrides the active one (useful in tests).
    """
    profile = profile or PROFILE
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}.")
    return {"smoke": smoke, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[profile]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch Generator seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def private_rng(seed: int):
    """Seed torch's global RNGs (CPU and every visible CUDA device) inside the block and restore them after it.

    Code that needs reproducible draws without moving the caller's random stream (a check function, a seeded
    prediction) runs in this block: what the caller draws next is the same as if the block had not run.
    """
    # every CUDA device, whether or not it is initialised yet: torch.manual_seed queues a CUDA reseed for later
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def device() -> torch.device:
    """``cuda`` when available, else ``cpu`` (the profile sets sizes, not the device)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (``cpu`` for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def to_device(batch: dict, device) -> dict:
    """A batch of model kwargs with every tensor on ``device`` (other values pass through)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def synchronize(device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_batch_size() -> int:
    """Rows per forward pass when a whole dataset is evaluated: 64 on the CPU, 512 on a GPU (where a pass of 64
    rows is dominated by kernel launches). Training batches are set by ``TrainConfig.batch_size``, not here."""
    return 512 if device().type == "cuda" else 64


#: The backbones the notebooks can run on without the internet; any other value is a hub id or a local folder.
EMBEDDED_BACKBONES = ("minilm", "smollm2")


def backbone_name() -> str:
    """The notebooks' backbone: ``$MINIBAYESLORA_BACKBONE`` (``minilm``, ``smollm2`` or a hub id), default ``minilm``."""
    name = os.environ.get("MINIBAYESLORA_BACKBONE", "").strip()
    if not name:
        return "minilm"
    return name.lower() if name.lower() in EMBEDDED_BACKBONES else name


def cache_dir(*parts: str) -> Path:
    """The course's cache folder (``$MINIBAYESLORA_CACHE``, default ``~/.cache/minibayeslora``).

    Extra ``parts`` name a subfolder; it is created on demand.
    """
    root = os.environ.get("MINIBAYESLORA_CACHE") or Path.home() / ".cache" / "minibayeslora"
    path = Path(root).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader (another process, or the next run after an interrupted one) finds the old file or the whole new
    one, never half of one; a write that fails leaves no temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
