"""Metrics against brute-force numpy: counts for Dice/IoU/precision/recall, pairwise surface
distances for Hausdorff/HD95 (anisotropic spacing included), and the empty-mask rules."""


import numpy as np
import pytest

from synthmix.trainers.metrics import (aggregate_subject_metrics, largest_connected_component,
                                       physical_diagonal, segmentation_metrics)


def brute_surface(mask):
    """Voxels of mask with a face-neighbour outside it or outside the volume, by explicit loops
    over the neighbour offsets; singleton axes have no neighbours along them."""
    mask = mask.astype(bool)
    out = np.zeros_like(mask)
    for idx in zip(*np.nonzero(mask)):
        for axis in range(mask.ndim):
            if mask.shape[axis] == 1:
                continue
            for step in (-1, 1):
                n = list(idx)
                n[axis] += step
                if not 0 <= n[axis] < mask.shape[axis] or not mask[tuple(n)]:
                    out[idx] = True
    return out


def brute_hd(a, b, spacing):
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    return max(d_ab.max(), d_ba.max()), max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def brute_overlap(p, t):
    tp = np.sum(p & t)
    fp = np.sum(p & ~t)
    fn = np.sum(~p & t)
    return dict(dice=2 * tp / (2 * tp + fp + fn), iou=tp / (tp + fp + fn),
                precision=tp / (tp + fp), recall=tp / (tp + fn))


def random_blobs(rng, shape, k):
    """A label volume of k classes made of random boxes (overlaps overwritten)."""
    vol = np.zeros(shape, dtype=np.int64)
    for c in range(1, k):
        for _ in range(2):
            lo = [rng.integers(0, s - 1) for s in shape]
            hi = [rng.integers(l + 1, s + 1) for l, s in zip(lo, shape)]
            vol[tuple(slice(l, h) for l, h in zip(lo, hi))] = c
    return vol


@pytest.mark.parametrize("seed,spacing", [(0, (1.0, 1.0, 1.0)), (1, (3.0, 0.5, 0.8)), (2, (2.0, 1.0, 0.25))])
def test_against_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    k = 3
    truth = random_blobs(rng, (5, 9, 8), k)
    pred = random_blobs(rng, (5, 9, 8), k)
    m = segmentation_metrics(pred, truth, num_classes=k, spacing=spacing)
    for c in range(1, k):
        p, t = pred == c, truth == c
        assert p.any() and t.any()  # the seeds are chosen so every class is in both
        for name, value in brute_overlap(p, t).items():
            assert m[f"{name}_{c}"] == pytest.approx(value)
        hd, hd95 = brute_hd(p, t, spacing)
        assert m[f"hd_{c}"] == pytest.approx(hd)
        assert m[f"hd95_{c}"] == pytest.approx(hd95)
    for name in ("dice", "iou", "precision", "recall", "hd", "hd95"):
        assert m[f"{name}_mean"] == pytest.approx(np.mean([m[f"{name}_{c}"] for c in range(1, k)]))


def test_known_hausdorff_anisotropic():
    # Two single voxels 2 slices and 3 rows apart at spacing (2, 0.5, 1): sqrt(4^2 + 1.5^2).
    truth = np.zeros((4, 5, 5), dtype=np.int64)
    pred = np.zeros_like(truth)
    truth[0, 0, 0] = 1
    pred[2, 3, 0] = 1
    m = segmentation_metrics(pred, truth, num_classes=2, spacing=(2.0, 0.5, 1.0))
    assert m["hd_1"] == pytest.approx(np.hypot(4.0, 1.5))
    assert m["hd95_1"] == pytest.approx(np.hypot(4.0, 1.5))
    assert m["dice_1"] == 0.0


