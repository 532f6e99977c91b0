"""Losses against independent numpy computations, and the class-weight formula."""

import numpy as np
import pytest
import torch

from synthmix.trainers.losses import LOSSES, build_loss, class_weights_from_labels


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _onehot(labels, k):
    return np.moveaxis(np.eye(k)[labels], -1, 1)


def _soft_dice_losses(logits, labels, k, smooth=1e-5):
    """Per-class 1 - soft Dice over the whole batch (numpy, by hand)."""
    p, g = _softmax(logits), _onehot(labels, k)
    axes = (0, 2, 3)
    inter = (p * g).sum(axes)
    return 1 - (2 * inter + smooth) / (p.sum(axes) + g.sum(axes) + smooth)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 8, 8))
    return logits, labels


def _torch_loss(name, logits, labels, **kw):
    loss = build_loss(name, num_classes=4, **kw)
    return float(loss(torch.from_numpy(logits), torch.from_numpy(labels)))


def test_registry_names():
    assert set(LOSSES.names()) == {"dice", "weighted_dice", "ce", "dice_ce"}


def test_dice(batch):
    logits, labels = batch
    expected = _soft_dice_losses(logits, labels, 4).mean()
    assert _torch_loss("dice", logits, labels) == pytest.approx(expected, rel=1e-5)


def test_weighted_dice(batch):
    logits, labels = batch
    w = np.array([0.2, 1.0, 1.3, 1.5], dtype=np.float32)
    expected = (w * _soft_dice_losses(logits, labels, 4)).mean()
    assert _torch_loss("weighted_dice", logits, labels, class_weights=w) == pytest.approx(expected, rel=1e-5)


def test_weighted_dice_requires_weights(batch):
    with pytest.raises(ValueError, match="class_weights"):
        build_loss("weighted_dice", num_classes=4)


def test_ce(batch):
    logits, labels = batch
    p = _softmax(logits.astype(np.float64))
    picked = np.take_along_axis(p, labels[:, None], axis=1)
    expected = -np.log(picked).mean()
    assert _torch_loss("ce", logits, labels) == pytest.approx(expected, rel=1e-5)


def test_dice_ce_is_the_sum(batch):
    logits, labels = batch
    expected = _torch_loss("dice", logits, labels) + _torch_loss("ce", logits, labels)
    assert _torch_loss("dice_ce", logits, labels) == pytest.approx(expected, rel=1e-5)


def test_perfect_prediction_has_low_dice_loss():
    labels = np.zeros((2, 8, 8), dtype=np.int64)
    labels[:, 2:6, 2:6] = 1
    logits = (_onehot(labels, 2) * 40 - 20).astype(np.float32)
    loss = build_loss("dice", num_classes=2)
    assert float(loss(torch.from_numpy(logits), torch.from_numpy(labels))) < 1e-6


def test_class_weights_inverse_frequency():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights_from_labels(labels, 3)
    inverse = np.array([10 / 6, 10 / 3, 10 / 1])
    np.testing.assert_allclose(w, inverse / inverse.mean(), rtol=1e-6)
    assert w.mean() == pytest.approx(1.0)


def test_class_weights_absent_class_gets_largest_present_weight():
    labels = np.array([0, 0, 0, 1])
    w = class_weights_from_labels(labels, 3)
    assert np.isfinite(w).all()
    assert w[2] == pytest.approx(w[1]) and w[1] > w[0]


def test_class_weights_reject_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        class_weights_from_labels(np.array([0, 3]), 3)
