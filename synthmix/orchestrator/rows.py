"""Results rows: one immutable Parquet file per finished cell (rule 7).

Schema version 1, one row per cell, columns:

- identity: ``study``, ``cell_id``, ``schema_version``, ``synthmix_version``
- design: one column per factor (``real_fraction`` or ``real_count``, ``synthetic``,
  ``architecture``, ``augmentation``, ...), ``fold``, ``repeat``, ``seed``, ``mixing_policy``,
  ``synthetic_source``
- data: ``train_subjects`` (JSON list), ``n_train_subjects``, ``n_val_subjects``,
  ``n_test_subjects``, ``n_train_slices``, ``n_synthetic_available`` (pool samples the policy may
  draw; -1 for on-the-fly sampling, 0 without a generator), ``n_pool_subjects`` (the labelled
  subjects the subset is drawn from), ``pool_drawn`` / ``pool_kept`` (the pool's samples before
  and after clean-up and filters)
- metrics on the test subjects (means over subjects): ``dice_mean``, ``dice_<c>``, ``hd95_mean``,
  ``hd95_<c>``, ``hd_mean``, ``hd_<c>``, ``iou_*``, ``precision_*``, ``recall_*``;
  ``best_step``, ``steps_done``
- generator: ``generator_key`` (empty without one) and its quality figures ``gen_<name>``
  (``gen_swd``, ``gen_swd_untrained``, ``gen_nn_distance``, ...)
- timings in seconds: ``time_generator_train``, ``time_generator_wait``,
  ``time_segmentation_train``, ``time_evaluation``, ``time_cell``
- hardware: ``hostname``, ``cpu_count``, ``gpu``, ``torch_version``, ``ray_version`` (nothing
  read from the environment, so no credential can end up in a row)

A reader must not assume a column exists in every file: metrics may be added in later
versions (the aggregator unifies schemas).
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
               mixing_policy=mixing["policy"], synthetic_source=mixing["source"])
    row.update(train_subjects=json.dumps(list(data["train_subjects"])),
               n_train_subjects=len(data["train_subjects"]), n_val_subjects=data["n_val_subjects"],
               n_test_subjects=data["n_test_subjects"], n_train_slices=data["n_train_slices"],
               n_synthetic_available=data["n_synthetic_available"],
               n_pool_subjects=data.get("n_pool_subjects", 0), pool_drawn=data.get("pool_drawn", 0),
               pool_kept=data.get("pool_kept", 0))
    row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    row["generator_key"] = cell.get("generator_key") or ""
    row["pool_key"] = cell.get("pool_key") or ""
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
