"""Results rows: one immutable Parquet file per finished cell (rule 7).

Schema version 1, one row per cell, columns:

- identity: ``study``, ``cell_id``, ``schema_version``, ``synthmix_version``
- design: one column per factor (``real_fraction`` or ``real_count``, ``synthetic``,
  ``architecture``, ``augmentation``, ...), ``fold``, ``repeat``, ``seed``, ``mixing_policy``,
  ``synthetic_source``
- data: ``train_subjects`` (JSON list), ``n_train_subjects`` (the cell's subset),
  ``n_pool_subjects`` (the labelled subjects of its resample that are neither test nor
  validation: what the subset is drawn from, and the corrected test's n_train),
  ``n_val_subjects``, ``n_test_subjects``, ``n_train_slices``, ``n_synthetic_available`` (pool
  samples the policy may draw; -1 for on-the-fly sampling, 0 without a generator),
  ``pool_drawn`` / ``pool_kept`` (the pool's samples before and after clean-up and filters),
  ``mixing_draw`` (fixed | fresh), ``real_draws`` and ``synthetic_draws`` (training items
  actually drawn from each, over all workers), ``n_augmented_slices`` (an offline
  augmentation's transformed copies of the real slices, with ``traditional``),
  ``n_classes`` (the classes the cell trained
  on, background included), ``class_names`` (JSON list, with factor ``classes``: the level's
  names; ``dice_<c>`` etc. are class c of that list)
- metrics on the test subjects (means over subjects): ``dice_mean``, ``dice_<c>``, ``hd95_mean``,
  ``hd95_<c>``, ``hd_mean``, ``hd_<c>``, ``iou_*``, ``precision_*``, ``recall_*``;
  ``best_step``, ``steps_done``
- generator: ``generator_key`` (empty without one; with blocks the first block's,
  ``generator_blocks`` listing all as JSON) and its quality figures ``gen_<name>``
  (``gen_swd``, ``gen_swd_untrained``, ``gen_nn_distance``, ...); with model selection
  (``generator.choose``) ``choice_key`` too, and ``generator_key`` is the chosen candidate's
- timings in seconds: ``time_generator_train``, ``time_generator_wait``,
  ``time_segmentation_train``, ``time_evaluation``, ``time_cell``
- hardware: ``hostname``, ``cpu_count``, ``gpu``, ``torch_version``, ``ray_version`` (nothing
  read from the environment, so no credential can end up in a row)

A reader must not assume a column exists in every file: metrics may be added in later
versions (the aggregator unifies schemas).

Per-subject rows: ``results/subjects/CELL_ID.parquet``, one row per test subject of the cell:
``study``, ``cell_id``, the factor columns, ``fold``, ``repeat``, ``subject_id``, the manifest's
metadata columns (age, lesion load, ...; prefixed ``meta_`` where a name is taken) and every
per-subject metric (``dice_mean``, ``dice_<c>``, ``hd95_<c>``, ...). Written before the cell's
row, so a finished cell always has them.

Unlabelled rows (``evaluate: {unlabelled: true}``): ``results/unlabelled/CELL_ID.parquet``, the
same identity, factor and metadata columns, one row per unlabelled subject the cell's final
model segmented: ``volume_<c>`` (mL of each predicted structure, c = 1 .. n_classes - 1) and,
for a subject whose labels the dataset holds (a phantom's ``truth``), ``dice_mean``,
``dice_<c>``, ``iou_*``, ... against them (NaN for the others). Written before the cell's row.
"""

from __future__ import annotations

import io
import json
import os
import platform
import pandas as pd

from synthmix import __version__
from synthmix.orchestrator.store import StoragePath, StudyStore, atomic_write_bytes

SCHEMA_VERSION = 1


def hardware() -> dict:
    import ray
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"hostname": platform.node(), "cpu_count": os.cpu_count() or 0, "gpu": gpu,
            "torch_version": torch.__version__, "ray_version": ray.__version__}


