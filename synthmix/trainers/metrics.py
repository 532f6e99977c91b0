"""Segmentation metrics per class on one subject's 3D label volume, and their mean over subjects.

For each foreground class c (background 0 is excluded): Dice, IoU, precision, recall from voxel
counts, and the symmetric Hausdorff distance and its 95th-percentile variant (HD95) in
millimetres between the two masks' surfaces. ``<metric>_mean`` averages the foreground classes.

Empty masks are defined, never NaN:
  - the class is absent from both truth and prediction: Dice = IoU = precision = recall = 1,
    HD = HD95 = 0 (nothing to find, nothing found);
  - the class is in exactly one of them (missed entirely, or predicted where there is none):
    Dice = IoU = precision = recall = 0, HD = HD95 = the volume's physical diagonal in mm
    (sqrt(sum((shape_i * spacing_i)^2)), larger than any distance inside the volume).
  - otherwise, precision / recall are TP / (TP + FP) and TP / (TP + FN), both denominators > 0.

Surfaces are the mask voxels with a face-neighbour outside the mask (or on the volume border),
as in MONAI and medpy; axes of length 1 are ignored (a 2D image is a (1, H, W) volume). Distances use scipy's Euclidean distance transform with ``sampling=spacing``
(rather than MONAI's metric classes, which return NaN/inf for empty masks and need one-hot
batches). HD95 is the larger of the two directed 95th percentiles (MONAI/medpy convention).

Optionally (``detection=DetectionThresholds()``), 002's detection-thresholded precision and
recall: each slice's connected components are detections. A truth component is a true positive
when the predicted components touching it reach Dice >= ``min_dice`` (0.25) with it, else a
false negative; a predicted component touching no truth is a false positive unless it has fewer
than ``min_false_positive_px`` (200) pixels, which 002 treats as noise. Keys ``det_tp_<c>``,
``det_fp_<c>``, ``det_fn_<c>`` (counts, so test-set totals are the sums over subjects) and
``det_precision_<c>``, ``det_recall_<c>`` (with the empty rules above; ``_mean`` over classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("dice", "iou", "precision", "recall", "hd", "hd95")


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (empty stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component_per_class(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """003's post-processing: each foreground class keeps only its largest connected component;
    the voxels removed become background."""
    out = np.zeros_like(pred)
    for c in range(1, num_classes):
        out[largest_connected_component(pred == c)] = c
    return out


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face-neighbour outside the mask or outside the volume."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from each surface voxel of mask ``a`` to the nearest surface voxel of ``b``;
    both masks non-empty. Axes of length 1 are dropped first, so a single slice (D = 1) has the
    in-plane outline as its surface rather than every voxel."""
    keep = [i for i, n in enumerate(a.shape) if n > 1] or [0]
    a, b = a.reshape([a.shape[i] for i in keep]), b.reshape([b.shape[i] for i in keep])
    spacing = tuple(spacing[i] for i in keep)
    distance_to_b = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return distance_to_b[surface(a)]


def physical_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Length in mm of the volume's diagonal: the Hausdorff penalty for a missed structure."""
    return float(np.sqrt(np.sum((np.asarray(shape) * np.asarray(spacing)) ** 2)))


def class_metrics(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...],
                  *, distances: bool = True) -> dict[str, float]:
    """The metrics of one class from two boolean masks, with the empty-mask rules above."""
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    if n_pred == 0 and n_truth == 0:
        out = dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd=0.0, hd95=0.0)
    elif n_pred == 0 or n_truth == 0:
        penalty = physical_diagonal(truth.shape, spacing)
        out = dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, hd=penalty, hd95=penalty)
    else:
        tp = int(np.count_nonzero(pred & truth))
        out = dict(dice=2 * tp / (n_pred + n_truth), iou=tp / (n_pred + n_truth - tp),
                   precision=tp / n_pred, recall=tp / n_truth)
        if distances:
            d_pt = surface_distances(pred, truth, spacing)
            d_tp = surface_distances(truth, pred, spacing)
            out["hd"] = float(max(d_pt.max(), d_tp.max()))
            out["hd95"] = float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
    if not distances:
        out.pop("hd", None)
        out.pop("hd95", None)
    return out


@dataclass(frozen=True)
class DetectionThresholds:
    """002's thresholds: smaller false-positive components and poorer true positives are not counted."""

    min_false_positive_px: int = 200
    min_dice: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.min_false_positive_px, bool) or not isinstance(self.min_false_positive_px, int) \
                or self.min_false_positive_px < 0:
            raise ValueError(f"min_false_positive_px must be a non-negative integer, got {self.min_false_positive_px!r}")
        if not 0 <= self.min_dice <= 1:
            raise ValueError(f"min_dice must be in [0, 1], got {self.min_dice!r}")


