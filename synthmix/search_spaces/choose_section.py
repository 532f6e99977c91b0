"""``generator.choose``: generator model selection (002), one configuration chosen per subset::

    generator:
      name: pix2pix
      config: {steps: 300, batch_size: 8}
      choose:
        candidates: [{steps: 100}, {steps: 300}, {steps: 600}]   # overrides of config, one each
        by: [fcn_score, blur, realism]                            # CHOICE_CRITERIA names

Each candidate is ``config`` with its overrides: one generator key, trained once and shared like
any other (a candidate equal to another study's config has that study's key). Once every
candidate of a subset is trained, the candidate with the best mean rank over ``by`` is chosen
(ties: the one listed first); the choice is recorded in the store (``choices/<key>.json``) and
the subset's cells draw the chosen candidate's pool (``synthmix.orchestrator.choices``).

The criteria read the figures the generator flow already writes to its ``quality.json``, which
come from the subset's own training slices (and, for the FCN reference's own Dice, the
validation slices), never from test subjects (rules 3 and 4):

- ``fcn_score``: the reference segmenter's Dice on synthetic pairs (``fcn_dice_mean``); higher
  is better (002's FCN score).
- ``blur``: variance of the Laplacian of the synthetic images (``blur``) against the training
  slices' own (``blur_real``); closer to real is better (002 rejected blurry images; a sharper
  than real image is noise, so the distance counts, not the value).
- ``realism``: the SWD of synthetic image+label pairs to the real training slices above the
  real-vs-real floor (``swd_gap``); lower is better. 002 used a real/fake classifier; the SWD
  gap is the figure this platform already measures against real training data without training
  a third network, and its floor makes candidates with different seeds comparable.
- ``swd``: the raw SWD (``swd``); lower is better.
- ``memorisation``: nearest-neighbour distance to the training images (``nn_distance``);
  higher is better (a generator that copies its training slices scores ~0).

Ranks use ``scipy.stats.rankdata`` (ties share their mean rank); a missing or non-finite figure
ranks last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.stats

from synthmix.errors import StudyError
from synthmix.registry import Registry

CHOOSE_KEYS = ("candidates", "by")


@dataclass(frozen=True)
class Criterion:
    """How one criterion scores a candidate from its quality.json: ``score(quality)`` is the
    value to rank by, ``lower_is_better`` its direction; ``figure`` names what it reads."""

    figure: str
    lower_is_better: bool
    score: Callable[[dict], float]
    meaning: str


def _figure(name: str) -> Callable[[dict], float]:
    return lambda q: _number(q.get(name))


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


CHOICE_CRITERIA: Registry = Registry("model selection criterion")
CHOICE_CRITERIA.add("fcn_score", Criterion("fcn_dice_mean", False, _figure("fcn_dice_mean"),
                                           "FCN score: reference segmenter's Dice on synthetic pairs (higher better)"))
CHOICE_CRITERIA.add("blur", Criterion("|blur - blur_real|", True,
                                      lambda q: abs(_number(q.get("blur")) - _number(q.get("blur_real"))),
                                      "blur (variance of Laplacian) distance to the training slices' (lower better)"))
CHOICE_CRITERIA.add("realism", Criterion("swd_gap", True, _figure("swd_gap"),
                                         "SWD to real training slices above the real-vs-real floor (lower better)"))
CHOICE_CRITERIA.add("swd", Criterion("swd", True, _figure("swd"), "raw SWD to real training slices (lower better)"))
CHOICE_CRITERIA.add("memorisation", Criterion("nn_distance", False, _figure("nn_distance"),
                                              "nearest-neighbour distance to training images (higher better)"))


@dataclass(frozen=True)
class ChooseSpec:
    candidates: tuple  # config overrides, one dict per candidate
    by: tuple          # CHOICE_CRITERIA names

    def to_dict(self) -> dict:
        return {"candidates": [dict(c) for c in self.candidates], "by": list(self.by)}


def validate_choose(raw: Any, *, base_config: dict, build_config: Callable[[dict], Any] | None,
                    path: str = "generator.choose") -> tuple[ChooseSpec | None, list[str]]:
    """(the spec, problems naming their field). ``build_config`` is the family's config builder
    (None when the family is unknown: its name is reported elsewhere); each candidate's merged
    config must build, so an option the family does not know is named as
    ``generator.choose.candidates[1].stepz``."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        return None, [f"{path}: must be a mapping with candidates and by, got {raw!r}"]
    problems += [f"{path}.{k}: unknown key; known: {', '.join(CHOOSE_KEYS)}" for k in raw if k not in CHOOSE_KEYS]
    candidates, by = raw.get("candidates"), raw.get("by")
    if not isinstance(candidates, list) or len(candidates) < 2:
        problems.append(f"{path}.candidates: give a list of at least 2 config overrides (one per candidate), "
                        f"got {candidates!r}")
        candidates = []
    if not isinstance(by, list) or not by:
        problems.append(f"{path}.by: give a non-empty list of criteria ({', '.join(CHOICE_CRITERIA.names())})")
        by = []
    for i, name in enumerate(by):
        if name not in CHOICE_CRITERIA:
            problems.append(f"{path}.by[{i}]: unknown criterion {name!r}; known: {', '.join(CHOICE_CRITERIA.names())}")
    if len(set(map(str, by))) != len(by):
        problems.append(f"{path}.by: a criterion is listed twice")
    seen: list[dict] = []
    for i, over in enumerate(candidates):
        where = f"{path}.candidates[{i}]"
        if not isinstance(over, dict) or not over:
            problems.append(f"{where}: must be a non-empty mapping of config overrides, got {over!r}")
            continue
        if "seed" in over:
            problems.append(f"{where}.seed: set the study's seed instead; each generator derives its own")
            continue
        merged = {**base_config, **over}
        if merged in seen:
            problems.append(f"{where}: the same configuration as an earlier candidate")
        seen.append(merged)
        if build_config is not None:
            try:
                build_config(dict(merged))
            except StudyError as err:
                problems += [f"{where}.{p}" if ": " in p and " " not in p.split(": ")[0] else f"{where}: {p}"
                             for p in err.problems]
            except (TypeError, ValueError) as err:
                problems.append(f"{where}: {err}")
    if problems:
        return None, problems
    return ChooseSpec(candidates=tuple(dict(c) for c in candidates), by=tuple(by)), []


