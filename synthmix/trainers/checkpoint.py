"""Checkpoint I/O shared by every training flow: models, optimisers, step and RNG state.

A checkpoint restores a run exactly where it stopped: same step counter, optimiser moments and
random streams (torch, numpy Generator, Python), so a resumed run continues rather than restarts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "state.pt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP wraps in .module


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: np.random.Generator | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``state.pt`` into ``directory`` (created) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "models": {k: _unwrap(m).state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": rng.bit_generator.state if rng is not None else None,
        "extra": extra or {},
    }
    path = directory / CHECKPOINT_FILE
    torch.save(state, path)
    return path


def load_checkpoint(
    directory: str | Path,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: np.random.Generator | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restore models, optimisers and RNG state in place; return (step, extra)."""
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    for k, m in models.items():
        _unwrap(m).load_state_dict(state["models"][k])
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if rng is not None and state["numpy_rng"] is not None:
        rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"]), state["extra"]
