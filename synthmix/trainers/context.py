"""What a training flow needs from whoever runs it: a device, its rank, a way to report.

Trainers are plain functions ``train_x(config, data, context)``. Tests and the Python API pass
a LocalContext; the orchestrator passes a Ray Train context (orchestrator/train_launch.py) that
wraps models for DDP and persists checkpoints through ``ray.train.report``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import torch


class TrainContext(Protocol):
    """The runtime a trainer runs in.

    ``report(metrics, checkpoint_dir)`` records metrics and, when given, a checkpoint directory
    that the context copies away (the caller may delete it afterwards). Every rank calls report
    at the same steps; only rank 0 passes a checkpoint directory. ``latest_checkpoint()`` is the
    directory of the last reported checkpoint of an earlier attempt of this run, or None.
    """

    device: torch.device
    world_rank: int
    world_size: int

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None: ...

    def latest_checkpoint(self) -> Path | None: ...


class LocalContext:
    """Single process, no Ray. Keeps reported metrics; checkpoints go to ``checkpoint_root``
    (a temporary folder by default), so a second LocalContext on the same root resumes."""

    def __init__(self, device: str | torch.device = "cpu", checkpoint_root: str | Path | None = None):
        self.device = torch.device(device)
        self.world_rank = 0
        self.world_size = 1
        self.history: list[dict] = []
        self._root = Path(checkpoint_root) if checkpoint_root else Path(tempfile.mkdtemp(prefix="synthmix-ckpt-"))
        self._root.mkdir(parents=True, exist_ok=True)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = self._root / "latest"
            tmp = self._root / "latest.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)

    def latest_checkpoint(self) -> Path | None:
        dest = self._root / "latest"
        return dest if dest.is_dir() else None
