"""Segmentation losses, keyed by the name used in a study's YAML (``loss:``).

An entry is ``factory(*, num_classes, class_weights) -> nn.Module`` whose module maps logits
(B, K, H, W) and integer labels (B, H, W) to a scalar loss. The losses are MONAI's (DiceLoss,
DiceCELoss) and torch's cross-entropy; only the label-shape adapter and the class-weight formula
are ours. Dice terms are computed over the whole minibatch (MONAI ``batch=True``) so a class
absent from one slice does not produce a degenerate per-slice term; background is included in
the loss (metrics exclude it).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from synthmix.registry import Registry

LossFactory = Callable[..., nn.Module]
LOSSES: Registry[LossFactory] = Registry("loss")

# Losses that need class weights computed from the real training labels.
WEIGHTED_LOSSES = frozenset({"weighted_dice"})


class _LabelsAsChannel(nn.Module):
    """Adapts a MONAI loss expecting (B, 1, H, W) targets to (B, H, W) integer labels."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), labels.unsqueeze(1))


class CrossEntropy(nn.Module):
    """Pixel-wise softmax cross-entropy (optionally class-weighted) on (B, H, W) labels."""

    def __init__(self, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights)


def _dice(*, num_classes: int, class_weights: torch.Tensor | None = None) -> nn.Module:
    return _LabelsAsChannel(DiceLoss(softmax=True, to_onehot_y=True, batch=True))


def _weighted_dice(*, num_classes: int, class_weights: torch.Tensor | None = None) -> nn.Module:
    # MONAI multiplies each class's Dice loss by its weight, then averages over classes; with
    # weights of mean 1 (class_weights_from_labels) this is a weighted mean of per-class losses.
    if class_weights is None:
        raise ValueError("weighted_dice needs class_weights (from the real training labels)")
    return _LabelsAsChannel(DiceLoss(softmax=True, to_onehot_y=True, batch=True, weight=class_weights))


def _ce(*, num_classes: int, class_weights: torch.Tensor | None = None) -> nn.Module:
    return CrossEntropy()


def _dice_ce(*, num_classes: int, class_weights: torch.Tensor | None = None) -> nn.Module:
    return _LabelsAsChannel(DiceCELoss(softmax=True, to_onehot_y=True, batch=True))


LOSSES.add("dice", _dice)
LOSSES.add("weighted_dice", _weighted_dice)
LOSSES.add("ce", _ce)
LOSSES.add("dice_ce", _dice_ce)


def build_loss(name: str, *, num_classes: int,
               class_weights: np.ndarray | torch.Tensor | None = None) -> nn.Module:
    """The loss registered as ``name``. ``class_weights`` (K,) is required by (and only used by)
    the losses in WEIGHTED_LOSSES."""
    factory = LOSSES.get(name)
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(np.asarray(class_weights), dtype=torch.float32)
        if weights.shape != (num_classes,):
            raise ValueError(f"class_weights has shape {tuple(weights.shape)}, expected ({num_classes},)")
    return factory(num_classes=num_classes, class_weights=weights)


def class_weights_from_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency class weights from REAL training labels, normalised to mean 1.

    w_c = (1 / f_c) / mean_k(1 / f_k), with f_c the fraction of voxels of class c. A class that
    never occurs in the labels gets the largest weight of the classes that do (its Dice term then
    only penalises false positives, and no division by zero occurs).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("class_weights_from_labels: no labels given")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class_weights_from_labels: labels outside [0, {num_classes})")
    counts = np.bincount(labels.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    inverse = np.zeros(num_classes)
    inverse[present] = counts.sum() / counts[present]
    inverse[~present] = inverse[present].max()
    return (inverse / inverse.mean()).astype(np.float32)
