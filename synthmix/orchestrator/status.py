"""``synthmix status``: what a study's store (a folder or URI) says is done, failed and
pending. No Ray needed."""

from __future__ import annotations

import json
from dataclasses import dataclass

from synthmix.errors import SynthmixError, headline
from synthmix.orchestrator.store import StudyStore


@dataclass
class StudyStatus:
    name: str
    cells: list[str]
    done: list[str]
    failed: dict[str, str]   # cell id -> first line of its last error
    pending: list[str]
    generators: dict[str, bool]  # key -> trained
    tuning: str | None = None  # the tuning stage, when the study has one

    def render(self) -> str:
        trained = sum(self.generators.values())
        lines = [f"study {self.name}: {len(self.done)}/{len(self.cells)} cells done, "
                 f"{len(self.failed)} failed, {len(self.pending)} pending; "
                 f"generators trained {trained}/{len(self.generators)}"]
        if self.tuning:
            lines.append(self.tuning)
        if self.failed:
            lines.append("failed:")
            lines += [f"  {cid}: {err}" for cid, err in self.failed.items()]
        if self.pending:
            lines.append("pending:")
            lines += [f"  {cid}" for cid in self.pending]
        return "\n".join(lines)


def study_status(name: str, *, storage=None) -> StudyStatus:
    """The status of study ``name`` under ``storage`` (a folder or URI; default as in run)."""
    store = StudyStore.open(name, storage)
    if not store.plan_file.exists():
        raise SynthmixError(f"no study named {name!r} under {store.storage} (no plan.json)")
    plan = json.loads(store.plan_file.read_text())
    cells = [c["cell_id"] for c in plan["cells"]]
    finished = store.finished_cells()
    errors = store.errors()
    done = [c for c in cells if c in finished]
    failed = {c: headline(errors[c]["error"]) for c in cells if c in errors and c not in finished}
    pending = [c for c in cells if c not in finished and c not in failed]
    generators = {j["key"]: store.generator_complete(j["key"]) for j in plan.get("generator_jobs", [])}
    return StudyStatus(name=store.name, cells=cells, done=done, failed=failed, pending=pending, generators=generators,
                       tuning=_tuning(store, plan.get("tune")))


def _tuning(store: StudyStore, block: dict | None) -> str | None:
    if block is None:
        return None
    from synthmix.orchestrator.tune_records import read_records

    records = list(read_records(store).values())
    complete = sum(r["state"] == "complete" for r in records)
    if block["status"] == "done":
        return f"tuning: done, best trial {block['best_trial']} ({block['metric']}={block['best_value']:.4g}) frozen into the grid"
    return (f"tuning: {complete}/{block['trials']} trials completed, {len(records) - complete} failed; "
            "the cells above are provisional until the winner is frozen in")
