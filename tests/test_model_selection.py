"""Generator model selection (``generator.choose``, 002): schema errors named, the rank rule, the
plan's counts and choice groups, the queue (candidates handed out like generator trainings, the
subset's cells waiting without a slot), and end to end through a real local Ray: both candidates
train once, the recorded choice follows the rank rule on the recorded scores, no stage before the
final evaluation loads a test subject (asserted through the loader, in every Ray worker), the
choice is in the store, plan.json and the report, and a resume neither retrains nor re-chooses."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import loader_audit
from synthmix.cli import main
from synthmix.datasets.splits import SplitPlan
from synthmix.errors import StudyError
from synthmix.orchestrator.capacity import QueuedCell, ReadyCells
from synthmix.orchestrator.store import StudyStore
from synthmix.search_spaces.choose_section import rank_candidates
from synthmix.search_spaces.schema import validate_study
from tiny_study import tiny_study_yaml

# The tiny study on pix2pix (one real fraction: one subset, one choice) with two candidates.
GENERATOR = """\
generator:
  name: pix2pix
  config: {base_filters: 4, disc_filters: 4, batch_size: 4, steps: 2, checkpoint_every: 2}
  choose:
    candidates: [{steps: 2}, {steps: 4}]
    by: [fcn_score, blur, realism]
  pool: {size: 64}
  quality: {samples: 16, reference_steps: 5}
