"""Where the tuning stage keeps its trials in a study's store (``<store>/tune/``), without Ray:
``synthmix status`` reads them too. See ``synthmix.orchestrator.tuning`` for what they mean."""

from __future__ import annotations

import json

from synthmix.orchestrator.store import StoragePath, StudyStore, atomic_write_json

TUNE_DIR = "tune"


def tune_dir(store: StudyStore) -> StoragePath:
    return store.root / TUNE_DIR


def read_records(store: StudyStore) -> dict[int, dict]:
    """Every ended trial's record, by Optuna trial number."""
    folder = tune_dir(store) / "trials"
    if not folder.exists():
        return {}
    files = [p for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith(".")]
    records = [json.loads(p.read_text()) for p in files]
    return {r["number"]: r for r in sorted(records, key=lambda r: r["number"])}


def write_record(store: StudyStore, record: dict) -> None:
    """One trial's record, written atomically (``trials/NNNNN.json``)."""
    atomic_write_json(tune_dir(store) / "trials" / f"{record['number']:05d}.json", record)
