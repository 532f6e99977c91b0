"""Checkpoint and tensor-file I/O shared by every training flow: models, optimisers, step, RNG.

A checkpoint restores a run exactly where it stopped: same step counter, optimiser moments and
random streams (torch, numpy Generator, Python), so a resumed run continues rather than restarts.

Everything synthmix writes with torch is tensors and plain containers (dicts, lists, numbers,
strings), and everything it reads back goes through ``load_tensors``: ``torch.load`` with
``weights_only=True``, which refuses any pickled object that is not one of those. Files under a
storage root may come from anyone who can write to a shared bucket; unpickling them would run
their code.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmix.errors import SynthmixError

CHECKPOINT_FILE = "state.pt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP wraps in .module


def save_tensors(obj: Any, path: str | Path) -> Path:
    """Write tensors in plain containers with ``torch.save`` (read back with ``load_tensors``)."""
    path = Path(path)
    torch.save(obj, path)
    return path


def load_tensors(path: str | Path) -> Any:
    """Read a file written by ``save_tensors``; anything else is refused, naming the file,
    without executing it."""
    path = Path(path)
    if not path.is_file():
        raise SynthmixError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthmixError(f"{path}: not a tensor file written by synthmix, refused without loading it "
                            f"({type(err).__name__}: {first[:200]})") from None


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: np.random.Generator | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``state.pt`` into ``directory`` (created) and return its path. ``extra`` must hold
    only tensors and plain containers."""
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
    return save_tensors(state, directory / CHECKPOINT_FILE)


def load_checkpoint(
    directory: str | Path,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: np.random.Generator | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restore models, optimisers and RNG state in place; return (step, extra)."""
    state = load_tensors(Path(directory) / CHECKPOINT_FILE)
    for k, m in models.items():
        _unwrap(m).load_state_dict(state["models"][k])
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    torch.set_rng_state(state["torch_rng"])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    if rng is not None and state["numpy_rng"] is not None:
        rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"]), state["extra"]
