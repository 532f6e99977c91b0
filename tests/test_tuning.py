"""The tuning stage: the ``tune:`` section's validation (``synthmix plan`` names every bad field),
the winner frozen into the grid's fingerprint and plan, and end to end through a real local Ray:
a 4-trial search is SIGKILLed after 2 finished trials, resumes without rerunning them, never
loads a test subject (asserted through the loader, in every Ray worker), and the grid that
follows runs with the winner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import loader_audit
from synthmix.cli import main
from synthmix.datasets.splits import SplitPlan
from synthmix.errors import StudyError
from synthmix.orchestrator.store import StudyStore
from synthmix.search_spaces.schema import load_study, segmenter_config, validate_study
from synthmix.search_spaces.tune_section import apply_parameters
from tiny_study import sigkill_when, tiny_study_yaml

TESTS = Path(__file__).parent

# The tiny study cut to one grid cell (real data only), so the search is what the test pays for.
TUNE = """\
tune:
  trials: 4
  sampler: {name: random, seed: 0}
  space:
    segmenter.augmentation_params.intensity_shift_std: {float: [0.0, 0.1]}
    segmenter.augmentation_params.elastic_std_px: {choice: [0, 5]}
"""
STUDY = (tiny_study_yaml(real_fractions="[1.0]").replace("name: tiny", "name: tinytune")
         .replace("synthetic: [0, 1.0]", "synthetic: [0]").replace("augmentation: [none]", "augmentation: [standard]")
         .replace("max_steps: 10\n  val_every: 5\n  checkpoint_every: 5", "max_steps: 6\n  val_every: 3\n  checkpoint_every: 3")
         + TUNE)


def _raw(**tune) -> dict:
    raw = yaml.safe_load(STUDY)
    raw["tune"].update(tune)
    return raw


def _problems(raw: dict) -> list[str]:
    with pytest.raises(StudyError) as err:
        validate_study(raw, "tiny.yaml")
    return err.value.problems


# --- the section ----------------------------------------------------------------------------------


def test_plan_rejects_an_unknown_path_an_empty_range_and_a_choice_of_the_wrong_type(tmp_path: Path, capsys) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump(_raw(space={
        "segmenter.augmentation_params.nosuch_std": {"float": [0.0, 0.1]},   # unknown field
        "segmenter.nosuch": {"int": [1, 3]},                                   # unknown field
        "dataset.phantom.size": {"choice": [32, 64]},                          # not tunable
        "segmenter.lr": {"float": [0.01, 0.001]},                              # empty range
        "segmenter.max_steps": {"choice": ["six", "seven"]},                   # text for a number
        "segmenter.augmentation_params.elastic_std_px": {"choice": [0, "5"]},  # mixed types
        "segmenter.loss": {"choice": ["dice_ce", "nosuch_loss"]}})))           # a value its field rejects
    assert main(["plan", str(study)]) == 2
    err = capsys.readouterr().err
    for needle in ("tune.space.segmenter.augmentation_params.nosuch_std: with 0.0: segmenter.augmentation_params: "
                   "unknown augmentation parameter(s) 'nosuch_std'",
                   "tune.space.segmenter.nosuch: with 1: segmenter: unknown field 'nosuch'",
                   "tune.space.dataset.phantom.size: unknown path: only fields under segmenter or generator",
                   "tune.space.segmenter.lr.float: range [0.01, 0.001] is empty",
                   "tune.space.segmenter.max_steps: 'six' is text, but the study's value of this field is a number (6)",
                   "tune.space.segmenter.augmentation_params.elastic_std_px.choice: mixes types",
                   "tune.space.segmenter.loss: with 'nosuch_loss': segmenter.loss: unknown loss 'nosuch_loss'"):
        assert needle in err, (needle, err)


@pytest.mark.parametrize("tune, needle", [
    ({"on": {"fold": 1}}, "tune.on.fold: must be an integer in [0, 1), got 1"),
    ({"on": {"real_fraction": 0.5}}, "tune.on.real_fraction: 0.5 is not a level of factors.real_fraction [1.0]"),
    ({"metric": "test_dice_mean"}, "tune.metric: unknown metric 'test_dice_mean'"),
    ({"metric": "val_dice_3"}, "tune.metric: class 3 is not a foreground class (1..2)"),
    ({"metric": "swd"}, "tune.on.synthetic: metric swd scores a generator"),
    ({"sampler": {"name": "cmaes"}}, "tune.sampler.name: unknown sampler 'cmaes'"),
    ({"sampler": {"name": "grid"}}, "tune.space.segmenter.augmentation_params.intensity_shift_std: the grid "
                                    "sampler needs a choice or a range with a step"),
    ({"space": {"generator.config.steps": {"int": [2, 8]}}}, "tune.space.generator.config.steps: tune.on trains "
                                                              "without synthetic data"),
    ({"space": {"segmenter.lr": {"float": [0.0, 0.1], "log": True}}}, "tune.space.segmenter.lr.log: a log range needs low > 0"),
    ({"trials": 0}, "tune.trials: must be an integer >= 1, got 0"),
])
def test_tune_section_names_the_bad_field(tune: dict, needle: str) -> None:
    problems = _problems(_raw(**tune))
    assert any(needle in p for p in problems), problems


def test_a_factor_with_several_levels_must_be_named_and_the_grid_bounds_the_trials() -> None:
    raw = _raw(sampler={"name": "grid"}, trials=5, space={"segmenter.lr": {"choice": [1e-3, 2e-3]},
                                                          "segmenter.max_steps": {"int": [4, 5]}})
    raw["factors"]["augmentation"] = ["standard", "none"]
    problems = _problems(raw)
    assert any(p.startswith("tune.on.augmentation: factors.augmentation has several levels") for p in problems)
    assert "tune.trials: 5 is more than the grid's 4 points" in problems


def test_the_tune_section_and_its_winner_are_part_of_the_study_fingerprint() -> None:
    raw = _raw()
    study = validate_study(raw, "tiny.yaml")
    assert validate_study(_raw(trials=5), "tiny.yaml").fingerprint() != study.fingerprint()  # a changed study
    winner = {"segmenter.augmentation_params.intensity_shift_std": 0.03,
              "segmenter.augmentation_params.elastic_std_px": 5}
    grid = apply_parameters(raw, winner, source="tiny.yaml", base_dir=".",
                            tuned={"parameters": winner, "trial": 2, "value": 0.5})
    assert grid.segmenter["augmentation_params"] == {"intensity_shift_std": 0.03, "elastic_std_px": 5}
    assert grid.fingerprint() not in (study.fingerprint(), apply_parameters(raw, winner, source="tiny.yaml",
                                                                            base_dir=".").fingerprint())
    without = validate_study({k: v for k, v in raw.items() if k != "tune"}, "tiny.yaml")
    assert without.tune is None and without.fingerprint() != study.fingerprint()


def test_per_level_augmentation_parameters_leave_the_other_levels_alone() -> None:
    segmenter = {"augmentation_params": {"flip_prob": 0.5}, "augmentations": {"standard": {"translate_std_px": 5}}}
    assert segmenter_config(segmenter, "unet", "standard")["augmentation_params"] == \
        {"flip_prob": 0.5, "translate_std_px": 5}
    assert segmenter_config(segmenter, "unet", "none")["augmentation_params"] == {"flip_prob": 0.5}
    raw = _raw()
    raw["segmenter"]["augmentations"] = {"nosuch": {}}
    assert any(p.startswith("segmenter.augmentations.nosuch: unknown key") for p in _problems(raw))


def test_neff2018_tuned_searches_table_one_on_fold_zero_then_runs_the_neff2018_grid(capsys) -> None:
    tuned, neff = load_study("neff2018-tuned"), load_study("neff2018")
    assert tuned.factors == neff.factors and tuned.split == neff.split
    t = tuned.tune
    assert (t.on["fold"], t.on["synthetic"], t.on["augmentation"], t.sampler, t.trials) == (0, "16-0", "standard", "grid", 8)
    assert {p: s.choices for p, s in t.space.items()} == {
        "segmenter.augmentations.standard.intensity_shift_std": (0.0, 0.05),
        "segmenter.augmentations.standard.intensity_scale_std": (0.0, 0.05),
        "segmenter.augmentations.standard.translate_std_px": (0, 10)}
    assert main(["plan", "neff2018-tuned"]) == 0
    assert "tuning: 8 trial(s), grid sampler" in capsys.readouterr().out


def test_a_trial_is_the_tuned_cell_with_its_parameters_and_no_test_subjects(tmp_path: Path) -> None:
    from synthmix.orchestrator.spec import CellSpec
    from synthmix.orchestrator.tuning import _context, trial_cell_config, trial_metrics
    from synthmix.search_spaces.expand import expand_study, resolve_dataset

    (tmp_path / "tinytune.yaml").write_text(STUDY)
    study = load_study(tmp_path / "tinytune.yaml")
    plan = expand_study(study, resolve_dataset(study, tmp_path / "data"))
    store = StudyStore(tmp_path / "st" / "tinytune")
    parameters = {"segmenter.augmentation_params.intensity_shift_std": 0.07,
                  "segmenter.augmentation_params.elastic_std_px": 5}
    config = trial_cell_config(_context(study, store, plan), parameters, 3)
    spec = CellSpec.from_dict(config["spec"])
    assert (spec.cell_id, config["score"], spec.split.test) == ("tune-00003", "validation", ())
    split = plan.splits.get(0, 0, 1.0)
    assert (spec.split.train, spec.split.val) == (tuple(split.train), tuple(split.val)) and split.test
    assert spec.segmenter["augmentation_params"] == {"intensity_shift_std": 0.07, "elastic_std_px": 5}
    assert spec.segmenter["seed"] == plan.cells[0].seed  # every trial: the same cell seed
    assert config["trial_of"] != plan.cells[0].cell_id  # the trial's study is another study
    row = {"dice_mean": 0.8, "dice_1": 0.7, "hd95_mean": 3.0, "slice_dice_mean": 0.5, "gen_swd": 4.0,
           "gen_fcn_dice_mean": 0.6, "gen_swd_untrained": 9.0, "best_step": 6}
    assert trial_metrics(row, generator=True) == {"swd": 4.0, "fcn_score": 0.6}
    assert trial_metrics(row, generator=False) == {"swd": 4.0, "fcn_score": 0.6, "val_dice_mean": 0.8,
                                                    "val_dice_1": 0.7, "val_hd95_mean": 3.0}


# --- end to end -----------------------------------------------------------------------------------

_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import ray, loader_audit
ray.init(include_dashboard=False, log_to_driver=False, runtime_env=loader_audit.runtime_env({log!r}))
from synthmix.orchestrator.tuning import tune_study
tune_study({study!r}, storage={storage!r})
"""


