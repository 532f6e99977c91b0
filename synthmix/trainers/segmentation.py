"""The segmentation training flow: train on a stream of batches, select by real validation Dice,
evaluate the selected weights on the test subjects.

Training batches may be patches (``preprocess.patch_size``); validation and test always segment
whole slices, reassembled into each subject's volume: in one fully convolutional pass over the
slice (``inference: whole``, every network pads internally to the sizes it needs), or with
MONAI's ``sliding_window_inference`` (``inference: sliding_window``: windows of the training
patch size, or ``window_size``, overlapping by ``window_overlap``). Model selection therefore
sees the same whole slices as the final evaluation.

``train_segmentation(config, data, context)`` reads top to bottom: set-up, resume, the
iteration-based loop (validation every ``val_every`` steps, best-by-validation-Dice weights,
003's stopping rule or a fixed budget, checkpoints), then evaluation per test subject.

Reproducibility: every step's batch and its augmentation are seeded from (seed, step) alone.
``batch_size`` is the *global* batch: every rank draws the same global batch, augments it the
same way, shuffles it with the same permutation and trains on its own 1/world_size share, so 1
and N workers see the same sequence of training items (only the torch global RNG used by
dropout also takes the rank). A run resumed from a checkpoint draws exactly what the
uninterrupted run would have. The checkpoint holds the weights, Adam's moments, the AMP scaler,
the best weights, the validation history and the real/synthetic draw counts.

Budget: ``max_steps`` optimiser steps, or ``budget`` counted in real exposures so that adding
synthetic data adds steps instead of taking real draws away: ``{epochs_real: E}`` trains
ceil(E * n_real_slices / (batch_size * real_share)) steps (E passes over the real training
slices), ``{real_draws: N}`` ceil(N / (batch_size * real_share)) steps (N real items, whatever
the subset's size), where real_share is the sampler's expected share of real items per draw.
Either way 003's early-stopping rule may end training sooner.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import DataError, StudyError, TrainingDiverged
from synthmix.trainers.augmentation import AUGMENTATIONS, build_augmentation
from synthmix.trainers.checkpoint import load_checkpoint, save_checkpoint
from synthmix.trainers.context import TrainContext
from synthmix.trainers.losses import LOSSES, WEIGHTED_LOSSES, build_loss, class_weights_from_labels
from synthmix.trainers.metrics import DetectionThresholds, aggregate_subject_metrics, segmentation_metrics
from synthmix.trainers.networks import NETWORKS, build_network, check_network_options

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SegmentationConfig:
    """How one segmentation network is trained and evaluated.

    The defaults are the "small budget": a 4-level UNet (16..128 filters, batch norm) trained
    with Dice + CE (Adam, lr 1e-3) for 200 steps of 16 slices: on the default 64x64 phantom this
