"""The tuning stage: ``synthmix tune STUDY`` (and ``synthmix run``, first, when a study has a
``tune:`` section, see ``synthmix.search_spaces.tune_section``). An Optuna search on Ray Tune
(``ray.tune.search.optuna.OptunaSearch``); each trial is one cell of the study with the trial's
parameters set, run by the grid's own cell machinery (``cells.execute_cell``): generators trained
once per key on Ray Train workers and shared with the grid, a trial holding no resources while it
waits for one, trials as concurrent as the cluster allows.

Honest by construction (rule 4):

- a trial trains on the ``tune.on`` resample's training subjects and is scored on its validation
  subjects (``score: validation`` in its cell config: the test subjects are not even named in
  it, and never loaded), or by its generator's quality figures, computed on training data;
- every trial uses the same cell seed (common random numbers), so trials differ by their
  parameters only, not by initialisation or batch order;
- the winner is frozen into the grid (``frozen_winner``): the grid's study is the study with the
  winning parameters set, validated again, and its fingerprint holds them, so the grid's cell
  ids and ``plan.json`` (its ``tune`` block) state what every cell ran with.

Persistent and resumable, under ``<store>/tune/``:

- ``trials/NNNNN.json``: one record per ended trial (parameters, state, score, every validation
  metric, error), written atomically by the trial itself. Records are what is done;
- ``optuna.journal``: Optuna's own storage (``JournalFileBackend``). With a remote store it lives
  on the driver's disk and is uploaded after every ask and every tell, so that the store's copy
  names every trial that may have started;
- ``trials.parquet`` (every record, rewritten as trials end) and ``best.json`` (the winner, once
  ``trials`` trials have completed).

A resumed stage reopens the journal, settles the trials a killed driver left running (complete
when their record says so, else failed as interrupted, their parameters queued to run first)
and runs only the missing trials. The TPE and random samplers' seed derives from the study's and
the number of trials asked so far, so a resumed search does not repeat its first suggestions;
the grid sampler keeps its seed, which orders the grid.
"""

from __future__ import annotations

import copy
import json
import re
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter

from synthmix.errors import SynthmixError, headline
from synthmix.orchestrator.store import StudyStore, atomic_write_bytes, atomic_write_json, local_cache_root
from synthmix.orchestrator.tune_records import TUNE_DIR, read_records, tune_dir, write_record
from synthmix.search_spaces.schema import Study
from synthmix.search_spaces.tune_section import GENERATOR_FIGURES, TuneSection, apply_parameters

JOURNAL_FILE = "optuna.journal"
OPTUNA_STUDY = "synthmix-tune"
#: The config key carrying a trial's Optuna number (returned by the define-by-run space).
NUMBER_KEY = "synthmix_trial"


# --- the frozen winner -----------------------------------------------------------------------------


def frozen_winner(study: Study, store: StudyStore) -> Study:
    """The study the grid runs: with its search's winner set once ``tune/best.json`` exists,
    else ``study`` itself (the search is unfinished)."""
    best_file = tune_dir(store) / "best.json"
    if study.tune is None or study.tuned is not None or not best_file.exists():
        return study
    best = json.loads(best_file.read_text())
    if best["study_fingerprint"] != study.fingerprint():
        raise SynthmixError(f"{best_file}: written for another version of study {study.name!r} "
                            f"(fingerprint {best['study_fingerprint']}, the study's is {study.fingerprint()})")
    tuned = {"parameters": best["parameters"], "trial": best["trial"], "value": best["value"]}
    return apply_parameters(_raw(study), best["parameters"], source=study.source,
                            base_dir=Path(study.source).parent, tuned=tuned)


def _raw(study: Study) -> dict:
    """The study's YAML mapping, its manifest made absolute (valid on every node)."""
    raw = yaml.safe_load(Path(study.source).read_text())
    if study.dataset.manifest:
        raw["dataset"]["manifest"] = study.dataset.manifest
    return raw


# --- records and results ---------------------------------------------------------------------------


def write_table(store: StudyStore, tune: TuneSection) -> list[dict]:
    """``tune/trials.parquet`` from the records: one row per ended trial; returns the records."""
    import io

    import pandas as pd

    records = list(read_records(store).values())
    rows = [{"trial": r["number"], "state": r["state"], tune.metric: r.get("value"),
             **{path: r["parameters"].get(path) for path in tune.space},
             "time_s": r.get("time_s"), "generator_key": r.get("generator_key") or "",
             "error": headline(r.get("error") or ""),
             "metrics": json.dumps(r.get("metrics") or {}, sort_keys=True)} for r in records]
    columns = ["trial", "state", tune.metric, *tune.space, "time_s", "generator_key", "error", "metrics"]
    buffer = io.BytesIO()
    pd.DataFrame(rows, columns=columns).to_parquet(buffer, index=False)
    atomic_write_bytes(tune_dir(store) / "trials.parquet", buffer.getvalue())
    return records


