"""The study's storage root: where plans, splits, artifacts, results rows and errors live.

Layout under ``<storage>/<study name>/``::

    study.yaml                 the validated study, as run
    plan.json                  cells (factor levels, fold, repeat) and generator keys
    splits.json                the subject splits (written once, reloaded, checked on load)
    data/                      phantom data and the preprocessed cache (local to this machine)
    artifacts/generators/KEY/  trained generators (checkpoint, pool, quality, samples.png)
    results/CELL_ID.parquet    one row per finished cell, written atomically
    errors/CELL_ID.json        the last error of a cell that failed (removed once it succeeds)
    ray/                       Ray Tune experiment state and Ray Train checkpoints

Only local paths for now; every write goes through a temp file and ``os.replace`` so a reader
never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORAGE_ENV = "SYNTHMIX_STORAGE"


def default_storage() -> Path:
    """``$SYNTHMIX_STORAGE`` or ``./runs``."""
    return Path(os.environ.get(DEFAULT_STORAGE_ENV, "runs")).absolute()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@dataclass(frozen=True)
class StudyStore:
    """Paths of one study under a storage root."""

    root: Path

    @classmethod
    def open(cls, name: str, storage: str | Path | None = None) -> "StudyStore":
        base = Path(storage).absolute() if storage else default_storage()
        return cls(base / name)

    @property
    def name(self) -> str:
        return self.root.name

    study_file = property(lambda self: self.root / "study.yaml")
    plan_file = property(lambda self: self.root / "plan.json")
    splits_file = property(lambda self: self.root / "splits.json")
    data_dir = property(lambda self: self.root / "data")
    cache_dir = property(lambda self: self.root / "data" / "cache")
    results_dir = property(lambda self: self.root / "results")
    errors_dir = property(lambda self: self.root / "errors")
    ray_dir = property(lambda self: self.root / "ray")

    def generator_dir(self, key: str) -> Path:
        return self.root / "artifacts" / "generators" / key

    def row_file(self, cell_id: str) -> Path:
        return self.results_dir / f"{cell_id}.parquet"

    def error_file(self, cell_id: str) -> Path:
        return self.errors_dir / f"{cell_id}.json"

    def finished_cells(self) -> set[str]:
        if not self.results_dir.is_dir():
            return set()
        return {p.stem for p in self.results_dir.glob("*.parquet")}

    def errors(self) -> dict[str, dict]:
        if not self.errors_dir.is_dir():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.errors_dir.glob("*.json"))}

    def record_error(self, cell_id: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        atomic_write_json(self.error_file(cell_id), {"cell_id": cell_id, "error": text})

    def clear_error(self, cell_id: str) -> None:
        self.error_file(cell_id).unlink(missing_ok=True)