reaches a mean test Dice near 0.9 in a few CPU minutes (benchmarks/segmentation_acceptance.py).
    003's protocol is ``network={levels: 3, base_filters: 64}, lr=1e-4, betas=(0.5, 0.9),
    early_stop=(3000, 3000), lcc=True`` with a large ``max_steps``.

    Attributes:
        architecture: NETWORKS entry; ``network`` its options.
        loss: LOSSES entry (weighted losses take class weights from the real training labels).
        lr, betas: Adam's learning rate and moment decay rates.
        batch_size: slices per step, over all ranks (split across them; must divide evenly).
        max_steps: budget of optimiser steps (when ``budget`` is not given).
        budget: None, ``{epochs_real: E}`` or ``{real_draws: N}``: the budget counted in real
            exposures instead of steps (see the module docstring); give it or max_steps.
        val_every: steps between validations on the real validation subjects.
        early_stop: None for a fixed budget, or (min_steps, patience): 003's rule, train at least
            min_steps and stop once patience steps passed without a new best validation Dice.
        augmentation: AUGMENTATIONS entry; ``augmentation_params`` override its defaults.
        lcc: keep each class's largest connected component before validation/test metrics (003).
        checkpoint_every: steps between checkpoints; a multiple of val_every.
        amp: mixed precision (float16 autocast) when training on CUDA; ignored on CPU.
        seed: seeds initialisation, batch draws and augmentation.
        eval_batch_size: slices per forward pass in validation and evaluation.
        per_slice: also score every test slice as its own 2D image and add the means over
            slices as ``slice_<metric>`` (for papers that reported per-image metrics).
        inference: how validation and test slices are segmented: "whole" (one pass over the
            whole slice) or "sliding_window".
        window_size: the sliding window's (H, W); None: the training slices' size (the patch).
        window_overlap: overlap of neighbouring windows, in [0, 1).
        window_blend: "constant" (plain mean) or "gaussian" (centre-weighted) where windows overlap.
        detection: None, or 002's detection-thresholded precision and recall on the test subjects
            (``det_precision_<c>``, ``det_recall_<c>``, counts ``det_tp_<c>`` ...), with
            ``metrics.DetectionThresholds`` options ``{min_false_positive_px: 200, min_dice: 0.25}``
            (``{}``: those defaults).
    """

    architecture: str = "unet"
    network: dict = field(default_factory=lambda: dict(levels=4, base_filters=16, doubling=True,
                                                       batch_norm=True))
    loss: str = "dice_ce"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 16
    max_steps: int = 200
    budget: dict | None = None
    val_every: int = 25
    early_stop: tuple[int, int] | None = None
    augmentation: str = "none"
    augmentation_params: dict = field(default_factory=dict)
    lcc: bool = False
    checkpoint_every: int = 50
    amp: bool = False
    seed: int = 0
    eval_batch_size: int = 64
    per_slice: bool = False
    inference: str = "whole"
    window_size: tuple[int, int] | None = None
    window_overlap: float = 0.25
    window_blend: str = "constant"
    detection: dict | None = None


INFERENCE_MODES = ("whole", "sliding_window")
WINDOW_BLENDS = ("constant", "gaussian")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(SegmentationConfig))


def build_segmentation_config(d: dict[str, Any], source: str = "segmentation") -> SegmentationConfig:
    """Validate a config dict (YAML ``segmentation:`` section); every problem is reported at once,
    each naming its field, in one StudyError."""
    problems = [f"unknown field {k!r}; known: {', '.join(CONFIG_FIELDS)}" for k in d if k not in CONFIG_FIELDS]
    if d.get("budget") is not None and "max_steps" in d:
        problems.append("budget: give max_steps (optimiser steps) or budget (real exposures), not both")
    values = {k: v for k, v in d.items() if k in CONFIG_FIELDS}
    if "network" not in values and values.get("architecture", "unet") != "unet":
        values["network"] = {}  # the field's default options are the UNet's; others keep their builder's
    for key in ("betas", "early_stop", "window_size"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    if isinstance(values.get("window_size"), int) and not isinstance(values["window_size"], bool):
        values["window_size"] = (values["window_size"],) * 2
    try:
        config = SegmentationConfig(**values)
    except TypeError as e:  # pragma: no cover - every field has a default
        raise StudyError([str(e)], source) from None
    problems += _config_problems(config)
    if problems:
        raise StudyError(problems, source)
    return config


def _config_problems(c: SegmentationConfig) -> list[str]:
    p: list[str] = []
    for name in ("network", "augmentation_params"):
        if not isinstance(getattr(c, name), dict):
            return [f"{name}: must be a mapping of options, got {getattr(c, name)!r}"]
    for name, registry in (("architecture", NETWORKS), ("loss", LOSSES), ("augmentation", AUGMENTATIONS)):
        if getattr(c, name) not in registry:
            p.append(f"{name}: unknown {registry.kind} {getattr(c, name)!r}; known: {', '.join(registry.names())}")
    if c.architecture in NETWORKS:
        p += check_network_options(c.architecture, c.network)
    if c.augmentation in AUGMENTATIONS:
        try:
            build_augmentation(c.augmentation, c.augmentation_params)
        except (ValueError, TypeError) as e:
            p.append(f"augmentation_params: {e}")
    if not (isinstance(c.lr, (int, float)) and c.lr > 0):
        p.append(f"lr: must be a positive number, got {c.lr!r}")
    if not (isinstance(c.betas, tuple) and len(c.betas) == 2 and all(0 <= b < 1 for b in c.betas)):
        p.append(f"betas: must be two numbers in [0, 1), got {c.betas!r}")
    for name in ("batch_size", "max_steps", "val_every", "checkpoint_every", "eval_batch_size"):
        v = getattr(c, name)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            p.append(f"{name}: must be a positive integer, got {v!r}")
    if isinstance(c.checkpoint_every, int) and isinstance(c.val_every, int) and c.val_every >= 1 \
            and c.checkpoint_every % c.val_every:
        p.append(f"checkpoint_every: must be a multiple of val_every ({c.val_every}), got {c.checkpoint_every}")
    p += _budget_problems(c.budget)
    if c.early_stop is not None and not (isinstance(c.early_stop, tuple) and len(c.early_stop) == 2
                                         and all(isinstance(v, int) and v >= 1 for v in c.early_stop)):
        p.append(f"early_stop: must be null or [min_steps, patience] (positive integers), got {c.early_stop!r}")
    return p + _inference_problems(c) + _detection_problems(c.detection)


def _detection_problems(detection: Any) -> list[str]:
    if detection is None:
        return []
    if not isinstance(detection, dict):
        return [f"detection: must be null or a mapping of min_false_positive_px, min_dice, got {detection!r}"]
    try:
        DetectionThresholds(**detection)
    except TypeError:
        return [f"detection: unknown key(s) {sorted(set(detection) - {'min_false_positive_px', 'min_dice'})}; "
                "known: min_false_positive_px, min_dice"]
    except ValueError as err:
        return [f"detection: {err}"]
    return []


def _inference_problems(c: SegmentationConfig) -> list[str]:
    p = []
    if c.inference not in INFERENCE_MODES:
        p.append(f"inference: must be one of {', '.join(INFERENCE_MODES)}, got {c.inference!r}")
    if c.window_size is not None and not (isinstance(c.window_size, tuple) and len(c.window_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in c.window_size)):
        p.append(f"window_size: must be null, a positive int or [H, W], got {c.window_size!r}")
    if isinstance(c.window_overlap, bool) or not isinstance(c.window_overlap, (int, float)) \
            or not 0 <= c.window_overlap < 1:
        p.append(f"window_overlap: must be a number in [0, 1), got {c.window_overlap!r}")
    if c.window_blend not in WINDOW_BLENDS:
        p.append(f"window_blend: must be one of {', '.join(WINDOW_BLENDS)}, got {c.window_blend!r}")
    if c.inference == "whole" and c.window_size is not None:
        p.append("window_size: only with inference: sliding_window")
    return p


BUDGET_KINDS = ("epochs_real", "real_draws")


def _budget_problems(budget: Any) -> list[str]:
    if budget is None:
        return []
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_KINDS:
        return [f"budget: must be {{epochs_real: E}} or {{real_draws: N}}, got {budget!r}"]
    (kind, value), = budget.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        return [f"budget.{kind}: must be a positive number, got {value!r}"]
    return []


def training_steps(config: SegmentationConfig, *, n_real: int, real_share: float) -> int:
    """Optimiser steps of a training: ``max_steps``, or the real-exposure budget divided by the
    real items a step draws (``batch_size * real_share``)."""
    if config.budget is None:
        return config.max_steps
    (kind, value), = config.budget.items()
    if real_share <= 0:
        raise StudyError([f"budget.{kind}: this cell draws no real data (all synthetic), so a budget "
                          "counted in real exposures never ends; use max_steps"], "segmentation")
    real_items = value * n_real if kind == "epochs_real" else value
    return max(1, math.ceil(round(real_items / (config.batch_size * real_share), 9)))


# ----------------------------------------------------------------------------- data


class BatchSampler(Protocol):
    """Where training batches come from (real slices, or a real + synthetic mixing policy)."""

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return images (B, C, H, W) float32 and labels (B, H, W) int64, drawn with ``rng``."""
        ...


