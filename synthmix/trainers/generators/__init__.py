"""Generator families: models that learn image+label pairs from a cell's labelled training
subset, one registry entry per family, named as in the study YAML (``generator.name``).

The contract. ``GENERATORS`` maps a name to a ``GeneratorFamily``:

- ``config(d: dict) -> config``: the family's own options (``generator.config`` in YAML) into
  its frozen config dataclass; unknown keys are rejected by name (raise ``StudyError``). The
  schema calls it for ``synthmix plan``, so a bad option never reaches a worker.
- ``train(config, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession)
  -> dict[str, Tensor]``: learn from ``data`` only (rule 3) and return the weights that
  sampling uses (for example an EMA copy). The loop draws every random number from the
  session (``session.rows`` / ``session.randn``: global batches, rank-sliced, the same on any
  number of workers), calls ``session.resume(...)`` once before its first step and
  ``session.end_step(...)`` after every step; the session checkpoints, reports, scores
  snapshots for ``select`` and detects divergence. A family with phases keeps its phase in
  ``session.state`` (plain JSON values), which resumes with the step. No file I/O.
- ``load(config, encoding, weights: dict | None, *, seed: int, shape: (H, W), device)
  -> sampler``: the
  network for those weights (``None``: the untrained network that ``seed`` initialises, the
  quality reference), in eval mode. The sampler has ``sample(n, *, seed, device, masks=None)
  -> Samples`` (images (n, C, H, W) float32 in the data's intensity space, labels (n, H, W)
  int64, per-sample ``extras`` that filters may use: "critic", "latent_norm",
  "label_channels" ...), in the family's model shape.
- ``fit_shape(h, w) -> (H, W)``: the slice size its architecture needs for data of h x w
  (raise ``ValueError`` saying what would work). Shared code pads the real slices to it and
  crops samples back, so every pool matches the real slices.
- declarations: ``uses_unlabelled`` (the study's unlabelled images reach it as
  ``data.unlabelled`` and become part of its generator key), ``needs_masks`` (a conditional
  family: shared code passes label maps to ``sample(..., masks=)``: the subset's own masks,
  optionally transformed), ``cost(config, shape) -> seconds`` (one CPU core, for ``plan``),
  optionally ``on_the_fly_problem(config, shape, draws, budget_seconds) -> str | None``: why
  sampling ``draws`` pairs during one segmentation training (``mixing.source: on_the_fly``)
  that is modelled to take ``budget_seconds`` is refused by ``plan`` (a family whose sampling
  is expensive, such as a diffusion model's many denoising steps), or None; optionally
  ``steps_of(config) -> {yaml path: steps}``: the step counts a ``generator.budget`` sets
  (default ``{"steps": config.steps}``; ``budget.py``), and ``check_steps(config, shape)``:
  raise ``StudyError`` when that many steps cannot train at slices of ``shape`` (a budget
  below it is refused).

What a family does not write, because shared code does it once (``flow.py``, ``session.py``,
``encoding.py``, ``artifact.py``, ``synthmix.trainers.synthetic``): the artifact (tensors +
JSON), channel encoding, checkpoints and resume, random streams, snapshot selection, quality
figures, sample grids, pools with clean-up and filters.

Adding a family is one module providing these functions and one ``GENERATORS.add(...)`` line
below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from synthmix.datasets.arrays import SliceSet
from synthmix.registry import Registry


@dataclass(frozen=True)
class GeneratorData:
    """What a family may learn from (rule 3).

    Attributes:
        labelled: exactly the cell's labelled training subset (padded to the model shape).
        unlabelled: (M, C, H, W) images of the study's unlabelled subjects, normalised with the
            cell's real-training statistics; only for a family with ``uses_unlabelled``.
    """

    labelled: SliceSet
    unlabelled: np.ndarray | None = None


@dataclass(frozen=True)
class GeneratorFamily:
    config: Callable[[dict], Any]
    train: Callable[..., dict]
    load: Callable[..., Any]
    fit_shape: Callable[[int, int], tuple[int, int]]
    uses_unlabelled: bool = False
    needs_masks: bool = False
    cost: Callable[[Any, tuple[int, int]], float] | None = None
    on_the_fly_problem: Callable[[Any, tuple[int, int], int, float], str | None] | None = None
    steps_of: Callable[[Any], dict[str, int]] | None = None
    check_steps: Callable[[Any, tuple[int, int]], None] | None = None


GENERATORS: Registry[GeneratorFamily] = Registry("generator")


def _register() -> None:
    from synthmix.trainers.generators import dcgan, ddpm, gansfer, pggan, pix2pix, spade_two_stage

    GENERATORS.add("dcgan_wgangp", dcgan.FAMILY)
    GENERATORS.add("pix2pix", pix2pix.FAMILY)
    GENERATORS.add("spade_two_stage", spade_two_stage.FAMILY)
    GENERATORS.add("ddpm", ddpm.FAMILY)
    GENERATORS.add("pggan", pggan.FAMILY)
    GENERATORS.add("gansfer", gansfer.FAMILY)


_register()
