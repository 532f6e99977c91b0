"""Mixing policies: how a cell's `synthetic` level turns into a stream of real + synthetic batches.

``MIXING_POLICIES`` maps the YAML name (``mixing.policy``) to a policy object. Each policy:

- ``parse(level)`` -> the canonical level (float, int or str), or ``ValueError`` whose message
  says what is wrong with it (the schema prefixes the field path);
- ``check(level, *, batch_size, source)`` -> problems that need other study fields (e.g. a
  minibatch composition must add up to the segmenter's batch size);
- ``uses_synthetic(level)`` -> whether a cell at this level needs a generator at all;
- ``real_share(level, *, n_real, batch_size)`` -> the expected share of real items per draw
  (what a budget counted in real exposures divides by; 0 for synthetic-only levels);
- ``build_sampler(level, *, real, synthetic, batch_size, draw="fixed", base=None)`` -> a ``BatchSampler``
  (``sample(batch_size, rng) -> (images (B,C,H,W) float32, labels (B,H,W) int64)``, with
  ``real_share`` and ``last_draws`` = (real, synthetic) items of the latest batch); calling the
  policy object does the same.

| policy | level | each draw |
| --- | --- | --- |
| additive | 0.5 = +50% synthetic | uniform over real ∪ the first m = round(level * n_real) pool samples |
| additive | "1 only" = synthetic only | from the first m = round(level * n_real) pool samples, no real draw |
| probability | "100:1" real:synthetic | synthetic with probability 1/101, uniform over the whole pool |
| minibatch | "8-8" real-generated | exactly 8 real and 8 synthetic per batch |
| count | 500 synthetic samples | uniform over real ∪ the first 500 pool samples |
| synthetic_only | 0 = real only, n > 0 = only synthetic | synthetic, from the first n pool samples |

``draw`` (``mixing.draw``) reads an additive or count level in one of two ways:

- ``fixed``: the synthetic data is a set of m samples (the pool's first m), as if m synthetic
  images were added to the dataset once. With a small real subset the set is small too.
- ``fresh``: every synthetic draw is uniform over the whole pool, with the same expected share
  m / (n_real + m) of synthetic items per batch. The level then sets how much of the stream is
  synthetic, not how many distinct synthetic samples there are.

``synthetic`` is a fixed ``SyntheticPool`` (pool source) or a callable ``generate(n, rng) ->
(images, labels)`` (on-the-fly source: every synthetic draw is a fresh sample, the pool is
effectively infinite, so a level's proportion of synthetic draws is kept but no prefix applies).

``base`` is the number of real slices a level relative to the real data counts (additive;
default ``len(real)``): an offline augmentation (``trainers.offline_augmentation``) adds
transformed copies of the real slices to ``real``, which are drawn as real data but do not
raise the synthetic amount, so 002's {none, GAN, traditional, both} hold N, 2N, 2N and 3N items.

Generator blocks (``generator.block_size``, 001 III-F: one GAN per block of 6 subjects, their
samples combined): a cell's pool is ``pool_blocks`` of its blocks' pools, an equal share of each.
The blocks' samples are interleaved round-robin (block 1's first, block 2's first, ..., block 1's
second, ...) and cut to the smallest block pool times the number of blocks, so the whole pool
and every prefix of it (what ``fixed`` draws take) hold each block's samples equally. Each block
pool lives in its own block's intensity space; ``renormalise_pool`` maps it into the cell's.

Real draws always go through the segmentation trainer's ``RealSampler`` so that a baseline cell
and a mixed cell see real data the same way; drawing "uniformly over real ∪ synthetic" is done as
k ~ Binomial(B, m / (n + m)) synthetic draws plus B - k real draws, which has the same law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

import numpy as np

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.errors import DataError
from synthmix.registry import Registry

Batch = tuple[np.ndarray, np.ndarray]
Generate = Callable[[int, np.random.Generator], Batch]
Synthetic = Union[SyntheticPool, Generate, None]


class BatchSampler(Protocol):
    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch: ...


DRAWS = ("fixed", "fresh")
"""How an additive or count level picks its synthetic samples (see the module docstring)."""


class _UniformRealSampler:
    """Fallback used only while synthmix.trainers.segmentation (and its RealSampler) is absent:
    slices drawn uniformly with replacement."""

    real_share = 1.0

    def __init__(self, train: SliceSet):
        self.train = train
        self.last_draws = (0, 0)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        idx = rng.integers(0, len(self.train), size=batch_size)
        self.last_draws = (batch_size, 0)
        return self.train.images[idx], self.train.labels[idx]


def real_sampler(real: SliceSet) -> BatchSampler:
    """The segmentation trainer's RealSampler over ``real`` (imported lazily: it pulls in torch)."""
    if len(real) == 0:
        raise DataError("mixing: the real training set has no slices")
    try:
        from synthmix.trainers.segmentation import RealSampler
    except ImportError:
        return _UniformRealSampler(real)
    return RealSampler(real)