class RealSampler:
    """Draws slices uniformly, with replacement, from the real training slices. Like every
    sampler it says its share of real items (``real_share``) and what its latest batch held
    (``last_draws`` = (real, synthetic) items)."""

    real_share = 1.0

    def __init__(self, train: SliceSet):
        if len(train) == 0:
            raise DataError("RealSampler: the training set has no slices")
        self.train = train
        self.last_draws = (0, 0)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.train), size=batch_size)
        self.last_draws = (batch_size, 0)
        return self.train.images[idx], self.train.labels[idx]


@dataclass(frozen=True)
class SegmentationData:
    """Real train/validation/test slices, and the training stream (real slices by default)."""

    train: SliceSet
    val: SliceSet
    test: SliceSet
    sampler: BatchSampler | None = None
    # evaluate: {unlabelled: true}: subjects the final model also segments (structure volumes),
    # and those of them whose labels are true (scored too; the others' labels are zeros)
    unlabelled: SliceSet | None = None
    unlabelled_known: tuple[str, ...] = ()


def _check_data(data: SegmentationData) -> None:
    ref = data.train
    for name in ("train", "val", "test"):
        s: SliceSet = getattr(data, name)
        if len(s) == 0:
            raise DataError(f"segmentation data: the {name} set has no slices")
        # Only channels must agree: training slices may be patches of the whole val/test slices.
        if s.images.shape[1] != ref.images.shape[1]:
            raise DataError(f"segmentation data: {name} slices have {s.images.shape[1]} channel(s), "
                            f"train slices {ref.images.shape[1]} (shapes {s.images.shape[1:]} and "
                            f"{ref.images.shape[1:]}, channels x rows x cols)")
        if s.num_classes != ref.num_classes:
            raise DataError(f"segmentation data: {name} has {s.num_classes} classes, train {ref.num_classes}")
        if s.labels.min() < 0 or s.labels.max() >= s.num_classes:
            raise DataError(f"segmentation data: {name} labels outside [0, {s.num_classes})")


