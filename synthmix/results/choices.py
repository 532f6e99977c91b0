"""Model selection records (``choices/<key>.json``, written by ``orchestrator.choices``) as
tidy tables: one row per candidate of a subset, with its overrides, its score and rank on each
criterion, its mean rank and whether it was chosen. Pure functions over the study folder."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.fs as pafs


def read_choices(fs: pafs.FileSystem, folder: str) -> list[dict]:
    """Every recorded choice of the study, ordered by (fold, repeat, amount)."""
    selector = pafs.FileSelector(f"{folder}/choices", allow_not_found=True)
    records = []
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
            with fs.open_input_stream(info.path) as stream:
                records.append(json.loads(stream.read()))
    return sorted(records, key=lambda r: (r["fold"], r["repeat"], r["amount"]))


def choice_table(record: dict) -> pd.DataFrame:
    """One row per candidate: overrides, generator key, per criterion its score and rank, the
    mean rank, and ``chosen``."""
    rows = []
    for cand in record["candidates"]:
        row = {"candidate": cand["index"], "overrides": json.dumps(cand["overrides"], sort_keys=True),
               "generator_key": cand["generator_key"]}
        for name in record["by"]:
            row[name] = cand["scores"][name]
            row[f"{name}_rank"] = cand["ranks"][name]
        row["mean_rank"] = cand["mean_rank"]
        row["chosen"] = cand["index"] == record["chosen"]
        rows.append(row)
    return pd.DataFrame(rows)