# --- synthetic sources ---------------------------------------------------------------------------


class _PoolSource:
    """Uniform draws from the first ``limit`` samples of a fixed pool."""

    def __init__(self, pool: SyntheticPool, limit: int):
        self.pool, self.limit = pool, limit

    def draw(self, n: int, rng: np.random.Generator) -> Batch:
        idx = rng.integers(0, self.limit, size=n)
        return self.pool.images[idx], self.pool.labels[idx]


class _OnTheFlySource:
    """Fresh samples from a generator callable for every draw."""

    def __init__(self, generate: Generate):
        self.generate = generate

    def draw(self, n: int, rng: np.random.Generator) -> Batch:
        images, labels = self.generate(n, rng)
        if len(images) != n or len(labels) != n:
            raise DataError(f"mixing: the on-the-fly generator returned {len(images)} samples, asked for {n}")
        return np.asarray(images), np.asarray(labels)


def _source(synthetic: Synthetic, needed: int | None, what: str, real: SliceSet) -> _PoolSource | _OnTheFlySource:
    """Wrap ``synthetic``; ``needed`` is how many pool samples the level uses (None = the whole pool)."""
    if synthetic is None:
        raise DataError(f"mixing: {what} needs synthetic data, none was given")
    if isinstance(synthetic, SyntheticPool):
        if synthetic.images.shape[1:] != real.images.shape[1:]:
            raise DataError(f"mixing: synthetic images {synthetic.images.shape[1:]} do not match "
                            f"real images {real.images.shape[1:]} (channels, height, width)")
        limit = len(synthetic) if needed is None else needed
        if limit < 1 or limit > len(synthetic):
            raise DataError(f"mixing: {what} needs {limit} synthetic samples, the pool has {len(synthetic)}")
        return _PoolSource(synthetic, limit)
    if callable(synthetic):
        return _OnTheFlySource(synthetic)
    raise TypeError(f"synthetic must be a SyntheticPool, a callable or None, got {type(synthetic).__name__}")


# --- samplers ------------------------------------------------------------------------------------


def _join(parts: list[Batch], shape: tuple[int, ...]) -> Batch:
    images = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False)
    if images.shape[1:] != shape:
        raise DataError(f"mixing: synthetic images {images.shape[1:]} do not match real images {shape}")
    return images, labels


class BernoulliMixSampler:
    """Each item of a batch is synthetic with probability ``p_synthetic``, independently."""

    def __init__(self, *, real: BatchSampler, synthetic, p_synthetic: float, shape: tuple[int, ...]):
        self.real, self.synthetic, self.p, self.shape = real, synthetic, p_synthetic, shape
        self.real_share = 1.0 - p_synthetic
        self.last_draws = (0, 0)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        k = int(rng.binomial(batch_size, self.p))
        self.last_draws = (batch_size - k, k)
        parts = []
        if batch_size - k:
            parts.append(self.real.sample(batch_size - k, rng))
        if k:
            parts.append(self.synthetic.draw(k, rng))
        return _join(parts, self.shape)