def _check_batch(images: np.ndarray, labels: np.ndarray, batch_size: int, train: SliceSet) -> None:
    expected = (batch_size, *train.images.shape[1:])
    if images.shape != expected or labels.shape != (batch_size, *train.images.shape[2:]):
        raise DataError(f"sampler returned images {images.shape} and labels {labels.shape}; "
                        f"expected {expected} and {(batch_size, *train.images.shape[2:])}")
    if labels.min() < 0 or labels.max() >= train.num_classes:
        raise DataError(f"sampler returned labels outside [0, {train.num_classes})")


# ----------------------------------------------------------------------------- results


@dataclass
class SegmentationResult:
    """metrics: test means over subjects (``dice_mean``, ``hd95_1``, ...) and ``per_subject``
    (one dict per test subject, with its ``subject`` id). val_history: [{step, val_dice}].
    real_draws, synthetic_draws: training items drawn from each, over all ranks."""

    metrics: dict
    best_step: int
    steps_done: int
    val_history: list[dict]
    timings: dict[str, float]
    real_draws: int = 0
    synthetic_draws: int = 0
    unlabelled: list[dict] = field(default_factory=list)  # segment_subjects of data.unlabelled


@dataclass
class _Progress:
    """What survives a restart besides weights and optimiser state."""

    step: int = 0
    best_dice: float = -math.inf
    best_step: int = 0
    best_state: dict | None = None
    val_history: list[dict] = field(default_factory=list)
    finished: bool = False
    real_draws: int = 0
    synthetic_draws: int = 0


# ----------------------------------------------------------------------------- training