def test_single_slice_uses_in_plane_outline():
    # A 2D image as a (1, H, W) volume: a filled square vs the same square with a far voxel.
    truth = np.zeros((1, 12, 12), dtype=np.int64)
    truth[0, 2:9, 2:9] = 1
    pred = truth.copy()
    pred[0, 11, 11] = 1
    m = segmentation_metrics(pred, truth, num_classes=2, spacing=(5.0, 1.0, 1.0))
    hd, hd95 = brute_hd(pred == 1, truth == 1, (5.0, 1.0, 1.0))
    assert m["hd_1"] == pytest.approx(hd) == pytest.approx(np.hypot(3, 3))
    assert m["hd95_1"] == pytest.approx(hd95)


def test_both_empty():
    z = np.zeros((3, 6, 6), dtype=np.int64)
    m = segmentation_metrics(z, z, num_classes=3, spacing=(1, 1, 1))
    for c in (1, 2):
        assert (m[f"dice_{c}"], m[f"iou_{c}"], m[f"precision_{c}"], m[f"recall_{c}"]) == (1, 1, 1, 1)
        assert m[f"hd_{c}"] == 0 and m[f"hd95_{c}"] == 0


@pytest.mark.parametrize("empty", ["pred", "truth"])
def test_one_empty_gets_the_diagonal_penalty(empty):
    spacing = (2.0, 1.0, 0.5)
    full = np.zeros((3, 6, 8), dtype=np.int64)
    full[1, 2:4, 2:5] = 1
    z = np.zeros_like(full)
    pred, truth = (z, full) if empty == "pred" else (full, z)
    m = segmentation_metrics(pred, truth, num_classes=2, spacing=spacing)
    diagonal = np.sqrt((3 * 2.0) ** 2 + (6 * 1.0) ** 2 + (8 * 0.5) ** 2)
    assert physical_diagonal((3, 6, 8), spacing) == pytest.approx(diagonal)
    assert m["hd_1"] == pytest.approx(diagonal) and m["hd95_1"] == pytest.approx(diagonal)
    assert m["dice_1"] == m["iou_1"] == m["precision_1"] == m["recall_1"] == 0.0
    assert all(np.isfinite(v) for v in m.values())


def test_mean_includes_missed_class_not_nan():
    truth = np.zeros((2, 6, 6), dtype=np.int64)
    truth[:, 1:3, 1:3] = 1
    truth[:, 4:6, 4:6] = 2
    pred = np.where(truth == 1, 1, 0)  # class 2 missed entirely
    m = segmentation_metrics(pred, truth, num_classes=3, spacing=(1, 1, 1))
    assert m["dice_1"] == 1.0 and m["dice_2"] == 0.0
    assert m["dice_mean"] == 0.5


def test_largest_connected_component():
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, 0:2, 0:2] = True      # 4 voxels
    mask[0, 4:7, 4:7] = True      # 9 voxels
    mask[0, 0, 7] = True          # 1 voxel
    kept = largest_connected_component(mask)
    assert kept.sum() == 9 and kept[0, 5, 5]
    assert not largest_connected_component(np.zeros((2, 2, 2), bool)).any()


def test_lcc_post_processing_per_class():
    truth = np.zeros((1, 10, 10), dtype=np.int64)
    truth[0, 1:5, 1:5] = 1
    truth[0, 6:9, 6:9] = 2
    pred = truth.copy()
    pred[0, 0, 9] = 1  # a stray false positive of class 1
    pred[0, 9, 0] = 2  # and of class 2
    plain = segmentation_metrics(pred, truth, num_classes=3, spacing=(1, 1, 1))
    cleaned = segmentation_metrics(pred, truth, num_classes=3, spacing=(1, 1, 1), lcc=True)
    assert plain["dice_1"] < 1 and plain["dice_2"] < 1
    assert cleaned["dice_1"] == 1 and cleaned["dice_2"] == 1 and cleaned["hd_mean"] == 0


def test_aggregate_means_numeric_keys():
    rows = [{"subject": "a", "dice_1": 0.5, "hd_1": 2.0}, {"subject": "b", "dice_1": 1.0, "hd_1": 4.0}]
    assert aggregate_subject_metrics(rows) == {"dice_1": 0.75, "hd_1": 3.0}


