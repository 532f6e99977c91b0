"""Mixing policies: level parsing, and the realised real/synthetic proportions of each sampler
checked statistically over many draws (binomial 5-sigma bounds)."""

import math

import numpy as np
import pytest

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.datasets.mixing import MIXING_POLICIES
from synthmix.errors import DataError

N_REAL, N_POOL, SIZE = 40, 100, 4


def _real() -> SliceSet:
    # Real slice i is filled with i + 1 (> 0); synthetic pool sample j with -(j + 1) (< 0).
    images = np.repeat(np.arange(1, N_REAL + 1, dtype=np.float32), SIZE * SIZE).reshape(N_REAL, 1, SIZE, SIZE)
    return SliceSet(images=images, labels=np.zeros((N_REAL, SIZE, SIZE), np.int64),
                    subject_ids=np.array([f"s{i // 10}" for i in range(N_REAL)]), positions=np.arange(N_REAL) % 10,
                    spacing={f"s{i}": (1.0, 1.0, 1.0) for i in range(4)}, num_classes=2)


def _pool() -> SyntheticPool:
    images = -np.repeat(np.arange(1, N_POOL + 1, dtype=np.float32), SIZE * SIZE).reshape(N_POOL, 1, SIZE, SIZE)
    return SyntheticPool(images=images, labels=np.ones((N_POOL, SIZE, SIZE), np.int64))