def _best(records: list[dict], study: Study) -> dict:
    tune = study.tune
    done = [r for r in records if r["state"] == "complete"]
    sign = 1 if tune.mode == "max" else -1
    best = min(done, key=lambda r: (-sign * r["value"], r["number"]))  # ties: the earlier trial
    return {"trial": best["number"], "parameters": {p: best["parameters"][p] for p in tune.space},
            "value": best["value"],
            "metric": tune.metric, "mode": tune.mode, "completed": len(done),
            "failed": sum(r["state"] == "failed" for r in records),
            "study_fingerprint": study.fingerprint(), "distributions": _distributions_json(tune)}


def _distributions_json(tune: TuneSection) -> dict:
    from optuna.distributions import distribution_to_json

    return {path: json.loads(distribution_to_json(d)) for path, d in tune.distributions().items()}


# --- the driver --------------------------------------------------------------------------------------


def run_tuning(study: Study, store: StudyStore, plan: Any, *, address: str | None = None,
               quiet: bool = False) -> dict:
    """Run (or finish) the study's search; write ``tune/best.json`` and return it. Raises
    when fewer than ``tune.trials`` trials completed (rerun to run the missing ones)."""
    tune = study.tune
    say = (lambda *a: None) if quiet else print
    completed = sum(r["state"] == "complete" for r in read_records(store).values())
    remaining = tune.trials - completed
    on = ", ".join(f"{k}={v}" for k, v in tune.on.items())
    say(f"tuning {study.name}: {tune.trials} trial(s), {completed} already done; {tune.mode}imise "
        f"{tune.metric} on {'the generator' if tune.scores_generator else 'the validation subjects'} of {on}")
    if remaining > 0:
        _search(study, store, plan, remaining, address=address, say=say, quiet=quiet)
    records = write_table(store, tune)
    done = [r for r in records if r["state"] == "complete"]
    if len(done) < tune.trials:
        failed = [r for r in records if r["state"] == "failed"]
        first = f"; first error (trial {failed[0]['number']}): {headline(failed[0]['error'])}" if failed else ""
        raise SynthmixError(f"tuning {study.name}: {len(done)} of {tune.trials} trials completed{first}. "
                            f"Rerun 'synthmix tune' (or 'synthmix run') to run the missing ones; "
                            f"see {tune_dir(store) / 'trials.parquet'}")
    best = _best(records, study)
    atomic_write_json(tune_dir(store) / "best.json", best)
    chosen = ", ".join(f"{k}={v}" for k, v in best["parameters"].items())
    say(f"tuning {study.name}: best trial {best['trial']}, {tune.metric}={best['value']:.4f}: {chosen}")
    return best


def _search(study: Study, store: StudyStore, plan: Any, remaining: int, *, address: str | None,
            say, quiet: bool) -> None:
    from ray import tune as ray_tune
    from ray.tune.search.optuna import OptunaSearch

    from synthmix.orchestrator.capacity import ClusterLimit
    from synthmix.orchestrator.progress import ProgressCallback
    from synthmix.orchestrator.study_run import TRIAL_RESOURCES, concurrency, ray_session

    t = study.tune
    journal = _Journal(store)
    asked = _settle(journal.storage, t, read_records(store))
    journal.upload()
    context = _context(study, store, plan)
    with ray_session(study, address) as joined:
        import ray

        if study.uses_synthetic(t.on["synthetic"]):
            from synthmix.orchestrator.generators import start_coordinator

            coordinator = start_coordinator(store.name)  # noqa: F841 (held for the run)
        limit = ClusterLimit(study.resources, fixed=None if joined else concurrency(study, ray.cluster_resources()))
        say(f"running {remaining} trial(s), at most {limit.limit()} at a time")
        searcher = OptunaSearch(space=_Space(t.space), metric=t.metric, mode=t.mode, sampler=_sampler(t, asked),
                                study_name=OPTUNA_STUDY, storage=journal.storage)
        tuner = ray_tune.Tuner(
            ray_tune.with_resources(ray_tune.with_parameters(tune_trial, context=context),
                                    ray_tune.PlacementGroupFactory(TRIAL_RESOURCES)),
            tune_config=ray_tune.TuneConfig(search_alg=_Limiter(searcher, limit, journal.upload, remaining),
                                            num_samples=remaining),
            run_config=ray_tune.RunConfig(
                name=f"tuning-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=store.ray_storage("tune"),
                verbose=0, callbacks=[ProgressCallback(total=remaining, quiet=quiet, noun="trials"),
                                      _TableCallback(store, t)],
                failure_config=ray_tune.FailureConfig(max_failures=0)))
        tuner.fit()
    journal.upload()