"""
_TINY = tiny_study_yaml(real_fractions="[1.0]").replace("name: tiny", "name: tinychoose")
STUDY = _TINY[:_TINY.index("generator:")] + GENERATOR + _TINY[_TINY.index("mixing:"):]


def _problems(raw: dict) -> list[str]:
    with pytest.raises(StudyError) as err:
        validate_study(raw, "tinychoose.yaml")
    return err.value.problems


def _with_choose(choose) -> dict:
    raw = yaml.safe_load(STUDY)
    raw["generator"]["choose"] = choose
    return raw


# --- the section ----------------------------------------------------------------------------------


def test_choose_errors_name_their_field() -> None:
    assert _problems(_with_choose({"candidates": [{"steps": 2}, {"stepz": 4}], "by": ["fcn_score"]})) == [
        "generator.choose.candidates[1].stepz: unknown pix2pix option (known: base_filters, batch_size, betas, "
        "checkpoint_every, disc_filters, dropout, l1_lambda, lr, steps)"]
    found = _problems(_with_choose({"candidates": [], "by": ["fcn_score", "sharpness"], "every": 3}))
    assert any(p.startswith("generator.choose.candidates: give a list of at least 2") for p in found)
    assert "generator.choose.by[1]: unknown criterion 'sharpness'; known: blur, fcn_score, memorisation, realism, swd" \
        in found
    assert "generator.choose.every: unknown key; known: candidates, by" in found
    found = _problems(_with_choose({"candidates": [{"steps": 2}, {"steps": 2}, {"seed": 1}], "by": []}))
    assert any(p.startswith("generator.choose.by: give a non-empty list") for p in found)
    assert "generator.choose.candidates[1]: the same configuration as an earlier candidate" in found
    assert any(p.startswith("generator.choose.candidates[2].seed: set the study's seed") for p in found)
    assert any(p.startswith("generator.choose.candidates[0].steps:") for p in
               _problems(_with_choose({"candidates": [{"steps": 0}, {"steps": 4}], "by": ["blur"]})))


def test_choose_is_refused_with_blocks_and_with_named_generator_levels() -> None:
    choose = {"candidates": [{"steps": 2}, {"steps": 4}], "by": ["fcn_score"]}
    blocked = _with_choose(choose)
    blocked["generator"]["block_size"] = 2
    assert any(p.startswith("generator.choose: not with generator.block_size") for p in _problems(blocked))
    levels = yaml.safe_load(STUDY)
    section = levels.pop("generator")
    levels["factors"]["generator"] = {"small": {**section, "choose": choose}}
    assert "factors.generator.small.choose: unknown key; known: name, config, budget, select, pool, quality, masks, " \
           "block_size" in _problems(levels)


def test_a_study_without_choose_keeps_its_fingerprint() -> None:
    """``choose`` is hashed only when set, so every earlier study keeps its cell ids."""
    raw = yaml.safe_load(STUDY)
    plain = {**raw, "generator": {k: v for k, v in raw["generator"].items() if k != "choose"}}
    with_choose, without = validate_study(raw, "a.yaml"), validate_study(plain, "b.yaml")
    assert with_choose.fingerprint() != without.fingerprint()
    d = without.to_dict()
    for unset in ("choose", "budget", "block_size"):  # each hashed only when set
        d["generator"].pop(unset)
    from synthmix.search_spaces.schema import content_hash

    kept = {k: d[k] for k in ("seed", "dataset", "split", "segmenter", "generator", "mixing")}
    kept["real"] = {"real_fraction": d["factors"]["real_fraction"]}
    del kept["mixing"]["draw"]
    kept["dataset"]["phantom"] = without.dataset.phantom.params()  # new phantom options: only when set
    assert without.fingerprint() == content_hash(kept)


# --- the rank rule --------------------------------------------------------------------------------


def test_ranks_follow_each_criterions_direction_and_ties_go_to_the_first() -> None:
    a = {"fcn_dice_mean": 0.9, "blur": 10.0, "blur_real": 12.0, "swd_gap": 5.0}   # best FCN, blur off by 2
    b = {"fcn_dice_mean": 0.5, "blur": 13.0, "blur_real": 12.0, "swd_gap": 1.0}   # closest blur, lowest SWD gap
    c = {"fcn_dice_mean": 0.7, "blur": 30.0, "blur_real": 12.0}                   # no SWD figure: last there
    r = rank_candidates([a, b, c], ["fcn_score", "blur", "realism"])
    assert r["ranks"] == {"fcn_score": [1, 3, 2], "blur": [2, 1, 3], "realism": [2, 1, 3]}
    assert r["scores"]["blur"] == [2.0, 1.0, 18.0] and r["scores"]["realism"] == [5.0, 1.0, None]
    assert r["mean_rank"] == pytest.approx([5 / 3, 5 / 3, 8 / 3]) and r["chosen"] == 0  # a tie: the first
    assert rank_candidates([a, b, c], ["fcn_score"])["chosen"] == 0
    assert rank_candidates([a, b, c], ["realism"])["chosen"] == 1
    assert rank_candidates([a, b], ["swd"])["ranks"]["swd"] == [1.5, 1.5]  # both missing: tied last


# --- the plan -------------------------------------------------------------------------------------


def test_plan_counts_every_candidate_as_a_generator_training_and_shows_the_choice(tmp_path: Path, capsys) -> None:
    study = tmp_path / "tinychoose.yaml"
    study.write_text(STUDY.replace("real_fraction: [1.0]", "real_fraction: [0.5, 1.0]"))
    assert main(["plan", str(study), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["counts"]["cells"] == 4 and plan["counts"]["generator_trainings"] == 4  # 2 subsets x 2 candidates
    assert plan["counts"]["choice_groups"] == 2 and plan["counts"]["cells_without_generator"] == 2
    for choice in plan["choices"]:
        assert [c["overrides"] for c in choice["candidates"]] == [{"steps": 2}, {"steps": 4}]
        keys = {c["generator_key"] for c in choice["candidates"]}
        jobs = [j for j in plan["generator_jobs"] if j["key"] in keys]
        assert sorted(j["config"]["steps"] for j in jobs) == [2, 4] and all(j["cells"] == 1 for j in jobs)
        assert [c["choice_key"] for c in plan["cells"] if c.get("choice_key") == choice["key"]] == [choice["key"]]
    assert all(c["generator_key"] is None for c in plan["cells"])  # known once the choice is made
    assert main(["plan", str(study)]) == 0
    text = capsys.readouterr().out
    assert "generator trainings (unique keys): 4" in text
    assert "model selection: 2 choice group(s) (one per subset) x 2 candidates, by mean rank of fcn_score, blur, realism" \
        in text


# --- the queue ------------------------------------------------------------------------------------


def test_candidates_are_handed_out_like_generator_trainings_and_the_subsets_cells_wait() -> None:
    done: set[str] = set()
    cells = [QueuedCell("cell-a", "choice-x", 15.0, 100.0, after=("g1", "g2")),
             QueuedCell("cell-b", "choice-x", 15.0, 90.0, after=("g1", "g2")),
             QueuedCell("candidate-g1", "g1", 50.0), QueuedCell("candidate-g2", "g2", 60.0),
             QueuedCell("real-only", None, 0.0, 10.0)]
    queue = ReadyCells(cells, done.__contains__)
    assert [queue.pop().cell_id for _ in range(3)] == ["candidate-g2", "candidate-g1", "real-only"]
    assert queue.pop() is None and queue.ready() == 0  # the subset's cells wait, holding no slot
    done.add("g2")
    queue.finished("candidate-g2")
    assert queue.pop() is None  # g1 is still training
    queue.finished("candidate-g1")  # ... ended without its key (failed): the first waiting cell trains it
    first = queue.pop()
    assert first.cell_id == "cell-a" and queue.pop() is None
    done.update({"g1", "choice-x"})
    queue.finished("cell-a")
    assert queue.pop().cell_id == "cell-b"


# --- end to end -----------------------------------------------------------------------------------


def _choose_by_hand(record: dict, qualities: list[dict]) -> int:
    """The rank rule, written out for two candidates: per criterion the better one ranks 1, the
    other 2 (1.5 each when equal), from the figures the criterion names; lowest mean, first on ties."""
    value = {"fcn_score": lambda q: -q["fcn_dice_mean"], "blur": lambda q: abs(q["blur"] - q["blur_real"]),
             "realism": lambda q: q["swd_gap"]}
    means = [0.0, 0.0]
    for name in record["by"]:
        x, y = (value[name](q) for q in qualities)
        ranks = (1.5, 1.5) if x == y else ((1, 2) if x < y else (2, 1))
        for i in (0, 1):
            means[i] += ranks[i] / len(record["by"])
            assert record["candidates"][i]["ranks"][name] == ranks[i]
    assert [c["mean_rank"] for c in record["candidates"]] == pytest.approx(means)
    return 0 if means[0] <= means[1] else 1


@pytest.mark.slow
def test_model_selection_end_to_end_on_training_data_only_and_resumed_without_rechoosing(
        tmp_path: Path, capsys) -> None:
    import ray

    study, storage, log = tmp_path / "tinychoose.yaml", tmp_path / "st", tmp_path / "loader.jsonl"
    study.write_text(STUDY)
    store = StudyStore(storage / "tinychoose")
    started = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env=loader_audit.runtime_env(log))
    try:
        assert main(["run", str(study), "--storage", str(storage)]) == 0
        capsys.readouterr()
        first_run = len(loader_audit.loaded(log))
        plan = json.loads(store.plan_file.read_text())
        (choice,) = plan["choices"]
        keys = [c["generator_key"] for c in choice["candidates"]]
        record_file = store.choice_file(choice["key"])
        weights = [store.generator_dir(k) / "weights.pt" for k in keys]
        before = {str(p): p.stat().st_mtime for p in [record_file, *weights]}

        # Resume after losing the synthetic cell's row: the cell runs again on the recorded choice.
        cell = next(c for c in plan["cells"] if c.get("choice_key"))
        store.row_file(cell["cell_id"]).unlink()
        assert main(["resume", "tinychoose", "--storage", str(storage)]) == 0
        resumed_out = capsys.readouterr()
    finally:
        ray.shutdown()
    print(f"model selection end to end: {time.monotonic() - started:.0f} s", file=__import__("sys").stderr)

    # (a) Both candidates trained, once each: their artifacts are the study's only generators,
    # each with its own training length; the resume trained nothing.
    assert plan["counts"]["generator_trainings"] == 2 and plan["counts"]["choice_groups"] == 1
    assert sorted(p.name for p in (store.root / "artifacts" / "generators").iterdir()) == sorted(keys)
    specs = [json.loads((store.generator_dir(k) / "generator.json").read_text()) for k in keys]
    assert [s["config"]["steps"] for s in specs] == [2, 4] and [s["step"] for s in specs] == [2, 4]
    assert {str(p): p.stat().st_mtime for p in [record_file, *weights]} == before  # (e) no retraining, no re-choice
    assert "cells and candidate trainings" not in resumed_out.err  # no candidate trial was queued again
    assert not any((e["run"] or "").startswith("generator-") for e in loader_audit.loaded(log, skip=first_run))

    # (b) The recorded choice is the rank rule applied to the recorded scores of the candidates'
    # quality figures.
    record = json.loads(record_file.read_text())
    qualities = [store.generator_quality(k) for k in keys]
    assert record["by"] == ["fcn_score", "blur", "realism"]
    for cand, q in zip(record["candidates"], qualities):
        assert cand["scores"] == pytest.approx({"fcn_score": q["fcn_dice_mean"], "blur": abs(q["blur"] - q["blur_real"]),
                                                "realism": q["swd_gap"]})
    chosen = _choose_by_hand(record, qualities)
    assert record["chosen"] == chosen and record["chosen_key"] == keys[chosen]
    assert record["chosen_pool_key"] == choice["candidates"][chosen]["pool_key"]
    # Only the chosen candidate's pool was drawn, and the cell trained on it.
    assert [p.name for p in (store.root / "artifacts" / "pools").iterdir()] == [record["chosen_pool_key"]]
    rows = pd.concat([pd.read_parquet(store.row_file(c["cell_id"])) for c in plan["cells"]], ignore_index=True)
    row = rows[rows.cell_id == cell["cell_id"]].iloc[0]
    assert (row.generator_key, row.pool_key, row.choice_key) == (keys[chosen], record["chosen_pool_key"], choice["key"])
    assert len(rows) == 2 and store.finished_cells() == {c["cell_id"] for c in plan["cells"]}

    # (c) Training and validation subjects only, until the final evaluation: the loader was never
    # asked for a test subject by a candidate's training, the pool's draw (in the last candidate's
    # run, or a run of its own) or the trials (the choice reads quality.json alone); the cells'
    # own runs do load them (the audit sees them).
    split = SplitPlan.load(store.splits_file).get(0, 0, 1.0)
    entries = loader_audit.loaded(log)
    before_eval = [e for e in entries if not (e["run"] or "").startswith("cell-")]
    asked = {s for e in before_eval for s in e["subjects"]}
    assert {e["run"].split("-")[0] for e in before_eval if e["run"]} >= {"generator"}  # the pool: in one of them
    assert asked <= set(split.train) | set(split.val) and not asked & set(split.test)
    assert set(split.test) <= {s for e in entries if (e["run"] or "").startswith("cell-") for s in e["subjects"]}
    for key in keys:  # each candidate saw its subset (and the validation slices for the FCN scale)
        seen = {s for e in entries if e["run"] == f"generator-{key}" for s in e["subjects"]}
        assert set(split.train) <= seen <= set(split.train) | set(split.val)

    # (d) The choice in the store, in plan.json and in the report.
    assert record["subjects"] == sorted(split.train)
    assert {c["generator_key"] for c in record["candidates"]} == set(keys)
    out = tmp_path / "report.html"
    assert main(["report", str(store.root), "--out", str(out)]) == 0
    page = out.read_text()
    section = page[page.index("<h2>Generator model selection</h2>"):page.index("<h2>Generators</h2>")]
    assert f"chosen: candidate {chosen} " in section and keys[chosen] in section and keys[1 - chosen] in section
    assert section.count("</tr>") == 3 and "fcn_score_rank" in section and "mean_rank" in section  # header + 2 rows