def train_segmentation(config: SegmentationConfig, data: SegmentationData,
                       context: TrainContext) -> SegmentationResult:
    """Train, select by validation Dice, and evaluate on the test subjects (see module docs)."""
    problems = _config_problems(config)
    if problems:
        raise StudyError(problems, "segmentation")
    _check_data(data)
    inference = inference_for(config, data.train)
    device = context.device
    num_classes = data.train.num_classes
    timings = {"train_s": 0.0, "val_s": 0.0, "eval_s": 0.0}

    # Set-up: the same initial weights on every rank (DDP also broadcasts rank 0's).
    torch.manual_seed(config.seed)
    net = build_network(config.architecture, in_channels=data.train.images.shape[1],
                        num_classes=num_classes, options=config.network)
    model = context.prepare_model(net.to(device))
    net = _unwrap(model)
    weights = (class_weights_from_labels(data.train.labels, num_classes)  # real labels only
               if config.loss in WEIGHTED_LOSSES else None)
    loss_fn = build_loss(config.loss, num_classes=num_classes, class_weights=weights).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    augment = build_augmentation(config.augmentation, config.augmentation_params)
    sampler = data.sampler or RealSampler(data.train)
    _check_world(config, context)
    max_steps = training_steps(config, n_real=len(data.train),
                               real_share=_real_share(sampler) if config.budget else 1.0)

    progress = _Progress()
    checkpoint = context.latest_checkpoint()
    if checkpoint is not None:
        progress = _resume(checkpoint, model, optimizer, scaler)

    # Train, iteration-based.
    model.train()
    losses: list[float] = []
    checked = False
    tick = time.perf_counter()
    while not progress.finished:
        step = progress.step
        x, y = _rank_batch(sampler, augment, config, step, context, data.train, check=not checked)
        checked = True  # the first batch of this attempt: a wrong sampler fails there, clearly
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(model(x), y)
        loss_value = _mean_over_ranks(loss.detach(), context)  # every rank raises, or none
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"segmentation loss is {loss_value} at step {step + 1} "
                                   f"(architecture {config.architecture!r}, lr {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss_value)
        progress.step = step + 1
        real, synthetic = getattr(sampler, "last_draws", (config.batch_size, 0))
        progress.real_draws += real
        progress.synthetic_draws += synthetic

        if progress.step % config.val_every and progress.step < max_steps:
            continue
        timings["train_s"] += time.perf_counter() - tick
        tick = time.perf_counter()
        val_dice = _validate(net, data.val, config, context, inference)
        timings["val_s"] += time.perf_counter() - tick
        model.train()
        _record_validation(progress, val_dice, net)
        progress.finished = _should_stop(progress, config, max_steps)
        _report(context, config, progress, model, optimizer, scaler, float(np.mean(losses)), val_dice)
        losses = []
        tick = time.perf_counter()

    # Evaluate the best weights on the test subjects.
    tick = time.perf_counter()
    net.load_state_dict(progress.best_state)
    detection = DetectionThresholds(**config.detection) if config.detection is not None else None
    aggregate, per_subject = evaluate(net, data.test, num_classes=num_classes, lcc=config.lcc,
                                      device=device, batch_size=config.eval_batch_size, inference=inference,
                                      detection=detection)
    if config.per_slice:
        per_slice, _ = evaluate(net, data.test, num_classes=num_classes, lcc=config.lcc, device=device,
                                batch_size=config.eval_batch_size, per_slice=True, inference=inference,
                                detection=detection)
        aggregate.update({f"slice_{k}": v for k, v in per_slice.items()})
    unlabelled = [] if data.unlabelled is None else segment_subjects(
        net, data.unlabelled, num_classes=num_classes, known=data.unlabelled_known, lcc=config.lcc,
        device=device, batch_size=config.eval_batch_size, inference=inference)
    timings["eval_s"] += time.perf_counter() - tick
    return SegmentationResult(metrics={**aggregate, "per_subject": per_subject},
                              best_step=progress.best_step, steps_done=progress.step,
                              val_history=list(progress.val_history), timings=timings,
                              real_draws=progress.real_draws, synthetic_draws=progress.synthetic_draws,
                              unlabelled=unlabelled)


def _real_share(sampler: BatchSampler) -> float:
    share = getattr(sampler, "real_share", None)
    if share is None:
        raise DataError(f"sampler {type(sampler).__name__} has no real_share (the expected share of "
                        "real items per draw), which a budget in real exposures needs")
    return float(share)


def _check_world(config: SegmentationConfig, context: TrainContext) -> None:
    if config.batch_size % context.world_size:
        raise StudyError([f"batch_size: {config.batch_size} is the global batch and must split evenly "
                          f"over the {context.world_size} workers"], "segmentation")