def _context(study: Study, store: StudyStore, plan: Any) -> dict:
    """What every trial needs to build its cell: the study (raw, to set parameters in), the
    splits and dataset of the plan, the search's cell and metric."""
    t = study.tune
    return {"root": str(store.root), "raw": _raw(study), "source": study.source,
            "base_dir": str(Path(study.source).parent), "splits": plan.splits, "manifest": str(plan.manifest),
            "dataset_fingerprint": plan.dataset_fingerprint, "on": t.on, "space": list(t.space),
            "metric": t.metric, "scores_generator": t.scores_generator}


def _sampler(tune: TuneSection, asked: int):
    import optuna

    from synthmix.search_spaces.expand import derive_seed

    if tune.sampler == "grid":  # its seed orders the grid: it must stay the same on resuming
        return optuna.samplers.GridSampler(tune.grid_space(), seed=tune.seed)
    seed = derive_seed(tune.seed, "tune", asked)  # a resumed search continues, not repeats
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class _Space:
    """Optuna define-by-run space: suggests every dimension and hands the trial its Optuna
    number (a class, not a closure: Tune pickles its searcher into its experiment folder)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> dict:
        for path, spec in self.space.items():
            spec.suggest(trial, path)
        return {NUMBER_KEY: trial.number}


class _Journal:
    """Optuna's journal of the search: in the store when it is local; else on this (the
    driver's) disk, copied from the store first and back after every change."""

    def __init__(self, store: StudyStore):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.store, self.stored = store, tune_dir(store) / JOURNAL_FILE
        if store.remote:
            self.local = local_cache_root() / store.name / TUNE_DIR / JOURNAL_FILE
            self.local.parent.mkdir(parents=True, exist_ok=True)
            if self.stored.exists():
                self.stored.download(self.local)
            else:
                self.local.unlink(missing_ok=True)  # a copy the store no longer has
        else:
            self.local = self.stored
            self.local.parent.mkdir(parents=True, exist_ok=True)
        self.storage = JournalStorage(JournalFileBackend(str(self.local)))

    def upload(self) -> None:
        if self.store.remote and self.local.exists():
            atomic_write_bytes(self.stored, self.local.read_bytes())


def _settle(storage, tune: TuneSection, records: dict[int, dict]) -> int:
    """Close the trials a killed driver left running: complete with their record's score, else
    failed (interrupted, not counted) and their parameters queued again, so the resumed search
    runs them first (the grid sampler would otherwise count their points as visited). Returns
    how many trials the journal holds."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=OPTUNA_STUDY, load_if_exists=True,
                                direction="maximize" if tune.mode == "max" else "minimize")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = records.get(trial.number)
        if record and record["state"] == "complete":
            study.tell(trial.number, record["value"])
            continue
        storage.set_trial_user_attr(trial._trial_id, "synthmix", "failed" if record else "interrupted")
        study.tell(trial.number, state=TrialState.FAIL)
        if record is None:
            study.enqueue_trial(trial.params, user_attrs={"synthmix": f"rerun of interrupted trial {trial.number}"})
    return len(study.trials)


class _Limiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter with a limit that follows the cluster (``ClusterLimit``, as the
    grid's queue does), and which syncs the journal after every ask and tell."""

    def __init__(self, searcher, limit, sync, wanted: int):
        super().__init__(searcher, max_concurrent=max(1, limit.limit()))
        self._limit, self._sync = limit, sync
        limit.demand(wanted)  # an autoscaling cluster adds nodes for the trials

    def suggest(self, trial_id: str):
        allowed = self._limit.limit()
        if allowed == 0:
            return None
        self.max_concurrent = allowed
        config = super().suggest(trial_id)
        if config:
            self._sync()
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        self._sync()

    def get_state(self) -> dict:
        keep = {k: v for k, v in self.__dict__.items() if k not in ("searcher", "_limit", "_sync")}
        return copy.deepcopy(keep)


