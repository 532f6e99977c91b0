"""The synthetic-data pipeline: pool specs, label clean-ups, filters and draw, on hand-built
cases with known answers."""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import pytest
import scipy.ndimage

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import StudyError
from synthmix.trainers import synthetic as S
from synthmix.trainers.synthetic import cleanup, filters

SIZE = 32


def disc_labels(n: int, *, seed: int, radius=(0.25, 0.35), centre_jitter: float = 0.03) -> np.ndarray:
    """(n, SIZE, SIZE) class-1 discs of random radius near the centre."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:SIZE, :SIZE] + 0.5) / SIZE - 0.5
    r = rng.uniform(*radius, size=(n, 1, 1))
    cy, cx = (rng.uniform(-centre_jitter, centre_jitter, size=(2, n, 1, 1)))
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(np.int64)


def images_for(labels: np.ndarray, *, seed: int, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.where(labels > 0, 1.0, -1.0) + rng.normal(0, noise, labels.shape))[:, None].astype(np.float32)


def real_set(n_per_subject: int = 8, subjects: str = "abc", seed: int = 0, num_classes: int = 2) -> SliceSet:
    n = n_per_subject * len(subjects)
    labels = disc_labels(n, seed=seed)
    return SliceSet(images_for(labels, seed=seed + 100), labels, np.repeat(list(subjects), n_per_subject),
                    np.tile(np.arange(n_per_subject), len(subjects)), {s: (2.0, 1.0, 1.0) for s in subjects},
                    num_classes)


def samples_of(images, labels, **extras) -> S.Samples:
    return S.Samples(np.asarray(images, np.float32), np.asarray(labels, np.int64), dict(extras))


@pytest.fixture(scope="module")
def reference() -> S.Reference:
    return S.Reference(real_set())


# ---- pool spec ------------------------------------------------------------------------------------

ISSUE_YAML = {"size": 512, "oversample": 2, "cleanup": ["fill_holes", {"name": "remove_small", "min_pixels": 4}],
              "filters": [{"name": "nearest_neighbour", "percentile": 75}, {"name": "zscore_norm", "threshold": "auto"},
                          {"name": "blur", "percentile": 10}, {"name": "realism", "keep": 0.5}]}


def test_build_pool_spec_reads_the_issue_yaml_and_fills_in_every_option():
    spec = S.build_pool_spec(ISSUE_YAML)
    assert spec.size == 512 and spec.oversample == 2.0 and spec.drawn == 1024
    assert [n for n, _ in spec.cleanup] == ["fill_holes", "remove_small"]
    assert dict(spec.filters)["zscore_norm"] == {"real_drop": 0.01, "threshold": "auto"}
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d
    # Defaults spelt out: an option left at its default and the same option given hash alike.
    assert S.build_pool_spec({"filters": ["blur"]}).to_dict() == \
        S.build_pool_spec({"filters": [{"name": "blur", "percentile": 10.0}]}).to_dict()
    assert S.build_pool_spec({}) == S.PoolSpec()


def test_build_pool_spec_names_every_bad_field():
    with pytest.raises(StudyError) as e:
        S.build_pool_spec({"sizes": 3, "size": 0, "oversample": "x",
                           "cleanup": ["nope", {"name": "remove_small", "min_pixel": 3}, {"min_pixels": 3}],
                           "filters": [{"name": "blur", "percentile": True},
                                       {"name": "nearest_neighbour", "percentile": 150},
                                       {"name": "zscore_norm", "threshold": "aut"}, 3]})
    assert e.value.source == "generator.pool"
    problems = e.value.problems
    expected = ["sizes: unknown key", "size: must be in [1, inf), got 0", "oversample: must be a number, got 'x'",
                "cleanup[0]: unknown label clean-up 'nope'", "cleanup[1].min_pixel: unknown option of 'remove_small'",
                "cleanup[2]: must be a name or a mapping with a 'name'", "filters[0].percentile: must be a number, got True",
                "filters[1].percentile: must be in (0, 100], got 150",
                "filters[2].threshold: must be a number or 'auto', got 'aut'", "filters[3]: must be a name"]
    assert len(problems) == len(expected)
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    with pytest.raises(StudyError, match="cleanup: must be a list"):
        S.build_pool_spec({"cleanup": "fill_holes"})


def test_whole_pool_filters_are_refused_on_the_fly(reference):
    spec = S.build_pool_spec({"size": 4, "filters": ["zscore_norm", "blur"]})
    assert S.on_the_fly_problems(spec) == [
        "filters[1]: 'blur' needs the whole pool (it ranks each sample against the others), so it cannot be "
        "used with mixing source: on_the_fly"]
    real = reference.real
    sample = lambda n, seed: samples_of(real.images[:n], real.labels[:n])  # noqa: E731
    with pytest.raises(StudyError, match=r"filters\[1\]: 'blur' needs the whole pool"):
        S.draw(sample, spec, reference, seed=0, on_the_fly=True)
    ok = S.build_pool_spec({"size": 4, "cleanup": ["fill_holes"], "filters": ["zscore_norm"]})
    assert S.draw(sample, ok, reference, seed=0, on_the_fly=True)[0].n == 4


# ---- clean-ups ---------------------------------------------------------------------------------------

def test_a_hole_and_specks_are_repaired(reference):
    clean = np.zeros((SIZE, SIZE), np.int64)
    clean[8:24, 8:24] = 1
    clean[14:17, 14:17] = 2          # a real 3x3 structure of class 2 inside class 1
    broken = clean.copy()
    broken[10, 10] = 0               # a hole in class 1
    broken[1:3, 28] = 1              # a 2-pixel class-1 speck in the background
    broken[20, 20] = 2               # a 1-pixel class-2 speck inside class 1
    ref = S.Reference(real_set(num_classes=3))
    s = samples_of(np.zeros((2, 1, SIZE, SIZE)), np.stack([broken, clean]))
    repaired = cleanup.remove_small(cleanup.fill_holes(s, ref), ref, min_pixels=4)
    np.testing.assert_array_equal(repaired.labels[0], clean)
    np.testing.assert_array_equal(repaired.labels[1], clean)  # a clean map is left alone
    assert repaired.images is s.images


def test_opening_removes_a_spur_and_keeps_the_body(reference):
    labels = np.zeros((1, SIZE, SIZE), np.int64)
    labels[0, 8:24, 8:24] = 1
    body = labels.copy()
    labels[0, 15, 24:30] = 1  # a one-pixel-wide spur
    opened = cleanup.opening(samples_of(np.zeros((1, 1, SIZE, SIZE)), labels), reference, radius=1)
    assert opened.labels[0, 15, 25:30].sum() == 0  # (15, 24) is covered by a cross centred in the body
    assert (opened.labels[0] == 1).sum() >= 0.95 * (body[0] == 1).sum()  # a disk opening rounds the corners


def test_threshold_and_argmax_decode_the_raw_label_channels(reference):
    one = np.array([[[[-0.5, 0.2], [0.0, 0.9]]]], np.float32)  # (1, 1, 2, 2)
    s = samples_of(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2)), label_channels=one)
    np.testing.assert_array_equal(cleanup.threshold(s, reference).labels[0], [[0, 1], [0, 1]])
    ref3 = S.Reference(real_set(num_classes=3))
    three = np.array([[[[0.9, -1]], [[-1, -0.2]], [[-1, 0.5]]]], np.float32)  # (1, 3, 1, 2)
    s3 = samples_of(np.zeros((1, 1, 1, 2)), np.zeros((1, 1, 2)), label_channels=three)
    np.testing.assert_array_equal(cleanup.argmax(s3, ref3).labels[0], [[0, 2]])
    np.testing.assert_array_equal(cleanup.threshold(s3, ref3).labels[0], [[0, 2]])
    with pytest.raises(StudyError, match="one label channel per class"):
        cleanup.argmax(s, ref3)
    bare = samples_of(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2)), critic=np.zeros(1))
    with pytest.raises(StudyError, match=r"decodes extras\['label_channels'\].*carry critic"):
        cleanup.threshold(bare, reference)


def test_training_mask_removes_labels_far_from_every_real_label(reference):
    real = reference.real
    labels = real.labels[:2].copy()
    labels[:, 0, 0] = 1  # the corner: > 10 mm from every real disc (in-plane spacing 1 mm)
    image = real.images[:2]
    masked = cleanup.training_mask(samples_of(image, labels), reference, margin_mm=10.0)
    assert (masked.labels[:, 0, 0] == 0).all()
    np.testing.assert_array_equal(masked.labels, real.labels[:2])  # the real discs are untouched
    wide = cleanup.training_mask(samples_of(image, labels), reference, margin_mm=40.0)
    assert (wide.labels[:, 0, 0] == 1).all()


def test_bowles_postprocess_binarises_closes_fills_and_drops_off_intensity_pixels(reference):
    real = reference.real
    labels, images = real.labels[:1].copy(), real.images[:1].copy()
    truth = labels.copy()
    ys, xs = np.nonzero(truth[0])
    cy, cx = int(ys.mean()), int(xs.mean())
    channels = np.where(labels > 0, 0.8, -0.8)[:, None].astype(np.float32)
    channels[0, 0, cy, cx] = -0.3                  # a hole
    channels[0, 0, 1:4, 1:4] = 0.7                  # a 3x3 blob over background intensity
    labels = (channels[:, 0] > 0).astype(np.int64)  # what the family decoded
    s = samples_of(images, labels, label_channels=channels)
    out = cleanup.bowles_postprocess(s, reference, mask=False)
    assert out.labels[0, cy, cx] == 1 and out.labels[0, 1:4, 1:4].sum() == 0
    assert (out.labels[0] != truth[0]).sum() <= 0.05 * truth[0].sum()  # the disc itself survives
    assert cleanup.bowles_postprocess(s.take(np.array([0])), reference).labels[0, 1:4, 1:4].sum() == 0


# ---- filters ---------------------------------------------------------------------------------------

def test_nearest_neighbour_removes_a_planted_far_away_sample(reference):
    real = reference.real
    rng = np.random.default_rng(3)
    images = real.images[:9] + rng.normal(0, 0.1, real.images[:9].shape).astype(np.float32)
    images[4] = 6.0  # nothing like any real image
    result = filters.nearest_neighbour(samples_of(images, real.labels[:9]), reference, seed=0, percentile=90)
    assert not result.keep[4] and result.keep.sum() == 8
    assert np.argmin(result.score) == 4


def test_blur_removes_a_blurred_copy(reference):
    real = reference.real
    images = real.images[:10].copy()
    images[7] = scipy.ndimage.gaussian_filter(images[7], sigma=(0, 2, 2))
    result = filters.blur(samples_of(images, real.labels[:10]), reference, seed=0, percentile=10)
    assert result.keep.tolist() == [i != 7 for i in range(10)]
    assert np.argmin(result.score) == 7


def test_zscore_norm_auto_drops_at_most_one_percent_of_the_real_masks():
    labels = disc_labels(300, seed=1)
    real = SliceSet(images_for(labels, seed=2), labels, np.repeat(["a", "b", "c"], 100), np.tile(np.arange(100), 3),
                    {s: (1.0, 1.0, 1.0) for s in "abc"}, 2)
    ref = S.Reference(real)
    on_real = filters.zscore_norm(samples_of(real.images, real.labels), ref, seed=0)
    assert 0 < (~on_real.keep).sum() <= 3  # at most 1% of 300, and the threshold does bite
    new_real = disc_labels(200, seed=9)
    fresh = filters.zscore_norm(samples_of(images_for(new_real, seed=3), new_real), ref, seed=0)
    noise = np.random.default_rng(0).integers(0, 2, (20, SIZE, SIZE))
    shifted = disc_labels(20, seed=4, radius=(0.1, 0.15), centre_jitter=0.3)
    bad = filters.zscore_norm(samples_of(np.zeros((40, 1, SIZE, SIZE)), np.concatenate([noise, shifted])), ref, seed=0)
    assert fresh.keep.mean() >= 0.95 and not bad.keep.any()
    fixed = filters.zscore_norm(samples_of(real.images, real.labels), ref, seed=0, threshold=1e9)
    assert fixed.keep.all()


def test_realism_keeps_the_real_looking_samples_over_noise(reference):
    labels = disc_labels(20, seed=7)
    real_looking = images_for(labels, seed=8)
    rng = np.random.default_rng(9)
    noise = rng.normal(0, 1, real_looking.shape).astype(np.float32)
    noise_labels = rng.integers(0, 2, labels.shape)
    s = samples_of(np.concatenate([real_looking, noise]), np.concatenate([labels, noise_labels]))
    result = filters.realism(s, reference, seed=0, keep=0.5)
    assert result.keep.sum() == 20
    assert result.keep[:20].mean() >= 0.9
    again = filters.realism(s, reference, seed=0, keep=0.5)
    np.testing.assert_array_equal(again.score, result.score)  # seeded


# ---- draw ----------------------------------------------------------------------------------------------

def _sampler(real: SliceSet):
    """Real-looking pairs, each with a hole, and every fourth one far away from the real set."""
    def sample(n, seed):
        idx = np.random.default_rng(seed).integers(0, len(real), n)
        images, labels = real.images[idx].copy(), real.labels[idx].copy()
        labels[:, SIZE // 2, SIZE // 2] = 0
        images[::4] += 5.0
        return samples_of(images, labels, critic=np.arange(n, dtype=np.float64))
    return sample


def test_draw_counts_every_step_and_keeps_size(reference):
    spec = S.build_pool_spec({"size": 6, "oversample": 2, "cleanup": ["fill_holes", "remove_small"],
                              "filters": [{"name": "nearest_neighbour", "percentile": 75}, "zscore_norm"]})
    pool, counts = S.draw(_sampler(reference.real), spec, reference, seed=1)
    assert pool.n == 6 and pool.extras["critic"].shape == (6,)
    assert counts["drawn"] == 12 and counts["kept"] == 6 and counts["short_by"] == 0
    steps = counts["steps"]
    assert [(s["name"], s["kind"]) for s in steps] == [("fill_holes", "cleanup"), ("remove_small", "cleanup"),
                                                       ("nearest_neighbour", "filter"), ("zscore_norm", "filter")]
    assert steps[0]["changed"] == 12 and steps[0]["removed"] == 0  # every hole filled, nothing emptied
    assert steps[1]["changed"] == 0
    assert steps[2]["removed"] == 3 and steps[2]["after"] == 9      # the three far-away ones
    assert counts["drawn"] - sum(s["removed"] for s in steps) - counts["trimmed"] == counts["kept"]
    assert (pool.labels[:, SIZE // 2, SIZE // 2] == 1).all()
    assert (pool.images < 3).all()
    assert np.all(np.diff(pool.extras["critic"]) > 0)  # kept in draw order
    again, counts_again = S.draw(_sampler(reference.real), spec, reference, seed=1)
    np.testing.assert_array_equal(again.images, pool.images)
    assert counts_again == counts


def test_draw_keeps_the_best_mean_rank_and_never_pads(reference):
    real = reference.real
    def sample(n, seed):
        return samples_of(real.images[:n], real.labels[:n])
    spec = S.build_pool_spec({"size": 3, "oversample": 2, "filters": [{"name": "blur", "percentile": 1}]})
    pool, counts = S.draw(sample, spec, reference, seed=0)
    sharp = filters.blur(sample(6, 0), reference, seed=0, percentile=1)
    survivors = np.flatnonzero(sharp.keep)
    best = np.sort(survivors[np.argsort(-sharp.score[survivors])[:3]])
    np.testing.assert_array_equal(pool.images, real.images[best])
    assert counts["trimmed"] == len(survivors) - 3
    def far(n, seed):  # each further from the real set than the one before
        return samples_of(real.images[:n] + np.arange(n, dtype=np.float32)[:, None, None, None], real.labels[:n])
    short = S.build_pool_spec({"size": 10, "filters": [{"name": "nearest_neighbour", "percentile": 50}]})
    pool, counts = S.draw(far, short, reference, seed=0)
    assert pool.n == 5 and counts["kept"] == 5 and counts["short_by"] == 5


def test_draw_drops_samples_a_clean_up_emptied_and_checks_the_sampler(reference):
    real = reference.real
    def sample(n, seed):
        labels = real.labels[:n].copy()
        labels[0] = 0
        labels[0, 5, 5] = 1  # only a speck: remove_small empties it
        return samples_of(real.images[:n], labels)
    spec = S.build_pool_spec({"size": 4, "cleanup": ["remove_small"]})
    pool, counts = S.draw(sample, spec, reference, seed=0)
    assert counts["steps"][0]["removed"] == 1 and counts["steps"][0]["emptied"] == 1
    assert pool.n == 3 and counts["short_by"] == 1
    bad = lambda n, seed: samples_of(real.images[:n], real.labels[:n] + 5)  # noqa: E731
    with pytest.raises(ValueError, match="labels outside"):
        S.draw(bad, spec, reference, seed=0)


def test_samples_take_and_concat_carry_the_extras(reference):
    real = reference.real
    s = samples_of(real.images[:4], real.labels[:4], critic=np.arange(4.0))
    both = S.Samples.concat([s.take(np.array([True, False, True, False])), s.take(np.array([3]))])
    assert both.n == 3 and both.extras["critic"].tolist() == [0.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="different extras"):
        S.Samples.concat([s, samples_of(real.images[:1], real.labels[:1])])


# ---- adding entries: one function and one line -------------------------------------------------------

def test_a_new_clean_up_is_one_function_and_one_line(reference):
    def invert(samples, reference, *, keep_class: Annotated[int, S.Interval(0, 1)] = 1):
        return samples.with_labels(np.where(samples.labels == keep_class, samples.labels, 1 - samples.labels))

    S.LABEL_CLEANUPS.add("test_invert", invert)
    try:
        with pytest.raises(StudyError, match=r"cleanup\[0\].keep_class: must be in \[0, 1\], got 3"):
            S.build_pool_spec({"cleanup": [{"name": "test_invert", "keep_class": 3}]})
        spec = S.build_pool_spec({"size": 2, "cleanup": [{"name": "test_invert", "keep_class": 0}]})
        real = reference.real
        pool, counts = S.draw(lambda n, seed: samples_of(real.images[:n], real.labels[:n]), spec, reference, seed=0)
        assert counts["steps"][0]["name"] == "test_invert" and (pool.labels == 0).sum() < (real.labels[:2] == 0).sum()
    finally:
        S.LABEL_CLEANUPS._entries.pop("test_invert")


def test_a_new_filter_is_one_function_and_one_line(reference):
    def darkest(samples, reference, *, seed, keep: Annotated[float, S.Interval(0, 1, closed="right")] = 0.5):
        score = -samples.images.mean(axis=(1, 2, 3))
        return S.FilterResult(score >= np.quantile(score, 1 - keep), score)

    S.SYNTHETIC_FILTERS.add("test_darkest", S.SyntheticFilter(darkest, whole_pool=False))
    try:
        with pytest.raises(StudyError, match=r"filters\[0\].keep: must be a number"):
            S.build_pool_spec({"filters": [{"name": "test_darkest", "keep": "half"}]})
        spec = S.build_pool_spec({"size": 4, "filters": ["test_darkest"]})
        assert not S.on_the_fly_problems(spec)
        real = reference.real
        pool, counts = S.draw(lambda n, seed: samples_of(real.images[:n], real.labels[:n]), spec, reference, seed=0)
        assert counts["steps"][0]["removed"] == 2 and counts["short_by"] == 2
    finally:
        S.SYNTHETIC_FILTERS._entries.pop("test_darkest")
