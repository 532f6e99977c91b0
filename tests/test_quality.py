"""Generator quality figures: PGGAN sliced Wasserstein distance and nearest-neighbour distance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from synthmix.datasets.arrays import SliceSet
from synthmix.trainers import quality


def discs(n: int, *, size: int = 32, seed: int = 0, radius: tuple[float, float] = (0.2, 0.35),
          noise: float = 0.0) -> np.ndarray:
    """(n, 1, size, size) bright discs of random radius on a dark background, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
    r = rng.uniform(*radius, size=(n, 1, 1))
    images = np.where(xx ** 2 + yy ** 2 < r ** 2, 1.0, -1.0) + rng.normal(0, 0.05 + noise, (n, size, size))
    return images[:, None].astype(np.float32)


def test_one_dimensional_swd_equals_scipy_wasserstein():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (500, 1)), rng.normal(0.7, 2, (500, 1))
    # In one dimension every unit direction is +-1, so each projection's distance is W1.
    got = quality._sliced_wasserstein(a, b, repeats=2, directions=3, rng=rng)
    assert got == pytest.approx(scipy.stats.wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-9)


def test_laplacian_pyramid_reconstructs_the_image():
    x = discs(3, size=64, noise=0.3)
    pyramid = quality.laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyramid] == [64, 32, 16]
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + quality._pyr_up(rebuilt)
    np.testing.assert_allclose(rebuilt, x, atol=1e-5)


def test_descriptors_are_patches_of_the_image():
    x = np.arange(2 * 2 * 16 * 16, dtype=np.float32).reshape(2, 2, 16, 16)
    rng = np.random.default_rng(0)
    desc = quality._descriptors(x, 4, 7, np.random.default_rng(0))
    ys, xs = rng.integers(3, 13, size=4), rng.integers(3, 13, size=4)
    raw = np.stack([x[i % 2, :, ys[i] - 3:ys[i] + 4, xs[i] - 3:xs[i] + 4] for i in range(4)]).astype(np.float64)
    raw -= raw.mean(axis=(0, 2, 3), keepdims=True)
    raw /= raw.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(desc, raw.reshape(4, -1), atol=1e-9)


def test_swd_is_at_its_noise_floor_for_identical_sets_and_grows_with_a_shift():
    real = discs(64, seed=1)
    swd = lambda other: quality.sliced_wasserstein_distance(real, other, seed=0)  # noqa: E731
    same, resampled = swd(real.copy()), swd(discs(64, seed=2))
    noisier = [swd(discs(64, seed=2, noise=s)) for s in (0.1, 0.3, 1.0)]
    smaller = swd(discs(64, seed=2, radius=(0.05, 0.15)))
    # Patches are drawn at independent positions for each set (as PGGAN), so identical sets
    # give the estimator's floor, not 0: the same value as two draws of one distribution.
    assert abs(same - resampled) < 0.25 * same
    assert same < 0.5 * noisier[0] < noisier[0] < noisier[1] < noisier[2]
    assert smaller > 10 * same
    assert list(quality.swd_per_level(real, real, seed=0)) == [32, 16]


def test_swd_is_reproducible_for_a_seed_and_checks_shapes():
    a, b = discs(16, seed=1), discs(16, seed=2, noise=0.2)
    assert quality.sliced_wasserstein_distance(a, b, seed=3) == quality.sliced_wasserstein_distance(a, b, seed=3)
    with pytest.raises(ValueError, match="same C, H, W"):
        quality.sliced_wasserstein_distance(a, b[:, :, :16, :16], seed=0)


def test_nearest_neighbour_distance_is_zero_for_copies_and_matches_brute_force():
    training = discs(20, seed=0, noise=0.5)
    mean, per_sample = quality.nearest_neighbour_distance(training[[3, 7, 7]], training, batch_size=6)
    assert mean == pytest.approx(0, abs=1e-4) and per_sample.shape == (3,)
    samples = discs(9, seed=5, noise=0.5)
    _, got = quality.nearest_neighbour_distance(samples, training, batch_size=4)
    brute = np.sqrt(((samples.reshape(9, 1, -1).astype(np.float64)
                      - training.reshape(1, 20, -1)) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(got, brute, rtol=1e-6)


class _Fixed:
    """A stand-in generator that returns given pairs (cycled)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def sample(self, n, *, seed, device="cpu"):
        idx = np.random.default_rng(seed).integers(0, len(self.images), size=n)
        return self.images[idx], self.labels[idx]


def test_generator_quality_on_a_copying_and_a_noise_generator():
    images = discs(24, seed=0)
    labels = (images[:, 0] > 0).astype(np.int64)
    real = SliceSet(images, labels, np.repeat(["a", "b", "c"], 8), np.tile(np.arange(8), 3),
                    {s: (1.0, 1.0, 1.0) for s in "abc"}, 2)
    rng = np.random.default_rng(1)
    noise = _Fixed(rng.normal(0, 1, images.shape).astype(np.float32), rng.integers(0, 2, labels.shape))
    q = quality.generator_quality(_Fixed(images, labels), real, seed=0, n=16, untrained=noise)
    assert q["nn_distance"] == pytest.approx(0, abs=1e-4)
    assert q["nn_distance_untrained"] > q["nn_distance_real_baseline"] > 0
    assert q["swd"] < 0.2 * q["swd_untrained"]
    assert q["nn_distance_real_baseline_kind"].startswith("leave-one-subject-out")
    held = SliceSet(images[:2], labels[:2], np.array(["z", "z"]), np.arange(2), {"z": (1.0, 1.0, 1.0)}, 2)
    q2 = quality.generator_quality(_Fixed(images, labels), real, seed=0, n=16, untrained=noise, held_out=held)
    assert q2["nn_distance_real_baseline"] == pytest.approx(0, abs=1e-4)  # those slices are in `real`
    with pytest.raises(ValueError, match="untrained"):
        quality.generator_quality(_Fixed(images, labels), real, seed=0, n=4)


def test_joint_pictures_encode_labels_as_channels():
    images = np.zeros((2, 1, 4, 4), np.float32)
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, 0, 0] = 2
    joint = quality.joint_pictures(images, labels, 3)
    assert joint.shape == (2, 4, 4, 4)
    assert joint[0, 3, 0, 0] == 1 and joint[0, 1, 0, 0] == 0 and joint[1, 1].sum() == 16
    assert quality.joint_pictures(images, labels.clip(0, 1), 2).shape == (2, 2, 4, 4)
