"""The shared machinery of a generator training run, handed to a family's ``train``.

A ``GeneratorSession`` owns what every family would otherwise write again:

- random streams: batch indices from one numpy Generator, noise from one CPU torch.Generator,
  both seeded from the generator's seed and identical on every rank; each rank takes its slice
  of every *global* draw. So ``batch_size`` is global, the sequence of draws is the same on 1
  or N workers, and rank 0's checkpoint restores every rank's streams;
- checkpoints and resume (step, models, optimisers, streams, the family's ``state``, the
  snapshot scores and the best snapshot so far), reported through the TrainContext;
- divergence: a non-finite loss raises ``TrainingDiverged``;
- snapshots for ``select``: every ``select.every`` steps rank 0 scores the family's current
  sampling weights with the scorer the flow gives it (SWD or FCN score against the training
  subset: never validation or test data) and keeps the best.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from synthmix.errors import StudyError, TrainingDiverged
from synthmix.trainers.checkpoint import load_checkpoint, save_checkpoint
from synthmix.trainers.context import TrainContext

SELECT_BY = ("last", "swd", "fcn_score")
# Lower is better for these; higher for the rest.
_LOWER_IS_BETTER = {"swd"}


@dataclass(frozen=True)
class SelectSpec:
    """``generator.select``: keep the best training snapshot by a quality measure."""

    by: str = "last"
    every: int = 100

    def __post_init__(self) -> None:
        problems = []
        if self.by not in SELECT_BY:
            problems.append(f"by: unknown {self.by!r}; known: {', '.join(SELECT_BY)}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            problems.append(f"every: must be a positive integer, got {self.every!r}")
        if problems:
            raise StudyError(problems, source="generator.select")

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats ``b``."""
        return a < b if self.by in _LOWER_IS_BETTER else a > b


def build_select_spec(d: dict | None) -> SelectSpec:
    d = dict(d or {})
    unknown = sorted(set(d) - {"by", "every"})
    if unknown:
        raise StudyError([f"{k}: unknown key; known: by, every" for k in unknown], source="generator.select")
    return SelectSpec(**d)


Scorer = Callable[[dict], float]