def _step_random(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The step's random streams from (seed, step): numpy for the sampler and the shuffle, torch
    for augmentation. Resuming needs no RNG state, and every rank draws the same global batch."""
    rng = np.random.default_rng([seed, step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def global_batch(sampler: BatchSampler, augment, config: SegmentationConfig, step: int,
                 train: SliceSet, device: torch.device | str = "cpu", *,
                 check: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's whole batch as every rank draws it: sampled and augmented from (seed, step),
    then shuffled, so that a rank's share does not depend on the order a sampler returns items
    in (real first, then synthetic)."""
    rng, aug_gen = _step_random(config.seed, step)
    images, labels = sampler.sample(config.batch_size, rng)
    if check:
        _check_batch(images, labels, config.batch_size, train)
    x = torch.as_tensor(images, dtype=torch.float32).to(device, non_blocking=True)
    y = torch.as_tensor(labels, dtype=torch.int64).to(device, non_blocking=True)
    x, y = augment(x, y, aug_gen)
    order = torch.as_tensor(rng.permutation(config.batch_size), device=x.device)
    return x[order], y[order]


def _rank_batch(sampler: BatchSampler, augment, config: SegmentationConfig, step: int,
                context: TrainContext, train: SliceSet, *, check: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's 1/world_size share of the step's global batch. The torch global RNG (dropout)
    is seeded from (seed, step, rank)."""
    x, y = global_batch(sampler, augment, config, step, train, context.device, check=check)
    torch.manual_seed(int(np.random.default_rng([config.seed, step, context.world_rank]).integers(2**62)))
    share = config.batch_size // context.world_size
    part = slice(context.world_rank * share, (context.world_rank + 1) * share)
    return x[part], y[part]


def _record_validation(progress: _Progress, val_dice: float, net: nn.Module) -> None:
    progress.val_history.append({"step": progress.step, "val_dice": val_dice})
    if val_dice > progress.best_dice:
        progress.best_dice = val_dice
        progress.best_step = progress.step
        progress.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _should_stop(progress: _Progress, config: SegmentationConfig, max_steps: int) -> bool:
    """The budget's steps, or 003's rule: at least min_steps, and patience steps after the last best."""
    if progress.step >= max_steps:
        return True
    if config.early_stop is None:
        return False
    min_steps, patience = config.early_stop
    return progress.step >= min_steps and progress.step - progress.best_step >= patience


def _validate(net: nn.Module, val: SliceSet, config: SegmentationConfig, context: TrainContext,
              inference: Inference | None = None) -> float:
    """Mean foreground Dice over the validation subjects (no distances: cheap). Every rank gets
    rank 0's buffers first (batch-norm statistics), so every rank computes the same value."""
    if _distributed(context):
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)
    aggregate, _ = evaluate(net, val, num_classes=val.num_classes, lcc=config.lcc, device=context.device,
                            batch_size=config.eval_batch_size, distances=False, inference=inference)
    return aggregate["dice_mean"]


def _report(context: TrainContext, config: SegmentationConfig, progress: _Progress, model: nn.Module,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: float,
            val_dice: float) -> None:
    """Report the validation metrics (every rank); rank 0 adds a checkpoint every
    checkpoint_every steps and when training ends."""
    metrics = {"step": progress.step, "loss": loss, "val_dice": val_dice,
               "best_val_dice": progress.best_dice, "best_step": progress.best_step}
    wants_checkpoint = progress.finished or progress.step % config.checkpoint_every == 0
    if not (wants_checkpoint and context.world_rank == 0):
        context.report(metrics)
        return
    tmp = Path(tempfile.mkdtemp(prefix="synthmix-seg-ckpt-"))
    try:
        extra = {"best_dice": progress.best_dice, "best_step": progress.best_step,
                 "best_state": progress.best_state, "val_history": progress.val_history,
                 "finished": progress.finished, "real_draws": progress.real_draws,
                 "synthetic_draws": progress.synthetic_draws}
        save_checkpoint(tmp, step=progress.step, models={"model": model},
                        optimizers={"adam": optimizer, "scaler": scaler}, extra=extra)
        context.report(metrics, checkpoint_dir=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resume(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler) -> _Progress:
    step, extra = load_checkpoint(checkpoint, models={"model": model},
                                  optimizers={"adam": optimizer, "scaler": scaler})
    return _Progress(step=step, best_dice=extra["best_dice"], best_step=extra["best_step"],
                     best_state=extra["best_state"], val_history=list(extra["val_history"]),
                     finished=extra["finished"], real_draws=extra.get("real_draws", 0),
                     synthetic_draws=extra.get("synthetic_draws", 0))


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Inference:
    """How whole slices are segmented: ``window`` None is one pass over the whole slice;
    otherwise MONAI's sliding window of that (H, W), ``overlap`` and ``blend`` mode."""

    window: tuple[int, int] | None = None
    overlap: float = 0.25
    blend: str = "constant"


def inference_for(config: SegmentationConfig, train: SliceSet) -> Inference:
    """The study's inference mode; the default window is the training slices' (patch) size."""
    if config.inference == "whole":
        return Inference()
    window = tuple(config.window_size) if config.window_size else tuple(train.images.shape[2:])
    return Inference(window=window, overlap=float(config.window_overlap), blend=config.window_blend)


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, inference: Inference | None = None,
                   window_batch: int = 64) -> torch.Tensor:
    """Logits (B, K, H, W) of whole slices x (B, C, H, W): one pass, or a sliding window."""
    if inference is None or inference.window is None:
        return net(x)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, roi_size=inference.window, sw_batch_size=window_batch, predictor=net,
                                    overlap=inference.overlap, mode=inference.blend)