def _records(store: StudyStore) -> dict[int, dict]:
    folder = store.root / "tune" / "trials"
    return {int(p.stem): json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.slow
def test_killed_search_resumes_scores_on_validation_only_and_freezes_the_winner(tmp_path: Path, capsys) -> None:
    import ray

    study, storage, log = tmp_path / "tinytune.yaml", tmp_path / "st", tmp_path / "loader.jsonl"
    study.write_text(STUDY)
    store = StudyStore(storage / "tinytune")
    started = time.monotonic()

    # A driver of its own, SIGKILLed once 2 trials have finished.
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER.format(tests=str(TESTS), log=str(log), study=str(study),
                                                                   storage=str(storage))],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sigkill_when(driver, lambda: len(_records(store)) >= 2, timeout=600, what="2 finished trials")
    before = _records(store)
    assert len(before) < 4 and all(r["state"] == "complete" for r in before.values())
    mtimes = {n: (store.root / "tune" / "trials" / f"{n:05d}.json").stat().st_mtime for n in before}
    plan = json.loads(store.plan_file.read_text())
    assert plan["tune"]["status"] == "pending"
    pending_ids = [c["cell_id"] for c in plan["cells"]]

    # Resume in this process, with the loader audited in every Ray worker; then run the grid.
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env=loader_audit.runtime_env(log))
    try:
        assert main(["tune", str(study), "--storage", str(storage)]) == 0
        out = capsys.readouterr().out
        audited_tuning = len(loader_audit.loaded(log))
        assert main(["run", str(study), "--storage", str(storage)]) == 0
        assert "dice_mean: mean (std)" in capsys.readouterr().out  # the grid's closing table
    finally:
        ray.shutdown()
    elapsed = time.monotonic() - started
    print(f"kill-and-resume test: {elapsed:.0f} s", file=sys.stderr)

    # 4 trials in all; the ones finished before the kill were not rerun.
    after = _records(store)
    assert len(after) == 4 and all(r["state"] == "complete" for r in after.values())
    assert {n: after[n] for n in before} == before
    assert {n: (store.root / "tune" / "trials" / f"{n:05d}.json").stat().st_mtime for n in before} == mtimes
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.load_study(study_name="synthmix-tune", storage=JournalStorage(JournalFileBackend(
        str(store.root / "tune" / "optuna.journal"))))
    states = {t.number: t.state.name for t in journal.trials}
    assert sorted(n for n, s in states.items() if s == "COMPLETE") == sorted(after)
    assert all(s == "FAIL" for n, s in states.items() if n not in after)  # interrupted by the kill
    assert min(set(after) - set(before)) > max(before)  # new trials, not reruns

    # The table, best first; best.json is the best trial.
    table = pd.read_parquet(store.root / "tune" / "trials.parquet")
    assert sorted(table.trial) == sorted(after)
    best = json.loads((store.root / "tune" / "best.json").read_text())
    top = max(after.values(), key=lambda r: r["value"])
    assert (best["trial"], best["value"], best["parameters"]) == (top["number"], top["value"], top["parameters"])
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "state"])
    assert lines[header + 1].split()[0] == str(top["number"])  # the printed table: best first

    # Validation subjects only: the loader was never asked for a test subject by the search...
    splits = SplitPlan.load(store.splits_file)
    split = splits.get(0, 0, 1.0)
    tuning_loads = loader_audit.loaded(log)[:audited_tuning]
    asked = {s for entry in tuning_loads for s in entry["subjects"]}
    assert asked == set(split.train) | set(split.val) and not asked & set(split.test)
    assert sum(e["reader"] == "load_slices" and set(e["subjects"]) == set(split.val) for e in tuning_loads) >= 4
    # ... while the grid's final evaluation is (so the audit sees what it should).
    assert set(split.test) <= {s for e in loader_audit.loaded(log, skip=audited_tuning) for s in e["subjects"]}
    assert all(set(r["metrics"]) >= {"val_dice_mean", "val_hd95_mean"} for r in after.values())

    # The grid ran with the winner: plan.json says so, and its cells are new cells.
    plan = json.loads(store.plan_file.read_text())
    assert plan["tune"]["status"] == "done" and plan["tune"]["parameters"] == best["parameters"]
    assert plan["tune"]["best_trial"] == best["trial"]
    assert [c["cell_id"] for c in plan["cells"]] != pending_ids
    assert store.finished_cells() == {c["cell_id"] for c in plan["cells"]}
    assert main(["results", str(store.root), "--tune", "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("trial,state,val_dice_mean,segmenter.augmentation_params.intensity_shift_std")
    assert len(csv) == 5 and csv[1].startswith(f"{best['trial']},complete,")
    assert main(["status", "tinytune", "--storage", str(storage)]) == 0
    assert f"tuning: done, best trial {best['trial']}" in capsys.readouterr().out

    # The report: the trials and Optuna's two charts.
    assert main(["report", str(store.root), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    section = page[page.index("<h2>Tuning stage"):]
    assert "Optimisation history</h3><img" in section and "Parameter importances</h3><img" in section


# --- on S3 (a loopback moto server) -------------------------------------------------------------

from test_s3_storage import BUCKET, _synthmix, s3_env  # noqa: E402,F401 (its S3 server fixture)

# Trials on a synthetic level: they share one generator key, which is trained once.
S3_STUDY = (tiny_study_yaml(real_fractions="[1.0]").replace("name: tiny", "name: tunes3")
            .replace("max_failures: 1}", "max_failures: 1, max_concurrent_trials: 1}")
            + TUNE.replace("  trials: 4\n", "  on: {synthetic: 1.0}\n  trials: 2\n")
            .replace("""    segmenter.augmentation_params.intensity_shift_std: {float: [0.0, 0.1]}
    segmenter.augmentation_params.elastic_std_px: {choice: [0, 5]}
""", "    segmenter.lr: {float: [1.0e-3, 3.0e-3], log: true}\n"))


@pytest.mark.slow
def test_search_on_s3_is_killed_and_resumed_from_the_bucket_alone(s3_env, tmp_path: Path) -> None:
    import shutil

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from synthmix.orchestrator.tune_records import read_records

    uri = f"s3://{BUCKET}/tuning"
    study = tmp_path / "tunes3.yaml"
    study.write_text(S3_STUDY)
    store = StudyStore.open("tunes3", uri)

    driver = _synthmix("tune", str(study), "--storage", uri, cwd=tmp_path)
    sigkill_when(driver, lambda: bool(read_records(store)), timeout=600, what="finished trial")
    before = read_records(store)
    assert len(before) == 1 and (store.root / "tune" / "optuna.journal").is_file()
    shutil.rmtree(Path(s3_env["SYNTHMIX_CACHE"]) / "tunes3")  # resume as if on another machine

    resumed = _synthmix("tune", str(study), "--storage", uri, cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "1 already done" in output

    after = read_records(store)
    assert len(after) == 2 and all(r["state"] == "complete" for r in after.values())
    assert {n: after[n] for n in before} == before
    # The journal in the bucket knows both trials (and the one the kill interrupted, if any).
    local = tmp_path / "optuna.journal"
    local.write_bytes((store.root / "tune" / "optuna.journal").read_bytes())
    journal = optuna.load_study(study_name="synthmix-tune", storage=JournalStorage(JournalFileBackend(str(local))))
    assert sorted(t.number for t in journal.trials if t.state.name == "COMPLETE") == sorted(after)
    # One generator, trained once, shared by both trials and kept for the grid.
    keys = {r["generator_key"] for r in after.values()}
    assert len(keys) == 1 and store.generator_complete(next(iter(keys)))
    assert [p.name for p in (store.ray_dir / "train").iterdir() if p.name.startswith("generator-")] == \
        [f"generator-{k}" for k in keys]
    best = json.loads((store.root / "tune" / "best.json").read_text())
    assert best["value"] == max(r["value"] for r in after.values())

    elsewhere = tmp_path / "laptop"
    elsewhere.mkdir()
    table = subprocess.run([sys.executable, "-m", "synthmix.cli", "results", f"{uri}/tunes3", "--tune"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1].split()[0] == str(best["trial"]) and "segmenter.lr" in table.stdout