class GeneratorSession:
    """See the module docstring. ``total_steps`` is the family's step budget (the last step
    always checkpoints and, with ``select``, scores)."""

    def __init__(self, context: TrainContext, *, seed: int, total_steps: int, checkpoint_every: int,
                 select: SelectSpec = SelectSpec(), scorer: Scorer | None = None):
        self.context, self.device = context, context.device
        self.rank, self.world = context.world_rank, context.world_size
        self.seed, self.total_steps, self.checkpoint_every = seed, total_steps, checkpoint_every
        self.select, self._scorer = select, scorer
        self.rng = np.random.default_rng(seed)
        self.noise = torch.Generator().manual_seed(seed)
        self.step = 0
        self.state: dict = {}  # the family's own resumable values (phase, resolution, ...)
        self.snapshots: list[dict] = []
        self.best: dict | None = None  # {"step", "score", "weights"}
        self._sums: dict[str, float] = {}
        self._count = 0
        self._objects: dict | None = None

    # ---- random streams -----------------------------------------------------------------------

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise StudyError([f"batch_size: {global_batch} is not divisible by the {self.world} workers "
                              "(the batch is global and split across workers)"], source="generator config")
        return global_batch // self.world

    def _mine(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x) // self.world
        return x[self.rank * n:(self.rank + 1) * n]

    def rows(self, n_rows: int, global_batch: int) -> np.ndarray:
        """This rank's share of ``global_batch`` row indices drawn uniformly from ``n_rows``."""
        self.local_batch(global_batch)
        return self._mine(torch.from_numpy(self.rng.integers(0, n_rows, size=global_batch))).numpy()

    def batch(self, rows: torch.Tensor, global_batch: int) -> torch.Tensor:
        """This rank's share of one global draw of rows of ``rows`` (a tensor on the device)."""
        return rows[torch.from_numpy(self.rows(len(rows), global_batch)).to(rows.device)]

    def randn(self, global_batch: int, *shape: int) -> torch.Tensor:
        """This rank's slice of a (global_batch, *shape) standard normal draw, on the device."""
        self.local_batch(global_batch)
        return self._mine(torch.randn((global_batch, *shape), generator=self.noise)).to(self.device)

    def rand(self, global_batch: int, *shape: int) -> torch.Tensor:
        """Like ``randn``, uniform on [0, 1)."""
        self.local_batch(global_batch)
        return self._mine(torch.rand((global_batch, *shape), generator=self.noise)).to(self.device)

    # ---- resume, steps, checkpoints -------------------------------------------------------------

    def resume(self, *, models: dict, optimizers: dict) -> bool:
        """Restore everything from the context's latest checkpoint; False when starting fresh.
        Families rebuild what depends on ``state`` (a phase's networks) before calling this."""
        self._objects = {"models": models, "optimizers": optimizers}
        latest = self.context.latest_checkpoint()
        if latest is None:
            return False
        self.step, extra = load_checkpoint(latest, models=models, optimizers=optimizers, rng=self.rng)
        self.noise.set_state(extra["noise_rng"])
        self.state = dict(extra["family_state"])
        self.snapshots = list(extra["snapshots"])
        self.best = extra["best"]
        return True

    def watch(self, *, models: dict, optimizers: dict) -> None:
        """Change what checkpoints hold (a family entering a phase with new networks)."""
        self._objects = {"models": models, "optimizers": optimizers}

    def end_step(self, losses: dict[str, float], *, weights: Callable[[], dict], checkpoint: bool = False) -> None:
        """Call after each step with its losses; ``weights()`` gives the current sampling
        weights (only called when a snapshot is due). ``checkpoint``: checkpoint after this
        step whatever ``checkpoint_every`` says (a family's phase boundary, so a resume never
        repeats the phase before it)."""
        self.step += 1
        bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
        if bad:
            raise TrainingDiverged(f"generator training diverged at step {self.step}: "
                                   + ", ".join(f"{k}={v}" for k, v in bad.items()))
        for k, v in losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1
        last = self.step >= self.total_steps
        if self.select.by != "last" and (self.step % self.select.every == 0 or last):
            self._snapshot(weights)
        if checkpoint or self.step % self.checkpoint_every == 0 or last:
            self._report()

    def _snapshot(self, weights: Callable[[], dict]) -> None:
        if self.rank != 0 or self._scorer is None:
            return
        current = {k: v.detach().cpu().clone() for k, v in weights().items()}
        score = float(self._scorer(current))
        self.snapshots.append({"step": self.step, "score": score})
        if self.best is None or self.select.better(score, self.best["score"]):
            self.best = {"step": self.step, "score": score, "weights": current}

    def _report(self) -> None:
        metrics = {"step": self.step, **{k: v / self._count for k, v in self._sums.items()}, **self.state}
        self._sums, self._count = {}, 0
        if self.rank != 0:
            self.context.report(metrics)
            return
        if self._objects is None:
            raise RuntimeError("a family must call session.resume(...) before its first step")
        extra = {"noise_rng": self.noise.get_state(), "family_state": copy.deepcopy(self.state),
                 "snapshots": self.snapshots, "best": self.best}
        with tempfile.TemporaryDirectory(prefix="synthmix-gen-ckpt-") as tmp:
            save_checkpoint(tmp, step=self.step, rng=self.rng, extra=extra, **self._objects)
            self.context.report(metrics, checkpoint_dir=Path(tmp))

    # ---- the result ---------------------------------------------------------------------------

    def selected(self, final: dict) -> tuple[dict, dict]:
        """The weights to publish (the best snapshot, or ``final`` with ``by: last``) and the
        selection record for generator.json."""
        record = {"by": self.select.by, "every": self.select.every, "snapshots": self.snapshots,
                  "chosen_step": self.step, "chosen_score": None}
        if self.select.by == "last" or self.best is None:
            return final, record
        record.update(chosen_step=self.best["step"], chosen_score=self.best["score"])
        return self.best["weights"], record
