"""Synthetic-data filters (``SYNTHETIC_FILTERS`` entries): which generated pairs to keep.

Every entry is ``fn(samples, reference, *, seed, **options) -> FilterResult(keep, score)``, the
score higher for more realistic samples; ``draw`` ranks the survivors by it. The reference is
the cell's real training subset only (rule 3): where a paper compared with its full dataset
(001's nearest-neighbour filter), this compares with the training subset.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn

from synthmix.trainers.quality import joint_pictures, laplacian_variance, nearest_neighbours
from synthmix.trainers.synthetic import FilterResult, Interval, Reference, Samples

Percent = Annotated[float, Interval(0, 100, closed="right")]


def nearest_neighbour(samples: Samples, reference: Reference, *, seed: int,
                      percentile: Percent = 75.0) -> FilterResult:
    """001: each sample's score is the minimum Euclidean distance of its image channels to any
    real training image; samples above the ``percentile``-th percentile of the pool's scores
    are dropped (001 used 75: "very conservative", more samples are cheap)."""
    distance, _ = nearest_neighbours(samples.images, reference.real.images)
    return FilterResult(distance <= np.percentile(distance, percentile), -distance)


def _foreground_onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K-1, H, W) float: the one-hot label maps without the (redundant) background channel."""
    return (labels[:, None] == np.arange(1, num_classes)[None, :, None, None]).astype(np.float64)


def label_zscore_norms(labels: np.ndarray, real_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """004 section 3.4: the Euclidean norm of each label map z-scored pixel by pixel against the
    real label maps' per-pixel mean and SD (one-hot, foreground channels).

    A pixel that is constant over the real set (always background) has SD 0, and its z-score
    would be undefined: the SD is taken from the Jeffreys-smoothed frequency (k + 1/2) / (N + 1)
    of the pixel's class among the N real maps, which only matters where the real set is
    (nearly) constant there, and makes foreground where no real map has any count heavily.
    """
    real = _foreground_onehot(real_labels, num_classes)
    mean = real.mean(axis=0)
    smoothed = (real.sum(axis=0) + 0.5) / (len(real) + 1)
    sd = np.sqrt(smoothed * (1 - smoothed))
    z = (_foreground_onehot(labels, num_classes) - mean) / sd
    return np.sqrt((z ** 2).reshape(len(labels), -1).sum(axis=1))


def auto_threshold(real_labels: np.ndarray, num_classes: int, real_drop: float) -> float:
    """The smallest threshold at which at most ``real_drop`` of the real masks themselves would
    be dropped (004 chose its threshold, 500, by trading synthetic drops against real ones)."""
    norms = label_zscore_norms(real_labels, real_labels, num_classes)
    return float(np.quantile(norms, 1 - real_drop, method="higher"))


def zscore_norm(samples: Samples, reference: Reference, *, seed: int,
                threshold: Annotated[float | Literal["auto"], Interval(0, closed="neither")] = "auto",
                real_drop: Annotated[float, Interval(0, 1, closed="left")] = 0.01) -> FilterResult:
    """004: drop samples whose label map's z-score norm (``label_zscore_norms``) exceeds
    ``threshold``; ``auto`` picks it so that at most ``real_drop`` (1%) of the real training
    masks would be dropped (``auto_threshold``). Needs the real set only, not the pool."""
    real = reference.real
    norms = label_zscore_norms(samples.labels, real.labels, real.num_classes)
    limit = auto_threshold(real.labels, real.num_classes, real_drop) if threshold == "auto" else threshold
    return FilterResult(norms <= limit, -norms)


def blur(samples: Samples, reference: Reference, *, seed: int,
         percentile: Annotated[float, Interval(0, 100, closed="left")] = 10.0) -> FilterResult:
    """002: the variance of the Laplacian of each image (sharp edges give a high variance);
    the blurriest ``percentile`` % of the pool are dropped."""
    sharpness = laplacian_variance(samples.images)
    keep = sharpness > np.percentile(sharpness, percentile) if percentile > 0 else np.ones(len(sharpness), bool)
    return FilterResult(keep, sharpness)


# ---- realism: a real-vs-synthetic classifier (002) --------------------------------------------------

class RealismNet(nn.Module):
    """A small CNN: three stride-2 3x3 convolutions (16, 32, 64 filters, LeakyReLU), global
    average pooling and a linear logit (real > 0)."""

    def __init__(self, in_channels: int):
        super().__init__()
        layers, c = [], in_channels
        for out in (16, 32, 64):
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = out
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _train_classifier(real: torch.Tensor, fake: torch.Tensor, *, seed: int, steps: int,
                      batch_size: int = 32) -> RealismNet:
    """Balanced batches (half real, half synthetic), binary cross-entropy, Adam; seeded."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RealismNet(real.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = torch.cat([torch.ones(batch_size), torch.zeros(batch_size)])
    for _ in range(steps):
        x = torch.cat([real[rng.integers(0, len(real), batch_size)], fake[rng.integers(0, len(fake), batch_size)]])
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def realism_scores(samples: Samples, reference: Reference, *, seed: int, folds: int = 2, steps: int = 150,
                   with_labels: bool = True) -> np.ndarray:
    """Cross-fitted real-vs-synthetic logits (higher = more real): the samples are split into
    ``folds``; each fold is scored by a classifier trained on the real training slices and the
    other folds' samples, so no sample is scored by a classifier that saw it. Inputs are the
    image channels (plus the label channels if ``with_labels``), standardised with the real
    slices' per-channel mean and SD."""
    k = reference.real.num_classes
    pictures = (lambda i, l: joint_pictures(i, l, k)) if with_labels else (lambda i, l: np.asarray(i, np.float32))
    real = pictures(reference.real.images, reference.real.labels)
    fake = pictures(samples.images, samples.labels)
    mean, sd = real.mean(axis=(0, 2, 3), keepdims=True), real.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    real_t, fake_t = (torch.from_numpy(((x - mean) / sd).astype(np.float32)) for x in (real, fake))
    n = len(fake_t)
    scores = np.zeros(n)
    if n < 2:
        return scores  # nothing to cross-fit against: no opinion
    fold_of = np.random.default_rng(seed).permutation(n) % min(folds, n)
    for f in np.unique(fold_of):
        net = _train_classifier(real_t, fake_t[fold_of != f], seed=seed + int(f), steps=steps)
        with torch.no_grad():
            scores[fold_of == f] = net(fake_t[fold_of == f]).double().numpy()
    return scores


def realism(samples: Samples, reference: Reference, *, seed: int,
            keep: Annotated[float, Interval(0, 1, closed="right")] = 0.5,
            folds: Annotated[int, Interval(2)] = 2, steps: Annotated[int, Interval(1)] = 150,
            with_labels: bool = True) -> FilterResult:
    """002: keep the ``keep`` fraction of the pool that a small real-vs-synthetic classifier
    (``realism_scores``, cross-fitted over ``folds``, ``steps`` Adam steps each) finds most real."""
    scores = realism_scores(samples, reference, seed=seed, folds=folds, steps=steps, with_labels=with_labels)
    n_keep = max(1, int(round(keep * len(scores))))
    kept = np.zeros(len(scores), bool)
    kept[np.argsort(-scores, kind="stable")[:n_keep]] = True
    return FilterResult(kept, scores)