class CompositionSampler:
    """Exactly ``n_real`` real and ``n_synthetic`` synthetic items per batch (Neff et al.)."""

    def __init__(self, *, real: BatchSampler | None, synthetic, n_real: int, n_synthetic: int,
                 shape: tuple[int, ...]):
        self.real, self.synthetic = real, synthetic
        self.n_real, self.n_synthetic, self.shape = n_real, n_synthetic, shape
        self.real_share = n_real / (n_real + n_synthetic)
        self.last_draws = (0, 0)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        if batch_size != self.n_real + self.n_synthetic:
            raise ValueError(f"minibatch {self.n_real}-{self.n_synthetic} draws batches of "
                             f"{self.n_real + self.n_synthetic}, asked for {batch_size}")
        self.last_draws = (self.n_real, self.n_synthetic)
        parts = []
        if self.n_real:
            parts.append(self.real.sample(self.n_real, rng))
        if self.n_synthetic:
            parts.append(self.synthetic.draw(self.n_synthetic, rng))
        return _join(parts, self.shape)


# --- policies ------------------------------------------------------------------------------------


def _number(level: Any, what: str) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
        raise ValueError(f"{level!r} is not a number ({what})")
    if level < 0:
        raise ValueError(f"{level!r} is negative ({what} must be >= 0)")
    return level


def _count(level: Any, what: str) -> int:
    value = _number(level, what)
    if value != int(value):
        raise ValueError(f"{level!r} is not a whole number ({what})")
    return int(value)


def _fmt(x: float) -> str:
    return format(x, "g")


class _Policy:
    """Shared defaults; subclasses define parse, uses_synthetic and build_sampler."""

    name = ""
    meaning = ""

    def check(self, level: Any, *, batch_size: int | None, source: str) -> list[str]:
        return []

    def __call__(self, level: Any, **kwargs: Any) -> BatchSampler:
        return self.build_sampler(level, **kwargs)

    def real_share(self, level: Any, *, n_real: int, batch_size: int) -> float:
        """Expected share of real items per draw at ``level`` with ``n_real`` real slices."""
        return 1.0 - self._p_synthetic(level, n_real)

    def _p_synthetic(self, level: Any, n_real: int) -> float:
        raise NotImplementedError

    def _bernoulli(self, real: SliceSet, synthetic: Synthetic, m: int | None, p: float, level: Any,
                   draw: str = "fixed") -> BatchSampler:
        if draw not in DRAWS:
            raise ValueError(f"mixing draw {draw!r}: known: {', '.join(DRAWS)}")
        if p == 0:
            return real_sampler(real)
        limit = None if draw == "fresh" else m  # fresh: the whole pool, at the same share
        source = _source(synthetic, limit, f"{self.name} level {level!r}", real)
        rs = real_sampler(real) if p < 1 else None
        return BernoulliMixSampler(real=rs, synthetic=source, p_synthetic=p, shape=real.images.shape[1:])