def test_bad_input():
    with pytest.raises(ValueError, match="outside"):
        segmentation_metrics(np.full((1, 2, 2), 3), np.zeros((1, 2, 2), int), num_classes=3, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((1, 2, 2), int), np.zeros((1, 2, 3), int), num_classes=2, spacing=(1, 1, 1))


# ---- 002's detection-thresholded precision and recall ---------------------------------------------

def _box(shape, z, y, x, h, w):
    m = np.zeros(shape, bool)
    m[z, y:y + h, x:x + w] = True
    return m


def test_detection_counts_follow_002s_thresholds():
    from synthmix.trainers.metrics import DetectionThresholds, detection_counts

    shape = (2, 64, 64)
    truth = _box(shape, 0, 0, 0, 20, 20) | _box(shape, 0, 40, 40, 20, 20) | _box(shape, 1, 0, 0, 20, 20)
    pred = (_box(shape, 0, 5, 5, 20, 20)        # Dice 2*225/800 = 0.56 with truth 1: a true positive
            | _box(shape, 0, 40, 40, 3, 20)     # Dice 2*60/460 = 0.26 >= 0.25 with truth 2: a true positive
            | _box(shape, 0, 25, 40, 10, 10)    # 100 px touching no truth: noise under 200 px, ignored
            | _box(shape, 1, 30, 30, 15, 15))   # 225 px touching no truth: a false positive
    # Truth 3 (slice 1) is not found: one false negative; slice 0's boxes do not connect to slice 1's.
    assert detection_counts(pred, truth, DetectionThresholds()) == {"tp": 2, "fp": 1, "fn": 1}
    # A stricter Dice turns the thin overlap into a miss; a lower pixel floor counts the speck.
    assert detection_counts(pred, truth, DetectionThresholds(min_dice=0.3)) == {"tp": 1, "fp": 1, "fn": 2}
    assert detection_counts(pred, truth, DetectionThresholds(min_false_positive_px=50)) == {"tp": 2, "fp": 2, "fn": 1}


def test_detection_metrics_are_keys_of_segmentation_metrics_with_empty_rules():
    from synthmix.trainers.metrics import DetectionThresholds

    shape = (1, 64, 64)
    truth = _box(shape, 0, 0, 0, 20, 20).astype(np.int64)
    pred = (_box(shape, 0, 2, 2, 20, 20) | _box(shape, 0, 40, 40, 15, 15)).astype(np.int64)
    pred[0, 50:60, 0:10] = 2  # class 2 predicted (100 px, under 200) where there is none: nothing counted
    m = segmentation_metrics(pred, truth, num_classes=3, spacing=(1.0, 1.0, 1.0), distances=False,
                             detection=DetectionThresholds())
    assert (m["det_tp_1"], m["det_fp_1"], m["det_fn_1"]) == (1, 1, 0)
    assert m["det_precision_1"] == 0.5 and m["det_recall_1"] == 1.0
    assert (m["det_tp_2"], m["det_fp_2"], m["det_fn_2"]) == (0, 0, 0)
    assert m["det_precision_2"] == 1.0 and m["det_recall_2"] == 1.0  # nothing to find, nothing counted
    assert m["det_precision_mean"] == 0.75
    assert m["precision_2"] == 0.0  # the voxel-wise precision still sees the speck
    missed = segmentation_metrics(np.zeros_like(truth), truth, num_classes=2, spacing=(1.0, 1.0, 1.0),
                                  distances=False, detection=DetectionThresholds())
    assert (missed["det_precision_1"], missed["det_recall_1"]) == (0.0, 0.0)
    assert "det_tp_1" not in segmentation_metrics(pred, truth, num_classes=3, spacing=(1.0, 1.0, 1.0),
                                                  distances=False)
    with pytest.raises(ValueError, match="min_dice"):
        DetectionThresholds(min_dice=1.5)