class _TableCallback(Callback):
    """Rewrites ``tune/trials.parquet`` whenever a trial ends."""

    def __init__(self, store: StudyStore, tune: TuneSection):
        self.store, self.tune = store, tune

    def on_trial_complete(self, iteration, trials, trial, **info):
        write_table(self.store, self.tune)

    def on_trial_error(self, iteration, trials, trial, **info):
        write_table(self.store, self.tune)


# --- the trial ---------------------------------------------------------------------------------------


def tune_trial(config: dict, context: dict) -> None:
    """Ray Tune function trainable of one tuning trial (``context`` from ``_context``)."""
    from ray import tune as ray_tune

    from synthmix.orchestrator.cells import execute_cell
    from synthmix.orchestrator.spec import CellSpec

    number = int(config[NUMBER_KEY])
    parameters = {path: config[path] for path in context["space"]}
    store = StudyStore.at(context["root"])
    start = time.monotonic()
    record = {"number": number, "parameters": parameters, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        cell_config = trial_cell_config(context, parameters, number)
        row = execute_cell(store, CellSpec.from_dict(cell_config["spec"]), cell_config)
        metrics = trial_metrics(row, generator=context["scores_generator"])
        value = metrics[context["metric"]]
        record.update(state="complete", value=value, metrics=metrics, generator_key=row.get("generator_key"),
                      cell=cell_config["trial_of"], best_step=row.get("best_step"))
    except Exception as err:
        record.update(state="failed", value=None, error=f"{type(err).__name__}: {err}",
                      traceback="".join(traceback.format_exception(err)), time_s=time.monotonic() - start)
        write_record(store, record)
        raise
    record["time_s"] = time.monotonic() - start
    write_record(store, record)  # before the report: a record means the trial is done
    ray_tune.report({context["metric"]: value, NUMBER_KEY: number})


def trial_cell_config(context: dict, parameters: dict, number: int) -> dict:
    """The Tune config of trial ``number``: the ``tune.on`` cell's spec in the study with these
    parameters, renamed ``tune-NNNNN``, without test subjects, scored on validation (or by its
    generator)."""
    from synthmix.orchestrator.spec import build_cell_specs
    from synthmix.search_spaces.expand import expand_cells

    study = apply_parameters(context["raw"], parameters, source=context["source"], base_dir=context["base_dir"])
    plan = expand_cells(study, context["splits"], dataset_fingerprint=context["dataset_fingerprint"],
                        manifest=Path(context["manifest"]))
    on = context["on"]
    cell = next(c for c in plan.cells if c.fold == on["fold"] and c.repeat == on["repeat"]
                and all(c.factors[k] == on[k] for k in c.factors))
    (spec,) = build_cell_specs(study, context["root"], plan, [cell])
    spec = replace(spec, cell=replace(cell, cell_id=f"tune-{number:05d}"),
                   split=replace(spec.split, test=()))  # rule 4: the trial does not even name them
    return {"spec": spec.to_dict(), "score": "generator" if context["scores_generator"] else "validation",
            "trial_of": cell.cell_id}


def trial_metrics(row: dict, *, generator: bool) -> dict:
    """A trial's figures from its (unwritten) row: the generator's quality figures, and for a
    segmentation trial every metric on the validation subjects as ``val_<metric>``."""
    from synthmix.trainers.metrics import METRIC_NAMES

    out = {name: row[f"gen_{key}"] for name, (key, _) in GENERATOR_FIGURES.items() if f"gen_{key}" in row}
    if not generator:
        pattern = re.compile(rf"({'|'.join(METRIC_NAMES)})_(mean|\d+)")
        out.update({f"val_{k}": float(v) for k, v in row.items() if pattern.fullmatch(k)})
    return out


# --- the command -------------------------------------------------------------------------------------


def tune_study(study_ref: str | Path | None, *, storage: str | Path | None = None, name: str | None = None,
               address: str | None = None, quiet: bool = False) -> tuple[StudyStore, dict]:
    """``synthmix tune``: run (or finish) the study's search; the plan is then rewritten with
    the winner frozen in. Returns the store and ``best.json``."""
    from synthmix.orchestrator.study_run import prepare_study

    study, store, plan = prepare_study(study_ref, storage=storage, name=name)
    if study.tune is None:
        raise SynthmixError(f"study {study.name!r} has no tune: section; nothing to tune")
    if study.tuned is None:
        run_tuning(study, store, plan, address=address, quiet=quiet)
        prepare_study(study_ref, storage=storage, name=name)  # plan.json with the frozen winner
    return store, json.loads((tune_dir(store) / "best.json").read_text())
