"""Reading results rows: a study (by name or folder), a folder of Parquet files, one Parquet or
CSV file, locally or from any ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``).

Files written by different synthmix versions may carry different metric columns. Parquet
readers given many files take the first file's schema and silently drop a column added later,
so each file is read on its own and the tables are concatenated with schema promotion: a
column missing from an older file becomes nulls there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synthmix.errors import SynthmixError

RESULTS_DIR = "results"
SUBJECTS_DIR = "results/subjects"  # results/subjects/<cell_id>.parquet: one row per test subject
UNLABELLED_DIR = "results/unlabelled"  # evaluate: {unlabelled: true}: one row per unlabelled subject
ERRORS_DIR = "errors"  # errors/<cell_id>.json: the last error of a cell that failed
PLAN_FILE = "plan.json"
DEFAULT_STORAGE = "./runs"
#: Columns a results row has besides its factors and metrics (not factors, not metrics).
DESIGN_COLUMNS = ("study", "cell_id", "fold", "repeat", "schema_version")
COUNT_COLUMNS = ("n_train_subjects", "n_pool_subjects", "n_test_subjects", "n_train_slices")


class ResultsError(SynthmixError):
    """Results that cannot be read or analysed as asked (a missing file, an unknown factor)."""


@dataclass
class ResultSet:
    """Results rows and, for a synthmix study, its plan.

    Attributes:
        rows: one row per finished cell (factor, fold/repeat, metric, count columns).
        plan: one row per planned cell (``cell_id``, factor columns, ``fold``, ``repeat``), or
            None when the source has no plan.json (a file that did not come from synthmix).
        factors: the study's factor names from plan.json; empty when unknown.
        source: what was read, for messages.
        files: the files the rows came from.
        baseline: the plan's baseline as ``"factor=level"``, or None.
        failed: ids of cells with an error file (their trial failed).
        notes: what reading left out (rows of cells that are not in plan.json), one line each.
    """

    rows: pd.DataFrame
    plan: pd.DataFrame | None = None
    factors: list[str] = field(default_factory=list)
    source: str = ""
    files: list[str] = field(default_factory=list)
    baseline: str | None = None
    failed: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def default_storage() -> str:
    return os.environ.get("SYNTHMIX_STORAGE") or DEFAULT_STORAGE


def read_results(source: str | os.PathLike, *, storage: str | None = None) -> ResultSet:
    """Read results rows from ``source``.

    ``source`` is, in the order tried: a URI with a scheme (any pyarrow filesystem); an existing
    local file (.parquet/.pq or .csv) or folder (a study folder with ``results/`` and
    ``plan.json``, or a folder of Parquet/CSV files); else a study name under ``storage``
    (default ``$SYNTHMIX_STORAGE`` or ``./runs``, itself a path or URI).

    With a plan.json, only rows whose ``cell_id`` the plan holds are kept (rule 7: a study's
    tables hold only the rows of its plan); the others are named in ``notes``.
    """
    return _read(source, storage, RESULTS_DIR, fallback=True)


def read_subject_results(source: str | os.PathLike, *, storage: str | None = None) -> ResultSet:
    """The per-subject rows of a study (``results/subjects/*.parquet``, one row per test subject
    of each finished cell), kept to the cells of its plan like ``read_results``; or of one file."""
    return _read(source, storage, SUBJECTS_DIR, fallback=False)


def read_unlabelled_results(source: str | os.PathLike, *, storage: str | None = None) -> ResultSet:
    """The unlabelled-subject rows of a study (``results/unlabelled/*.parquet``: each cell's
    structure volumes of the unlabelled subjects, written with ``evaluate: {unlabelled: true}``),
    kept to the cells of its plan; or of one file."""
    return _read(source, storage, UNLABELLED_DIR, fallback=False, what="unlabelled-subject")


def _read(source: str | os.PathLike, storage: str | None, folder: str, *, fallback: bool,
          what: str = "per-subject") -> ResultSet:
    text = os.fspath(source)
    fs, path = _resolve(text, storage)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return ResultSet(rows=_read_file(fs, path), source=text, files=[path])
    files = _data_files(fs, _join(path, folder)) or (_data_files(fs, path) if fallback else [])
    plan, factors, baseline = _read_plan(fs, _join(path, PLAN_FILE))
    if not files and not fallback:
        raise ResultsError(f"{text}: no {what} results ({folder}/*.parquet) found" + (
            " (rows written before per-subject results existed have none)" if what == "per-subject" else
            " (run the study with evaluate: {unlabelled: true})"))
    if not files and plan is None:
        raise ResultsError(f"{text}: no Parquet or CSV results files and no {PLAN_FILE} found")
    tables = [_read_table(fs, f) for f in files]
    rows = _concat(tables).to_pandas() if tables else pd.DataFrame()
    rows, notes = _keep_planned(rows, [posixpath.basename(f) for f in files], tables, plan)
    return ResultSet(rows=rows, plan=plan, factors=factors, source=text, files=files,
                     baseline=baseline, failed=_failed_cells(fs, _join(path, ERRORS_DIR)), notes=notes)


def _keep_planned(rows: pd.DataFrame, names: list[str], tables: list[pa.Table],
                  plan: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """Rows of planned cells only; a note names the files of the others (a dataset edited in
    place gives new cell ids, and the old rows must not join the new ones)."""
    if plan is None or rows.empty or "cell_id" not in plan.columns:
        return rows, []
    if "cell_id" not in rows.columns:
        return rows.iloc[0:0], [f"{len(rows)} row(s) without a cell_id left out: a study's tables hold "
                                f"only the cells of its {PLAN_FILE}"]
    planned = rows["cell_id"].astype(str).isin(set(plan["cell_id"].astype(str)))
    if planned.all():
        return rows, []
    origin = np.repeat(names, [t.num_rows for t in tables])
    foreign = sorted(set(origin[~planned.to_numpy()]))
    shown = ", ".join(foreign[:4]) + (f", and {len(foreign) - 4} more" if len(foreign) > 4 else "")
    note = (f"{int((~planned).sum())} row(s) of cells not in {PLAN_FILE} left out (from another plan, "
            f"e.g. before the data changed): {shown}")
    return rows.loc[planned].reset_index(drop=True), [note]


def resolve_source(source: str | os.PathLike, storage: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path that ``read_results`` reads ``source`` from."""
    return _resolve(os.fspath(source), storage)


def _resolve(text: str, storage: str | None) -> tuple[pafs.FileSystem, str]:
    if "://" in text:
        return _from_uri(text)
    local = pafs.LocalFileSystem()
    absolute = os.path.abspath(text)
    if local.get_file_info(absolute).type != pafs.FileType.NotFound:
        return local, absolute
    root = storage or default_storage()
    if "://" in root:
        fs, base = _from_uri(root)
    else:
        fs, base = local, os.path.abspath(root)
    candidate = _join(base, text)
    if fs.get_file_info(candidate).type == pafs.FileType.NotFound:
        raise ResultsError(f"no results at {text!r}: not a file or folder, and no study of that "
                           f"name under the storage root {root!r} (set --storage or SYNTHMIX_STORAGE)")
    return fs, candidate


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise ResultsError(f"cannot open {uri!r}: {err}") from None


def _join(base: str, name: str) -> str:
    # pyarrow filesystems (the local one included) take "/"-separated paths.
    return posixpath.join(base, name)


def _data_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and _kind(i.path))


def _kind(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    return None


def _read_file(fs: pafs.FileSystem, path: str) -> pd.DataFrame:
    return _read_table(fs, path).to_pandas()


def _read_table(fs: pafs.FileSystem, path: str) -> pa.Table:
    kind = _kind(path)
    try:
        if kind == "parquet":
            return pq.read_table(path, filesystem=fs)
        if kind == "csv":
            with fs.open_input_stream(path) as stream:
                return pacsv.read_csv(stream)
    except (pa.ArrowInvalid, OSError) as err:
        raise ResultsError(f"{path}: cannot read as {kind}: {err}") from None
    raise ResultsError(f"{path}: not a results file (expected .parquet, .pq or .csv)")


def _concat(tables: list[pa.Table]) -> pa.Table:
    # "permissive" also widens int64 to double when one version wrote 1 and another 1.0.
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ResultsError(f"results files have incompatible columns: {err}") from None


def _failed_cells(fs: pafs.FileSystem, folder: str) -> set[str]:
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return set()
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    return {posixpath.basename(i.path)[:-5] for i in infos if i.path.endswith(".json")}


def _read_plan(fs: pafs.FileSystem, path: str) -> tuple[pd.DataFrame | None, list[str], str | None]:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None, [], None
    with fs.open_input_stream(path) as stream:
        try:
            plan = json.loads(stream.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ResultsError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("cells"), list):
        raise ResultsError(f"{path}: expected an object with a 'cells' list")
    factors = [str(f) for f in plan.get("factors", [])]
    return pd.DataFrame(plan["cells"]), factors, baseline_text(plan.get("baseline"))


def baseline_text(baseline: object) -> str | None:
    """``{"synthetic": 0}`` (the study's form) or ``"synthetic=0"`` -> ``"synthetic=0"``."""
    if baseline is None or isinstance(baseline, str):
        return baseline
    if isinstance(baseline, dict) and len(baseline) == 1:
        (factor, level), = baseline.items()
        return f"{factor}={level}"
    raise ResultsError(f"baseline {baseline!r}: expected one factor and level, e.g. {{synthetic: 0}}")
