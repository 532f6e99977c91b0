"""An audit of the data loader for end-to-end tests (not a test module): a Ray worker setup hook
makes every worker process of a job append, for each call of the loader's subject readers
(``load_slices``, ``fit_normaliser``), the subject ids it was asked for to a JSON-lines file.
So a test can say which subjects a stage loaded, from what the loader itself was asked. Inside a
Ray Train worker an entry also names its run (``run``: ``generator-KEY``, ``pool-KEY``,
``cell-ID``), else ``run`` is None."""

from __future__ import annotations

import json
import os
from pathlib import Path

LOG_ENV = "SYNTHMIX_TEST_LOADER_LOG"
READERS = ("load_slices", "fit_normaliser")


def install() -> None:
    """The worker setup hook: wrap the loader's subject readers (workers import the loader's
    functions at call time, so they get the wrapped ones)."""
    import synthmix.datasets.loader as loader

    log = os.environ[LOG_ENV]

    def audited(name: str):
        original = getattr(loader, name)

        def reader(entry, subject_ids, *args, **kwargs):
            with open(log, "a") as f:
                f.write(json.dumps({"reader": name, "pid": os.getpid(), "run": _run_name(),
                                    "subjects": list(subject_ids)}) + "\n")
            return original(entry, subject_ids, *args, **kwargs)

        return reader

    for name in READERS:
        setattr(loader, name, audited(name))


def _run_name() -> str | None:
    """The Ray Train run this process works for, None outside one."""
    try:
        import ray.train

        return ray.train.get_context().get_experiment_name()
    except Exception:  # not in a Ray Train worker
        return None


def runtime_env(log: Path) -> dict:
    """The Ray job runtime_env that installs the audit in every worker, logging to ``log``."""
    tests = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    return {"worker_process_setup_hook": "loader_audit.install",
            "env_vars": {LOG_ENV: str(log), "PYTHONPATH": path}}


def loaded(log: Path, *, skip: int = 0) -> list[dict]:
    """The audit's entries, after the first ``skip``."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()[skip:]]
