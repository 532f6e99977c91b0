"""Model selection at run time (``generator.choose``, ``search_spaces.choose_section``).

Each candidate of a subset is an ordinary generator key, trained once by a trial of its own
(``candidate_configs``: handed out by the cell queue like a generator training, it trains and
writes no row). The subset's cells wait in the queue, holding no training slot, until every
candidate is trained (``QueuedCell.after``); the first of them makes the choice from the
candidates' quality.json (figures from training and validation slices only: nothing here loads
data at all), records it in ``choices/<key>.json`` and draws the chosen candidate's pool; the
others wait for that pool. A recorded choice is read, never made again, so a resumed study
reuses it. Two trials that make the same choice at once write the same bytes (the ranking is
deterministic), atomically.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from synthmix.orchestrator.spec import CellSpec
from synthmix.orchestrator.store import StudyStore, atomic_write_json
from synthmix.search_spaces.expand import Candidate, ChoiceJob, Plan

CHOICE_PREFIX = "choice-"  # the queue's artifact key of a choice made and its chosen pool drawn


def recorded_choice(store: StudyStore, key: str) -> dict | None:
    path = store.choice_file(key)
    return json.loads(path.read_text()) if path.exists() else None


def make_choice(store: StudyStore, job: ChoiceJob) -> dict:
    """Rank the trained candidates and record the choice (every candidate's overrides, key,
    pool key, scores and ranks; the chosen index and key)."""
    from synthmix.search_spaces.choose_section import rank_candidates

    qualities = [store.generator_quality(c.generator.key) for c in job.candidates]
    ranked = rank_candidates(qualities, job.by)
    candidates = [{"index": i, "overrides": dict(c.overrides), "generator_key": c.generator.key,
                   "pool_key": c.pool.key, "config": dict(c.generator.config),
                   "scores": {name: ranked["scores"][name][i] for name in job.by},
                   "ranks": {name: ranked["ranks"][name][i] for name in job.by},
                   "mean_rank": ranked["mean_rank"][i]}
                  for i, c in enumerate(job.candidates)]
    chosen = job.candidates[ranked["chosen"]]
    record = {"key": job.key, "fold": job.fold, "repeat": job.repeat, "amount": job.amount, "by": list(job.by),
              "criteria": ranked["criteria"], "subjects": list(chosen.generator.subjects),
              "candidates": candidates, "chosen": ranked["chosen"], "chosen_key": chosen.generator.key,
              "chosen_pool_key": chosen.pool.key}
    atomic_write_json(store.choice_file(job.key), record)
    return record


def chosen_candidate(job: ChoiceJob, record: dict) -> Candidate:
    cand = job.candidates[record["chosen"]]
    if cand.generator.key != record["chosen_key"]:  # a record of other candidates: never used silently
        raise ValueError(f"choices/{job.key}.json names {record['chosen_key']}, not candidate "
                         f"{record['chosen']} of the plan ({cand.generator.key})")
    return cand


def candidate_spec(spec: CellSpec, cand: Candidate) -> CellSpec:
    """The spec of a trial that trains one candidate: its own id (the lease owner and error
    file must not be a cell's), the candidate's generator, no pool; the choice is kept for
    ``choose_after_training``."""
    cell = dataclasses.replace(spec.cell, cell_id=f"candidate-{cand.generator.key}", generator_key=cand.generator.key,
                               pool_key=None)
    return dataclasses.replace(spec, cell=cell, generator=cand.generator, pool=None)


def choose_after_training(spec: CellSpec, store: StudyStore, draw: Callable[[CellSpec], None]) -> None:
    """Rank 0 of a candidate's training, once its generator is published: if it was the last
    candidate of its subset, make the choice and ``draw`` (the chosen candidate's pool, from
    the spec given) here, saving the Ray Train start-up of a pool run. The pool's lease is
    taken without waiting: a pool some cell is already drawing is left to it."""
    from synthmix.orchestrator.generators import lease_if_free

    job = spec.choice
    if job is None or not all(store.artifact_complete("generators", c.generator.key) for c in job.candidates):
        return
    record = recorded_choice(store, job.key) or make_choice(store, job)
    chosen = chosen_spec(spec, record)
    if chosen.pool.source != "pool" or store.artifact_complete("pools", chosen.pool.key):
        return
    with lease_if_free(f"pools-{chosen.pool.key}", study_name=store.name, owner=spec.cell_id) as held:
        if held and not store.artifact_complete("pools", chosen.pool.key):
            draw(chosen)


def chosen_spec(spec: CellSpec, record: dict) -> CellSpec:
    """The cell's spec with the chosen candidate's generator and pool (its choice key kept)."""
    cand = chosen_candidate(spec.choice, record)
    cell = dataclasses.replace(spec.cell, generator_key=cand.generator.key, pool_key=cand.pool.key)
    return dataclasses.replace(spec, cell=cell, generator=cand.generator, pool=cand.pool, choice=None)


def candidate_configs(store: StudyStore, specs: list[CellSpec]) -> list[dict]:
    """One trial config per candidate still to train, for the choices of the pending ``specs``
    that are not recorded yet (in plan order)."""
    out, seen = [], set()
    for spec in specs:
        if spec.choice is None or spec.choice.key in seen:
            continue
        seen.add(spec.choice.key)
        if recorded_choice(store, spec.choice.key) is not None:
            continue
        for cand in spec.choice.candidates:
            if not store.artifact_complete("generators", cand.generator.key):
                out.append({"spec": candidate_spec(spec, cand).to_dict(), "candidate": True})
    return out


def choice_complete(store: StudyStore, plan: Plan, key: str) -> bool:
    """The queue's question for ``choice-<key>``: made, and its chosen pool drawn (on the fly:
    the chosen generator is all a cell needs)."""
    record = recorded_choice(store, key)
    if record is None:
        return False
    cand = chosen_candidate(plan.choices[key], record)
    if cand.pool.source == "pool":
        return store.artifact_complete("pools", cand.pool.key)
    return store.artifact_complete("generators", cand.generator.key)