def rank_candidates(qualities: list[dict], by: list[str] | tuple) -> dict:
    """The choice among candidates with these quality.json dicts: per criterion each
    candidate's score and rank (1 = best; ties share their mean rank; a missing figure ranks
    last), the mean rank over ``by``, and ``chosen``: the index of the lowest mean rank (ties:
    the one listed first)."""
    n = len(qualities)
    scores, ranks = {}, {}
    for name in by:
        crit = CHOICE_CRITERIA.get(name)
        values = np.array([crit.score(q) for q in qualities], dtype=float)
        oriented = values if crit.lower_is_better else -values
        oriented = np.where(np.isfinite(oriented), oriented, np.inf)  # missing: last
        scores[name] = [v if math.isfinite(v) else None for v in values.tolist()]
        ranks[name] = scipy.stats.rankdata(oriented, method="average").tolist()
    mean_rank = [float(np.mean([ranks[name][i] for name in by])) for i in range(n)]
    chosen = int(np.argmin(mean_rank))  # argmin takes the first of equal minima
    return {"by": list(by), "scores": scores, "ranks": ranks, "mean_rank": mean_rank, "chosen": chosen,
            "criteria": {name: {"figure": CHOICE_CRITERIA.get(name).figure,
                                "lower_is_better": CHOICE_CRITERIA.get(name).lower_is_better}
                         for name in by}}