@torch.no_grad()
def predict_volume(net: nn.Module, images: np.ndarray, *, device: torch.device,
                   batch_size: int, inference: Inference | None = None) -> np.ndarray:
    """Labels (D, H, W) for a subject's slices (D, C, H, W), predicted slice by slice."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(images[start:start + batch_size], dtype=torch.float32, device=device)
        out.append(predict_logits(net, x, inference, batch_size).argmax(dim=1).cpu().numpy())
    return np.concatenate(out)


def evaluate(model: nn.Module, sliceset: SliceSet, *, num_classes: int, lcc: bool,
             device: torch.device | str, batch_size: int = 64, distances: bool = True,
             per_slice: bool = False, inference: Inference | None = None,
             detection: DetectionThresholds | None = None) -> tuple[dict[str, float], list[dict]]:
    """Metrics of ``model`` on every subject of ``sliceset``: whole slices predicted (see
    ``Inference``), reassembled into the subject's volume, scored with its spacing (that of
    the preprocessed slices). Returns (means over subjects, per subject).
    ``per_slice`` scores each slice as a (1, H, W) volume instead (rows carry ``slice``, the index in volume order)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    per_subject = []
    try:
        for sid, images, labels, spacing in sliceset.volumes():
            pred = predict_volume(net, images, device=device, batch_size=batch_size, inference=inference)
            if not per_slice:
                metrics = segmentation_metrics(pred, labels, num_classes=num_classes, spacing=spacing,
                                               lcc=lcc, distances=distances, detection=detection)
                per_subject.append({"subject": sid, **metrics})
                continue
            for index, (p, t) in enumerate(zip(pred, labels)):  # index in volume order
                metrics = segmentation_metrics(p[None], t[None], num_classes=num_classes,
                                               spacing=spacing, lcc=lcc, distances=distances, detection=detection)
                per_subject.append({"subject": sid, "slice": index, **metrics})
    finally:
        net.train(was_training)
    return aggregate_subject_metrics(per_subject), per_subject


def segment_subjects(model: nn.Module, sliceset: SliceSet, *, num_classes: int, known: tuple[str, ...] = (),
                     lcc: bool = False, device: torch.device | str = "cpu", batch_size: int = 64,
                     inference: Inference | None = None) -> list[dict]:
    """Per subject of ``sliceset``: the volume in mL of each predicted structure
    (``volume_<c>``, c = 1 .. num_classes - 1, from the preprocessed slices' spacing), what 001
    classified on; for a subject in ``known`` (its labels are true) also its metrics against
    them (Dice etc., no surface distances)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    records = []
    try:
        for sid, images, labels, spacing in sliceset.volumes():
            pred = predict_volume(net, images, device=torch.device(device), batch_size=batch_size, inference=inference)
            voxel_ml = float(np.prod(spacing)) / 1000.0
            counts = np.bincount(pred.ravel(), minlength=num_classes)
            record = {"subject": sid, **{f"volume_{c}": float(counts[c] * voxel_ml) for c in range(1, num_classes)}}
            if sid in known:
                record.update(segmentation_metrics(pred, labels, num_classes=num_classes, spacing=spacing,
                                                   lcc=lcc, distances=False))
            records.append(record)
    finally:
        net.train(was_training)
    return records


# ----------------------------------------------------------------------------- distributed helpers


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _distributed(context: TrainContext) -> bool:
    return context.world_size > 1 and dist.is_available() and dist.is_initialized()


def _mean_over_ranks(value: torch.Tensor, context: TrainContext) -> float:
    if _distributed(context):
        value = value.float().clone()
        dist.all_reduce(value)
        value /= context.world_size
    return float(value)


__all__ = ["SegmentationConfig", "build_segmentation_config", "SegmentationData", "BatchSampler",
           "RealSampler", "SegmentationResult", "train_segmentation", "training_steps", "global_batch",
           "evaluate", "predict_volume", "Inference", "inference_for", "predict_logits"]
