"""A study's tuning stage as a table and charts: ``tune/trials.parquet`` and ``tune/best.json``
(written by ``synthmix.orchestrator.tuning``) of a study folder, name or URI. No Ray.

The charts are Optuna's own matplotlib visualisation (optimisation history; parameter
importances by PED-ANOVA, the evaluator that needs no scikit-learn), drawn from an in-memory
Optuna study rebuilt from the table with the distributions ``best.json`` records: the table is
the record, so a report needs no journal and no database.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synthmix.results.store import ResultsError, resolve_source

TRIAL_COLUMNS = ("trial", "state", "time_s", "generator_key", "error", "metrics")
TRIAL_FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class TuningResults:
    """trials: one row per ended trial (``trial``, ``state``, the metric, one column per
    parameter path, ``time_s``, ``generator_key``, ``error``, ``metrics`` as JSON); best: the
    contents of best.json, or None while the search is unfinished."""

    trials: pd.DataFrame
    best: dict | None
    source: str

    @property
    def metric(self) -> str:
        return self.best["metric"] if self.best else str(self.trials.columns[2])  # after trial, state

    @property
    def parameters(self) -> list[str]:
        return [c for c in self.trials.columns if c not in (*TRIAL_COLUMNS, self.metric)]

    def ranked(self) -> pd.DataFrame:
        """Completed trials best first (ties: the earlier trial), then the failed ones."""
        ascending = bool(self.best and self.best["mode"] == "min")
        done = self.trials[self.trials.state == "complete"].sort_values(
            [self.metric, "trial"], ascending=[ascending, True], kind="stable")
        return pd.concat([done, self.trials[self.trials.state != "complete"]], ignore_index=True)


def has_tuning(fs: pafs.FileSystem, folder: str) -> bool:
    return fs.get_file_info(f"{folder}/tune/trials.parquet").type == pafs.FileType.File


def read_tuning(source: str, *, storage: str | None = None) -> TuningResults:
    """The tuning stage of a study (name under ``storage``, folder or URI)."""
    fs, folder = resolve_source(source, storage)
    return load_tuning(fs, folder, str(source))


def load_tuning(fs: pafs.FileSystem, folder: str, source: str = "") -> TuningResults:
    """The tuning stage of the study at ``folder`` of ``fs``."""
    if not has_tuning(fs, folder):
        raise ResultsError(f"{source}: no tuning stage results (no tune/trials.parquet); "
                           "run 'synthmix tune STUDY' first")
    with fs.open_input_file(f"{folder}/tune/trials.parquet") as f:
        trials = pq.read_table(f).to_pandas()
    best = None
    if fs.get_file_info(f"{folder}/tune/best.json").type == pafs.FileType.File:
        with fs.open_input_stream(f"{folder}/tune/best.json") as stream:
            best = json.loads(stream.read())
    return TuningResults(trials=trials, best=best, source=source or folder)


def render_trials(results: TuningResults, fmt: str = "table", digits: int = 4) -> str:
    """The trials table, best first, and a line on the winner (or that the search is unfinished)."""
    table = results.ranked()[["trial", "state", results.metric, *results.parameters, "time_s", "error"]]
    if fmt == "csv":
        return table.to_csv(index=False).rstrip()
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    if fmt not in TRIAL_FORMATS:
        raise ResultsError(f"the trials table comes as {', '.join(TRIAL_FORMATS)}, not {fmt!r}")
    text = _markdown(table, digits) if fmt == "markdown" else \
        table.to_string(index=False, float_format=lambda v: f"{v:.{digits}g}", na_rep="")
    return f"{text}\n\n{_verdict(results)}"


def _markdown(table: pd.DataFrame, digits: int) -> str:
    """Written by hand: pandas' to_markdown needs tabulate."""
    def cell(v) -> str:
        return "" if v is None or (isinstance(v, float) and v != v) else \
            (f"{v:.{digits}g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)])


def _verdict(results: TuningResults) -> str:
    best = results.best
    if not best:
        return "tuning unfinished: no best.json yet (the grid waits for it)"
    order = [p for p in results.parameters if p in best["parameters"]]  # the table's (the space's) order
    chosen = ", ".join(f"{k}={best['parameters'][k]}" for k in order)
    return (f"best: trial {best['trial']}, {best['metric']}={best['value']:.4g} ({best['mode']}imised over "
            f"{best['completed']} completed trial(s), {best['failed']} failed); frozen into the grid: {chosen}")


def tuning_figures(results: TuningResults) -> dict[str, bytes | str]:
    """PNG bytes of the optimisation history and the parameter importances, by title; a chart
    that cannot be drawn (too few trials) gives the reason instead."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = _optuna_study(results)
    charts = {"optimisation history": lambda: ovm.plot_optimization_history(study, target_name=results.metric),
              "parameter importances": lambda: ovm.plot_param_importances(
                  study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target_name=results.metric)}
    out: dict[str, bytes | str] = {}
    for title, draw in charts.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw()
            buffer = io.BytesIO()
            axes.figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            out[title] = buffer.getvalue()
        except Exception as err:  # e.g. importances of a search with one completed trial
            out[title] = f"not drawn: {err}"
    return out


def _optuna_study(results: TuningResults):
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    if not results.best:
        raise ResultsError(f"{results.source}: the search is unfinished (no tune/best.json)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {p: json_to_distribution(json.dumps(d)) for p, d in results.best["distributions"].items()}
    study = optuna.create_study(direction="maximize" if results.best["mode"] == "max" else "minimize")
    rows = {int(r["trial"]): r for r in results.trials.to_dict("records")}
    for number in range(max(rows, default=-1) + 1):  # interrupted trials keep their numbers' place
        row = rows.get(number)
        if row is None or row["state"] != "complete":
            study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
            continue
        study.add_trial(optuna.trial.create_trial(
            value=float(row[results.metric]), distributions=distributions,
            params={p: _native(row[p]) for p in distributions}))
    return study


def _native(value):
    return value.item() if hasattr(value, "item") else value