# Face connectivity within a slice, none across slices: 002's detections are per image.
_IN_SLICE = np.zeros((3, 3, 3), bool)
_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)


def detection_counts(pred: np.ndarray, truth: np.ndarray, thresholds: DetectionThresholds) -> dict[str, int]:
    """(tp, fp, fn) of one class's boolean (D, H, W) masks, as described in the module docstring."""
    pred_cc, _ = ndimage.label(pred, structure=_IN_SLICE)
    truth_cc, n_truth = ndimage.label(truth, structure=_IN_SLICE)
    tp = 0
    for j in range(1, n_truth + 1):
        component = truth_cc == j
        touching = np.unique(pred_cc[component])
        found = np.isin(pred_cc, touching[touching > 0])
        overlap = np.count_nonzero(found & component)
        tp += overlap > 0 and 2 * overlap / (found.sum() + component.sum()) >= thresholds.min_dice
    sizes = np.bincount(pred_cc.ravel())
    hits = np.bincount(pred_cc[truth].ravel(), minlength=len(sizes))
    fp = int(np.count_nonzero((hits[1:] == 0) & (sizes[1:] >= thresholds.min_false_positive_px)))
    return {"tp": int(tp), "fp": fp, "fn": int(n_truth - tp)}


def detection_metrics(counts: dict[str, int]) -> dict[str, float]:
    """Precision and recall from (tp, fp, fn), with the module's empty rules: nothing to find
    and nothing found counts 1; something to find and nothing found, 0."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"det_precision": precision, "det_recall": recall}


def _check(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing) -> None:
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be equal (D, H, W) shapes")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {spacing}")
    for name, arr in (("pred", pred), ("truth", truth)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, *, num_classes: int,
                         spacing: tuple[float, float, float], lcc: bool = False,
                         distances: bool = True, detection: DetectionThresholds | None = None
                         ) -> dict[str, float]:
    """Per-class and mean metrics of one subject.

    Args:
        pred, truth: (D, H, W) integer label volumes (a 2D image is D = 1).
        num_classes: K, background included; metrics cover classes 1..K-1.
        spacing: voxel size in mm along (D, H, W).
        lcc: keep only each predicted class's largest connected component first (003).
        distances: compute hd / hd95 (off for cheap validation).
        detection: add 002's detection-thresholded counts, precision and recall (``det_*``).

    Returns keys ``<metric>_<c>`` and ``<metric>_mean`` for metric in METRIC_NAMES.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _check(pred, truth, num_classes, spacing)
    if num_classes < 2:
        raise ValueError("segmentation_metrics needs at least one foreground class")
    if lcc:
        pred = keep_largest_component_per_class(pred, num_classes)
    spacing = tuple(float(s) for s in spacing)
    out: dict[str, float] = {}
    per_class = [class_metrics(pred == c, truth == c, spacing, distances=distances)
                 for c in range(1, num_classes)]
    for c, values in enumerate(per_class, start=1):
        for name, value in values.items():
            out[f"{name}_{c}"] = value
    for name in per_class[0]:
        out[f"{name}_mean"] = float(np.mean([values[name] for values in per_class]))
    if detection is not None:
        out.update(_detection(pred, truth, num_classes, detection))
    return out


def _detection(pred: np.ndarray, truth: np.ndarray, num_classes: int, thresholds: DetectionThresholds
               ) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in range(1, num_classes):
        counts = detection_counts(pred == c, truth == c, thresholds)
        out.update({f"det_{k}_{c}": v for k, v in counts.items()})
        out.update({f"{k}_{c}": v for k, v in detection_metrics(counts).items()})
    for name in ("det_precision", "det_recall"):
        out[f"{name}_mean"] = float(np.mean([out[f"{name}_{c}"] for c in range(1, num_classes)]))
    return out


def aggregate_subject_metrics(per_subject: Iterable[dict]) -> dict[str, float]:
    """Mean over subjects of every numeric metric (non-numeric keys such as ``subject`` skipped)."""
    per_subject = list(per_subject)
    if not per_subject:
        raise ValueError("aggregate_subject_metrics: no subjects")
    keys = [k for k, v in per_subject[0].items() if isinstance(v, (int, float, np.number))
            and not isinstance(v, bool)]
    return {k: float(np.mean([d[k] for d in per_subject])) for k in keys}