class Additive(_Policy):
    name = "additive"
    meaning = ("extra synthetic samples as a fraction of the real ones (0.5 = +50%); '1 only': as many "
               "synthetic samples as real ones, and no real one (004's synthetic-only instance)")
    ONLY = " only"

    def parse(self, level: Any) -> float | str:
        """A number stays a float; a quoted level ("0.5", "1 only") stays text, canonical, so a
        study whose levels include an 'only' one quotes them all and its results column has one
        type (the schema asks for that)."""
        if not isinstance(level, str):
            return float(_number(level, "an additive synthetic amount"))
        text = level.strip()
        only = text.endswith(self.ONLY.strip())
        try:
            value = float(text[:-len(self.ONLY.strip())] if only else text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (only and value == 0):
            raise ValueError(f"{level!r} is not an additive amount: a number (0.5 = +50%) or 'X only' "
                             "(X times the real slices, synthetic only), e.g. '1 only'")
        return f"{_fmt(value)}{self.ONLY}" if only else _fmt(value)

    def amount(self, level: Any) -> tuple[float, bool]:
        """(the synthetic amount relative to the real slices, whether real data is left out)."""
        parsed = self.parse(level)
        if isinstance(parsed, str):
            only = parsed.endswith(self.ONLY)
            return float(parsed[:-len(self.ONLY)] if only else parsed), only
        return parsed, False

    def uses_synthetic(self, level: Any) -> bool:
        return self.amount(level)[0] > 0

    def _p_synthetic(self, level: Any, n_real: int) -> float:
        value, only = self.amount(level)
        m = round(value * n_real)
        return 1.0 if only else m / (n_real + m)

    def build_sampler(self, level: Any, *, real: SliceSet, synthetic: Synthetic, batch_size: int,
                      draw: str = "fixed", base: int | None = None) -> BatchSampler:
        value, only = self.amount(level)
        n = len(real) if base is None else base
        m = round(value * n)
        if value > 0 and m == 0:
            raise DataError(f"mixing: additive level {level!r} of {n} real slices rounds to 0 samples")
        return self._bernoulli(real, synthetic, m, 1.0 if only else m / (len(real) + m), level, draw)


class Probability(_Policy):
    name = "probability"
    meaning = "real:synthetic sampling ratio per draw ('100:1' ... '1:1'; 0 = real only)"

    def parse(self, level: Any) -> str:
        if level == 0 and not isinstance(level, bool):
            return "1:0"
        if isinstance(level, int) and not isinstance(level, bool):
            raise ValueError(f"{level!r} is not a ratio; quote ratios, e.g. '100:1' "
                             "(YAML reads an unquoted 100:1 as the base-60 number 6001)")
        parts = str(level).split(":")
        try:
            real, syn = (_number(float(p), "a ratio part") for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            real = syn = None
        if real is None or real + syn == 0:
            raise ValueError(f"{level!r} is not a real:synthetic ratio such as '10:1'")
        return f"{_fmt(real)}:{_fmt(syn)}"

    def p_synthetic(self, level: Any) -> float:
        real, syn = (float(x) for x in self.parse(level).split(":"))
        return syn / (real + syn)

    def uses_synthetic(self, level: Any) -> bool:
        return self.p_synthetic(level) > 0

    def _p_synthetic(self, level: Any, n_real: int) -> float:
        return self.p_synthetic(level)

    def build_sampler(self, level: Any, *, real: SliceSet, synthetic: Synthetic, batch_size: int,
                      draw: str = "fixed", base: int | None = None) -> BatchSampler:
        # Every synthetic draw is uniform over the whole pool already: draw changes nothing.
        return self._bernoulli(real, synthetic, None, self.p_synthetic(level), level)


class Minibatch(_Policy):
    name = "minibatch"
    meaning = "real-generated pairs in every minibatch ('8-8'); must add up to the batch size"

    def parse(self, level: Any) -> str:
        parts = str(level).split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or sum(map(int, parts)) == 0:
            raise ValueError(f"{level!r} is not a real-generated composition such as '8-8'")
        return f"{int(parts[0])}-{int(parts[1])}"

    def composition(self, level: Any) -> tuple[int, int]:
        real, syn = self.parse(level).split("-")
        return int(real), int(syn)

    def uses_synthetic(self, level: Any) -> bool:
        return self.composition(level)[1] > 0

    def check(self, level: Any, *, batch_size: int | None, source: str) -> list[str]:
        total = sum(self.composition(level))
        if batch_size is None:
            return [f"{self.parse(level)!r} needs the segmenter's batch_size to check against"]
        if total != batch_size:
            return [f"{self.parse(level)!r} adds up to {total}, the segmenter batch_size is {batch_size}"]
        return []

    def real_share(self, level: Any, *, n_real: int, batch_size: int) -> float:
        real, syn = self.composition(level)
        return real / (real + syn)

    def build_sampler(self, level: Any, *, real: SliceSet, synthetic: Synthetic, batch_size: int,
                      draw: str = "fixed", base: int | None = None) -> BatchSampler:
        n_real, n_syn = self.composition(level)
        if n_real + n_syn != batch_size:
            raise ValueError(f"minibatch {level!r} does not add up to the batch size {batch_size}")
        if n_syn == 0:
            return real_sampler(real)
        source = _source(synthetic, None, f"minibatch level {level!r}", real)
        return CompositionSampler(real=real_sampler(real) if n_real else None, synthetic=source,
                                  n_real=n_real, n_synthetic=n_syn, shape=real.images.shape[1:])


class Count(_Policy):
    name = "count"
    meaning = "absolute number of synthetic samples added to the real ones"

    def parse(self, level: Any) -> int:
        return _count(level, "a synthetic count")

    def uses_synthetic(self, level: Any) -> bool:
        return self.parse(level) > 0

    def _p_synthetic(self, level: Any, n_real: int) -> float:
        c = self.parse(level)
        return c / (n_real + c)

    def build_sampler(self, level: Any, *, real: SliceSet, synthetic: Synthetic, batch_size: int,
                      draw: str = "fixed", base: int | None = None) -> BatchSampler:
        c = self.parse(level)
        return self._bernoulli(real, synthetic, c, c / (len(real) + c), level, draw)


class SyntheticOnly(_Policy):
    name = "synthetic_only"
    meaning = "0 = real only (the baseline); n > 0 = train on n synthetic samples and no real ones"

    def parse(self, level: Any) -> int:
        return _count(level, "a synthetic-only pool size")

    def uses_synthetic(self, level: Any) -> bool:
        return self.parse(level) > 0

    def check(self, level: Any, *, batch_size: int | None, source: str) -> list[str]:
        if source == "on_the_fly" and self.parse(level) > 1:
            return [f"{level!r}: with an on-the-fly source every positive level means the same "
                    "(unlimited fresh samples); use 0 (real only) and 1 (synthetic only)"]
        return []

    def _p_synthetic(self, level: Any, n_real: int) -> float:
        return 1.0 if self.parse(level) else 0.0

    def build_sampler(self, level: Any, *, real: SliceSet, synthetic: Synthetic, batch_size: int,
                      draw: str = "fixed", base: int | None = None) -> BatchSampler:
        # The level is the number of distinct samples; "fresh" would make every level the same
        # (the schema refuses it).
        n = self.parse(level)
        return self._bernoulli(real, synthetic, n, 1.0 if n else 0.0, level)


MIXING_POLICIES: Registry = Registry("mixing policy")
"""YAML name -> policy object (parse, check, uses_synthetic, build_sampler; see module docstring)."""
for _policy in (Additive(), Probability(), Minibatch(), Count(), SyntheticOnly()):
    MIXING_POLICIES.add(_policy.name, _policy)

SOURCES = ("pool", "on_the_fly")
"""Where synthetic samples come from: a fixed pool generated once per generator key, or the
generator itself during segmentation training."""


# --- generator blocks ----------------------------------------------------------------------------


def pool_blocks(pools: list[SyntheticPool]) -> SyntheticPool:
    """One pool from the pools of a cell's generator blocks, an equal share of each, interleaved
    so that every prefix is balanced too (see the module docstring)."""
    if not pools:
        raise DataError("mixing: no block pool to combine")
    n = min(len(p) for p in pools)
    if n == 0:
        raise DataError(f"mixing: a block's pool is empty (pool sizes {[len(p) for p in pools]})")
    images = np.stack([p.images[:n] for p in pools], axis=1).reshape(n * len(pools), *pools[0].images.shape[1:])
    labels = np.stack([p.labels[:n] for p in pools], axis=1).reshape(n * len(pools), *pools[0].labels.shape[1:])
    meta = {"blocks": [p.meta for p in pools], "per_block": n}
    return SyntheticPool(np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(labels), meta=meta)


def renormalise_pool(pool: SyntheticPool, source: Any, target: Any) -> SyntheticPool:
    """``pool``'s images moved from normaliser ``source``'s intensity space into ``target``'s
    (both ``preprocess.Normaliser``): undo source's affine map, apply target's."""
    if source == target:
        return pool
    shape = (1, -1) + (1,) * (pool.images.ndim - 2)
    shift = np.asarray(source.shift, dtype=np.float32).reshape(shape)
    scale = np.asarray(source.scale, dtype=np.float32).reshape(shape)
    raw = pool.images * scale + shift if source.method != "none" else pool.images
    return SyntheticPool(target.apply(raw), pool.labels, meta=dict(pool.meta))


@dataclass(frozen=True)
class MixingSpec:
    """The study's ``mixing`` section, validated."""

    policy: str = "additive"
    source: str = "pool"
    pool_size: int | None = None
    draw: str = "fixed"

    def build_sampler(self, level: Any, *, real: SliceSet, synthetic: Synthetic, batch_size: int,
                      base: int | None = None) -> BatchSampler:
        return MIXING_POLICIES.get(self.policy).build_sampler(level, real=real, synthetic=synthetic,
                                                              batch_size=batch_size, draw=self.draw, base=base)
