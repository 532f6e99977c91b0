"""Generator quality figures: PGGAN sliced Wasserstein distance with its position-matched floor,
nearest-neighbour distance, the full report."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
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


@pytest.fixture(scope="module")
def phantom_halves(tmp_path_factory):
    """The quickstart's phantom at its smallest: 3 training subjects and 3 others, 16 slices each
    (up to half of them empty end slices), normalised with the training subjects' statistics."""
    from synthmix.datasets.loader import prepare_split_data
    from synthmix.datasets.phantom import write_phantom_dataset
    from synthmix.datasets.preprocess import PreprocessConfig
    from synthmix.datasets.splits import Split

    root = tmp_path_factory.mktemp("phantom_halves")
    manifest = write_phantom_dataset(root / "phantom", subjects=6, size=32, classes=3, seed=0)
    ids = [f"sub-{i:03d}" for i in range(6)]
    split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:3]), val=tuple(ids[3:]), test=(), pool=tuple(ids[:3]))
    train, held, _, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2), root / "cache")
    return train, held


def test_position_matched_halves_are_disjoint_equal_and_hold_the_same_positions(phantom_halves):
    train, _ = phantom_halves
    halves = quality.position_matched_halves(train, seed=0, splits=3)
    for a, b in halves:
        assert not (a & b).any() and a.sum() == b.sum() == len(train) // 2
        # every subject appears in both halves, at the same positions (pairs of neighbours)
        assert set(train.subject_ids[a]) == set(train.subject_ids[b]) == set(train.subjects)
        assert np.abs(np.sort(train.positions[a]) - np.sort(train.positions[b])).max() <= 1
    assert not np.array_equal(halves[0][0], halves[1][0])  # a new split per seed stream
    capped = quality.position_matched_halves(train, seed=0, splits=1, max_pairs=5)[0]
    assert capped[0].sum() == capped[1].sum() == 5
    assert np.ptp(train.positions[capped[0]]) >= 12  # evenly spaced pairs still span the volume
    one = SliceSet(train.images[:16], train.labels[:16], train.subject_ids[:16], train.positions[:16],
                   train.spacing, 3)  # one subject: neighbouring slices split between the halves
    a, b = quality.position_matched_halves(one, seed=0, splits=1)[0]
    assert np.abs(np.sort(one.positions[a]) - np.sort(one.positions[b])).max() == 1


def test_stratified_draws_take_one_pair_per_area_stratum():
    labels = np.zeros((40, 8, 8), np.int64)
    for i in range(40):
        labels[i, : i // 5] = 1  # 8 area levels, 5 pairs each
    draws = quality.stratified_draws(labels, 8, 3, np.random.default_rng(0))
    for idx in draws:
        assert len(set(idx.tolist())) == 8
        assert sorted((labels[idx] > 0).sum(axis=(1, 2)).tolist()) == [8 * k for k in range(8)]
    assert not np.array_equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="at least 9 pairs"):
        quality.stratified_draws(labels[:5], 9, 1, np.random.default_rng(0))


def test_matched_swd_tells_degraded_copies_from_real_slices(phantom_halves):
    """Held-out real subjects score at the floor (within its spread), blurred copies of them and
    copies without the skull ring's brightness (grey heads, as the quickstart's poor samples)
    well above it, in order of damage; the floor uses the training subjects only."""
    train, held = phantom_halves
    blurred = scipy.ndimage.gaussian_filter(held.images, sigma=(0, 0, 2.5, 2.5)).astype(np.float32)
    grey = np.minimum(held.images, np.percentile(held.images, 70)).astype(np.float32)  # ring flattened
    sets = {"held": (held.images, held.labels), "blurred": (blurred, held.labels), "grey": (grey, held.labels)}
    r = quality.matched_swd(train, sets, seed=0, splits=4, draws=1)
    floor = r["real"]
    assert r["sizes"] == [[24, 24]] * 4
    assert abs(r["held"]["mean"] - floor["mean"]) < 2 * floor["sd"] and abs(r["held"]["gap"]) < 2 * r["held"]["gap_sd"]
    assert r["blurred"]["gap"] > 2.5 * r["blurred"]["gap_sd"] and r["blurred"]["gap"] > 2 * floor["sd"]
    assert r["grey"]["gap"] > 5 * r["grey"]["gap_sd"] and r["grey"]["mean"] > 2 * floor["mean"]
    assert floor["mean"] < r["blurred"]["mean"] < r["grey"]["mean"]
    assert abs(r["held"]["vs_floor"]) < 1.5 < 3 < r["blurred"]["vs_floor"] < r["grey"]["vs_floor"]
    assert 0 < r["grey"]["gap_se"] < r["grey"]["gap_sd"]
    # the same real slices from a training subject's own half give a gap of exactly 0: paired
    same = quality.matched_swd(train, {}, seed=0, splits=4, draws=1)["real"]
    assert same["per_split"] == floor["per_split"] and floor["gap"] == 0


def test_quality_report_gives_every_figure_for_each_set(phantom_halves):
    from synthmix.trainers.synthetic import Samples

    train, held = phantom_halves
    real_draw = lambda data: lambda n, seed: Samples(  # noqa: E731
        *(lambda i: (data.images[i], data.labels[i]))(np.random.default_rng(seed).integers(0, len(data), n)), {})
    rng = np.random.default_rng(1)
    noise = lambda n, seed: Samples(rng.normal(0, 1, (n, 1, 32, 32)).astype(np.float32),  # noqa: E731
                                    rng.integers(0, 3, (n, 32, 32)), {})
    segmenter = quality.train_reference_segmenter(train, seed=0, steps=2)
    report = quality.quality_report(real_draw(train), train, seed=0, n=16, untrained=noise, splits=2, draws=1,
                                    reference_segmenter=segmenter, others={"held": real_draw(held)})
    assert report["meta"]["swd_set_sizes"] == [[8, 8]] * 2  # halves capped at n/2
    for part in ("trained", "untrained", "held"):
        assert {"swd", "swd_sd", "swd_gap", "swd_gap_sd", "swd_vs_floor", "fcn_dice_mean", "blur",
                "nn_distance"} <= set(report[part])
    assert report["trained"]["nn_distance"] == pytest.approx(0, abs=1e-4)  # copies of the training slices
    assert report["untrained"]["swd_vs_floor"] > 3
    assert report["real"]["fcn_on"].startswith("training") and report["real"]["nn_distance"] > 0


def test_joint_pictures_encode_labels_as_channels():
    images = np.zeros((2, 1, 4, 4), np.float32)
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, 0, 0] = 2
    joint = quality.joint_pictures(images, labels, 3)
    assert joint.shape == (2, 4, 4, 4)
    assert joint[0, 3, 0, 0] == 1 and joint[0, 1, 0, 0] == 0 and joint[1, 1].sum() == 16
    assert quality.joint_pictures(images, labels.clip(0, 1), 2).shape == (2, 2, 4, 4)