def _draw(sampler, batches=300, batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(batches):
        images, labels = sampler.sample(batch_size, rng)
        assert images.shape == (batch_size, 1, SIZE, SIZE) and images.dtype == np.float32
        assert labels.shape == (batch_size, SIZE, SIZE) and labels.dtype == np.int64
        values.append(images[:, 0, 0, 0])
    return np.concatenate(values)


def _assert_proportion(values, p):
    n = len(values)
    observed = float(np.mean(values < 0))
    sigma = math.sqrt(p * (1 - p) / n) or 1e-12
    assert abs(observed - p) <= 5 * sigma + 1e-12, (observed, p)


def _assert_sources(values, pool_limit):
    real = values[values > 0]
    syn = -values[values < 0]
    assert set(real.astype(int)) <= set(range(1, N_REAL + 1))  # only the given SliceSet
    assert set(syn.astype(int)) <= set(range(1, pool_limit + 1))


@pytest.mark.parametrize("policy, level, p, limit", [
    ("additive", 0.5, 20 / 60, 20),        # +50%: union of 40 real and the first 20 pool samples
    ("additive", 1.0, 40 / 80, 40),
    ("probability", "10:1", 1 / 11, N_POOL),  # whole pool
    ("probability", "1:1", 0.5, N_POOL),
    ("count", 30, 30 / 70, 30),
    ("synthetic_only", 5, 1.0, 5),
])
def test_realised_proportions_from_a_pool(policy, level, p, limit):
    sampler = MIXING_POLICIES.get(policy).build_sampler(level, real=_real(), synthetic=_pool(), batch_size=16)
    values = _draw(sampler)
    _assert_proportion(values, p)
    _assert_sources(values, limit)
    if limit < N_POOL and p > 0:  # every allowed pool sample is used, uniformly enough to see all
        assert len(set(values[values < 0])) == limit


def test_additive_synthetic_only_level_and_a_base_count():
    """'1 only' (004's synthetic-only instance): as many pool samples as real slices, no real draw.
    ``base``: an offline augmentation's copies are drawn as real but do not raise the amount."""
    additive = MIXING_POLICIES.get("additive")
    assert additive.parse("1 only") == "1 only" and additive.parse("0.50") == "0.5" and additive.parse("0") == "0"
    assert additive.uses_synthetic("1 only") and not additive.uses_synthetic("0")
    assert additive.real_share("1 only", n_real=40, batch_size=16) == 0
    with pytest.raises(ValueError, match="'X only'"):
        additive.parse("0 only")
    values = _draw(additive.build_sampler("1 only", real=_real(), synthetic=_pool(), batch_size=16))
    assert (values < 0).all() and set((-values).astype(int)) == set(range(1, N_REAL + 1))
    doubled = _real()  # stands for 20 real slices and their 20 offline copies
    sampler = additive.build_sampler(1.0, real=doubled, synthetic=_pool(), batch_size=16, base=N_REAL // 2)
    values = _draw(sampler)
    _assert_proportion(values, 20 / 60)  # 40 "real" items and 20 synthetic ones
    _assert_sources(values, N_REAL // 2)
    assert sampler.real_share == pytest.approx(40 / 60)


def test_minibatch_composition_is_exact():
    sampler = MIXING_POLICIES.get("minibatch").build_sampler("8-8", real=_real(), synthetic=_pool(), batch_size=16)
    rng = np.random.default_rng(1)
    for _ in range(50):
        images, _ = sampler.sample(16, rng)
        assert (images[:, 0, 0, 0] > 0).sum() == 8 and (images[:, 0, 0, 0] < 0).sum() == 8
    with pytest.raises(ValueError, match="16"):
        sampler.sample(12, rng)
    only_syn = MIXING_POLICIES.get("minibatch").build_sampler("0-16", real=_real(), synthetic=_pool(), batch_size=16)
    assert (only_syn.sample(16, rng)[0] < 0).all()


@pytest.mark.parametrize("policy, level", [("additive", 0), ("probability", "1:0"), ("probability", 0),
                                           ("minibatch", "16-0"), ("count", 0), ("synthetic_only", 0)])
def test_real_only_levels_need_no_synthetic_data(policy, level):
    entry = MIXING_POLICIES.get(policy)
    assert not entry.uses_synthetic(level)
    values = _draw(entry.build_sampler(level, real=_real(), synthetic=None, batch_size=16), batches=20)
    assert (values > 0).all()


def test_on_the_fly_source_is_called_for_exactly_the_synthetic_draws():
    calls = []

    def generate(n, rng):
        calls.append(n)
        return -np.full((n, 1, SIZE, SIZE), 1000.0 + rng.integers(0, 10**6), np.float32), np.ones((n, SIZE, SIZE))

    sampler = MIXING_POLICIES.get("additive").build_sampler(1.0, real=_real(), synthetic=generate, batch_size=16)
    values = _draw(sampler)
    _assert_proportion(values, 0.5)
    assert sum(calls) == int((values < 0).sum())
    assert len(set(values[values < 0])) > 100  # fresh samples, not a fixed pool


def test_same_rng_seed_gives_the_same_batches():
    build = lambda: MIXING_POLICIES.get("probability").build_sampler(  # noqa: E731
        "2:1", real=_real(), synthetic=_pool(), batch_size=8)
    np.testing.assert_array_equal(_draw(build(), batches=10, seed=5), _draw(build(), batches=10, seed=5))


def test_too_small_a_pool_is_named():
    with pytest.raises(DataError, match="needs 40 synthetic samples, the pool has 10"):
        small = SyntheticPool(images=_pool().images[:10], labels=_pool().labels[:10])
        MIXING_POLICIES.get("additive").build_sampler(1.0, real=_real(), synthetic=small, batch_size=8)
    with pytest.raises(DataError, match="needs synthetic data"):
        MIXING_POLICIES.get("count").build_sampler(3, real=_real(), synthetic=None, batch_size=8)


@pytest.mark.parametrize("policy, level, message", [
    ("additive", -0.5, "negative"),
    ("additive", "lots", "not an additive amount"),
    ("probability", 6001, "quote ratios"),
    ("probability", "ten:one", "not a real:synthetic ratio"),
    ("probability", "0:0", "not a real:synthetic ratio"),
    ("minibatch", "8+8", "composition"),
    ("count", 1.5, "whole number"),
    ("count", -3, "negative"),
    ("synthetic_only", True, "not a number"),
])
def test_bad_levels_are_named(policy, level, message):
    with pytest.raises(ValueError, match=message):
        MIXING_POLICIES.get(policy).parse(level)


def test_canonical_levels_and_batch_size_check():
    assert MIXING_POLICIES.get("probability").parse("100:1") == "100:1"
    assert MIXING_POLICIES.get("minibatch").parse("08-8") == "8-8"
    minibatch = MIXING_POLICIES.get("minibatch")
    assert minibatch.check("8-8", batch_size=16, source="pool") == []
    assert "adds up to 12" in minibatch.check("8-4", batch_size=16, source="pool")[0]
    assert MIXING_POLICIES.names() == ["additive", "count", "minibatch", "probability", "synthetic_only"]


@pytest.mark.parametrize("policy, level, m", [("additive", 0.5, 20), ("count", 30, 30)])
def test_fresh_draws_use_the_whole_pool_at_the_same_share(policy, level, m):
    """fixed: the first m pool samples; fresh: uniform over the whole pool, same expected share."""
    entry = MIXING_POLICIES.get(policy)
    fixed = _draw(entry.build_sampler(level, real=_real(), synthetic=_pool(), batch_size=16), batches=600)
    fresh = _draw(entry.build_sampler(level, real=_real(), synthetic=_pool(), batch_size=16, draw="fresh"),
                  batches=600)
    for values in (fixed, fresh):
        _assert_proportion(values, m / (N_REAL + m))
    assert set((-fixed[fixed < 0]).astype(int)) == set(range(1, m + 1))
    assert set((-fresh[fresh < 0]).astype(int)) == set(range(1, N_POOL + 1))
    # A pool smaller than m is fine when fresh: the level is a share, not a count of samples.
    small = SyntheticPool(images=_pool().images[:10], labels=_pool().labels[:10])
    values = _draw(entry.build_sampler(level, real=_real(), synthetic=small, batch_size=16, draw="fresh"))
    _assert_proportion(values, m / (N_REAL + m))


@pytest.mark.parametrize("policy, level, share", [
    ("additive", 1.0, 0.5), ("additive", 0, 1.0), ("count", 40, 0.5), ("probability", "3:1", 0.75),
    ("minibatch", "12-4", 0.75), ("minibatch", "0-16", 0.0), ("synthetic_only", 5, 0.0),
    ("synthetic_only", 0, 1.0)])
def test_samplers_count_their_real_and_synthetic_draws(policy, level, share):
    entry = MIXING_POLICIES.get(policy)
    assert entry.real_share(level, n_real=N_REAL, batch_size=16) == pytest.approx(share)
    sampler = entry.build_sampler(level, real=_real(), synthetic=_pool(), batch_size=16)
    assert sampler.real_share == pytest.approx(share)
    rng = np.random.default_rng(4)
    for _ in range(20):
        images, _ = sampler.sample(16, rng)
        real, synthetic = sampler.last_draws
        assert (real, synthetic) == (int((images[:, 0, 0, 0] > 0).sum()), int((images[:, 0, 0, 0] < 0).sum()))