def build_row(*, study: str, cell: dict, factors: list[str], mixing: dict, data: dict,
              metrics: dict, generator: dict, timings: dict) -> dict:
    """Flatten one cell's outcome into a results row (see the module docstring)."""
    row = {"study": study, "cell_id": cell["cell_id"], "schema_version": SCHEMA_VERSION,
           "synthmix_version": __version__}
    row.update({f: cell[f] for f in factors})
    row.update(fold=cell["fold"], repeat=cell["repeat"], seed=cell["seed"],
               mixing_policy=mixing["policy"], synthetic_source=mixing["source"],
               mixing_draw=mixing.get("draw", "fixed"))
    row.update(train_subjects=json.dumps(list(data["train_subjects"])),
               n_train_subjects=len(data["train_subjects"]), n_pool_subjects=data.get("n_pool_subjects", 0),
               n_val_subjects=data["n_val_subjects"],
               n_test_subjects=data["n_test_subjects"], n_train_slices=data["n_train_slices"],
               n_synthetic_available=data["n_synthetic_available"],
               pool_drawn=data.get("pool_drawn", 0), pool_kept=data.get("pool_kept", 0),
               real_draws=int(data.get("real_draws", 0)), synthetic_draws=int(data.get("synthetic_draws", 0)))
    if data.get("n_augmented_slices"):  # an offline augmentation's copies of the real slices
        row["n_augmented_slices"] = int(data["n_augmented_slices"])
    if data.get("n_classes"):
        row["n_classes"] = int(data["n_classes"])
    if data.get("class_names"):  # factor classes: the level's class names, dice_<c> is class c
        row["class_names"] = json.dumps(list(data["class_names"]))
    row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    row["generator_key"] = cell.get("generator_key") or ""
    row["pool_key"] = cell.get("pool_key") or ""
    if cell.get("blocks"):  # generator.block_size: every block's generator key, in block order
        row["generator_blocks"] = json.dumps([g for g, _ in cell["blocks"]])
    if cell.get("choice_key"):  # model selection: the choice that gave generator_key (choices/KEY.json)
        row["choice_key"] = cell["choice_key"]
    row.update({f"gen_{k}": float(v) for k, v in generator.items() if isinstance(v, (int, float))})
    row.update({f"time_{k}": float(v) for k, v in timings.items()})
    row.update(hardware())
    return row


def write_row(store: StudyStore, row: dict) -> StoragePath:
    """Write the cell's row atomically (local: temp file + rename; object storage: one PUT of
    the whole object); mixed-type factor levels are stored as given."""
    buffer = io.BytesIO()
    pd.DataFrame([row]).to_parquet(buffer, index=False)
    path = store.row_file(row["cell_id"])
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --- per-subject rows ---------------------------------------------------------------------------

def subject_metadata(manifest: str | os.PathLike, subject_ids: list[str]) -> dict[str, dict]:
    """The manifest's metadata columns of ``subject_ids``: {subject_id: {column: value}}, as
    plain Python values (they travel back from a Ray Train worker)."""
    from synthmix.datasets.manifest import read_manifest

    table = read_manifest(manifest).metadata
    return {sid: {str(k): _plain(v) for k, v in table.loc[sid].items()} if sid in table.index else {}
            for sid in subject_ids}


def subject_records(row: dict, factors: list[str], per_subject: list[dict],
                    metadata: dict[str, dict]) -> list[dict]:
    """One record per test subject of the cell whose results row is ``row``: its identity and
    factor levels, the subject's metadata and its metrics (see the module docstring)."""
    base = {"study": row["study"], "cell_id": row["cell_id"], **{f: row[f] for f in factors},
            "fold": row["fold"], "repeat": row["repeat"]}
    records = []
    for entry in per_subject:
        sid = str(entry["subject"])
        metrics = {k: float(v) for k, v in entry.items() if k != "subject" and isinstance(v, (int, float))}
        taken = set(base) | set(metrics) | {"subject_id"}
        meta = {(f"meta_{k}" if k in taken else k): v for k, v in metadata.get(sid, {}).items()}
        records.append({**base, "subject_id": sid, **meta, **metrics})
    return records


def write_subject_rows(store: StudyStore, cell_id: str, records: list[dict]) -> StoragePath:
    """Write the cell's per-subject table atomically to ``results/subjects/CELL_ID.parquet``."""
    return _write_records(store.results_dir / "subjects" / f"{cell_id}.parquet", records)


def write_unlabelled_rows(store: StudyStore, cell_id: str, records: list[dict]) -> StoragePath:
    """Write the cell's unlabelled-subject table atomically to ``results/unlabelled/CELL_ID.parquet``."""
    return _write_records(store.results_dir / "unlabelled" / f"{cell_id}.parquet", records)


def _write_records(path: StoragePath, records: list[dict]) -> StoragePath:
    buffer = io.BytesIO()
    pd.DataFrame.from_records(records).to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _plain(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN: no value in the manifest
        return None
    return value
