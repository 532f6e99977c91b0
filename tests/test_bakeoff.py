"""The generator bake-off: factor generator with named levels (whole generator sections), a
CPU-time budget resolved by each family's cost model, one baseline shared by every level, and
the report's generator comparison. The last test is a small bake-off through a real local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synthmix.cli import main
from synthmix.errors import StudyError
from synthmix.results import analyse, read_results
from synthmix.results.generator_comparison import dice_differences, quality_table
from synthmix.results.tables import footer
from synthmix.search_spaces.expand import expand_study, resolve_dataset
from synthmix.search_spaces.schema import NO_GENERATOR, validate_study
from synthmix.trainers.generators import GENERATORS
from synthmix.trainers.generators.budget import resolve_budget
from tiny_study import tiny_study_yaml

# pggan grows 4 -> 32 in 7 steps of 4 images (tests/test_pggan.py); the budget buys a few more.
PGGAN_TINY = dict(latent_dim=8, base_filters=4, max_filters=8, batch_size=4, fade_images=4, stable_images=4,
                  checkpoint_every=4)
PGGAN_BUDGET = 0.4  # modelled CPU seconds at 32x32


def _bakeoff(real_fractions: str = "[0.5, 1.0]") -> dict:
    """The tiny study with two generator levels: its own dcgan_wgangp section, and pggan on a budget."""
    raw = yaml.safe_load(tiny_study_yaml(real_fractions=real_fractions))
    plain = raw.pop("generator")
    raw["name"] = "bakeoff"
    raw["factors"]["generator"] = {
        "dcgan": {"name": plain["name"], "config": plain["config"]},
        "pggan": {"name": "pggan", "config": PGGAN_TINY, "budget": {"cpu_seconds": PGGAN_BUDGET}}}
    raw["generator"] = {"pool": plain["pool"], "quality": plain["quality"]}  # defaults of every level
    return raw


def _plan(raw: dict, tmp_path: Path):
    study = validate_study(raw, "bakeoff.yaml")
    return expand_study(study, resolve_dataset(study, tmp_path / "data"))


def test_each_level_is_validated_as_a_generator_section_naming_its_field() -> None:
    raw = _bakeoff()
    raw["factors"]["generator"]["pggan"]["config"] = {**PGGAN_TINY, "foo": 1}
    raw["factors"]["generator"]["pggan"]["stray"] = 1
    raw["factors"]["generator"]["dcgan"]["pool"] = {"size": 0}
    raw["factors"]["generator"][NO_GENERATOR] = {"name": "ddpm"}
    raw["factors"]["generator"]["ghost"] = {"name": "stylegan9"}
    with pytest.raises(StudyError) as err:
        validate_study(raw, "bakeoff.yaml")
    problems = err.value.problems
    assert any(p.startswith("factors.generator.pggan.config.foo: unknown pggan option") for p in problems)
    assert any(p.startswith("factors.generator.pggan.stray: unknown key") for p in problems)
    assert any(p.startswith("factors.generator.dcgan.pool") for p in problems)
    assert any(p.startswith("factors.generator.none:") for p in problems)
    assert any(p.startswith("factors.generator.ghost.name: unknown generator 'stylegan9'") for p in problems)
    both = _bakeoff()
    both["factors"]["generator"]["pggan"]["config"] = {**PGGAN_TINY, "steps": 9}
    with pytest.raises(StudyError, match=r"factors.generator.pggan.budget.cpu_seconds: the budget sets config.steps"):
        validate_study(both, "bakeoff.yaml")
    named_top = _bakeoff()
    named_top["generator"]["name"] = "dcgan_wgangp"
    with pytest.raises(StudyError, match=r"generator.name: unknown key"):
        validate_study(named_top, "bakeoff.yaml")


def test_budget_sets_the_most_steps_the_cost_model_affords() -> None:
    family = GENERATORS.get("pggan")
    config = resolve_budget("pggan", PGGAN_TINY, PGGAN_BUDGET, (32, 32))
    steps = config["steps"]
    cost = lambda n: family.cost(family.config({**PGGAN_TINY, "steps": n}), (32, 32))  # noqa: E731
    assert cost(steps) <= PGGAN_BUDGET < cost(steps + 1)
    spade = resolve_budget("spade_two_stage", {"images": {"steps": 200}}, 600, (64, 64))
    assert spade["images"]["steps"] == round(200 * spade["labels"]["steps"] / 300)  # the stages' proportions kept
    with pytest.raises(StudyError, match="too small for pggan at 32x32; its smallest valid training"):
        resolve_budget("pggan", PGGAN_TINY, 0.01, (32, 32))


def test_plan_shares_subsets_and_baselines_and_reuses_single_family_keys(tmp_path: Path, capsys) -> None:
    plan = _plan(_bakeoff(), tmp_path)
    baseline = [c for c in plan.cells if c.generator_key is None]
    assert [c.factors["generator"] for c in baseline] == [NO_GENERATOR] * 2  # one per real fraction
    assert len(plan.cells) == 2 + 2 * 2 and len(plan.generator_jobs) == 4
    levels = {row["level"]: row for row in plan.to_dict()["generator_levels"]}
    assert levels["pggan"]["trainings"] == 2 and levels["dcgan"]["cells"] == 2 and levels["none"]["trainings"] == 0
    budget_steps = resolve_budget("pggan", PGGAN_TINY, PGGAN_BUDGET, (32, 32))["steps"]
    assert {j.config.get("steps") for j in plan.generator_jobs.values() if j.name == "pggan"} == {budget_steps}
    # The same section as a plain `generator:` gets the same generator and pool keys.
    plain_study = validate_study(yaml.safe_load(tiny_study_yaml()), "tiny.yaml")
    plain = expand_study(plain_study, resolve_dataset(plain_study, tmp_path / "data"))
    dcgan = {j.key for j in plan.generator_jobs.values() if j.level == "dcgan"}
    assert dcgan == set(plain.generator_jobs) and set(plain.pool_jobs) <= set(plan.pool_jobs)
    as_steps = _bakeoff()
    pg = as_steps["factors"]["generator"]["pggan"]
    del pg["budget"]
    pg["config"] = {**PGGAN_TINY, "steps": budget_steps}
    assert {j.key for j in _plan(as_steps, tmp_path).generator_jobs.values() if j.name == "pggan"} == \
        {j.key for j in plan.generator_jobs.values() if j.name == "pggan"}
    path = tmp_path / "bakeoff.yaml"
    path.write_text(yaml.safe_dump(_bakeoff()))
    assert main(["plan", str(path), "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "cells: 6" in out and "generator trainings (unique keys): 4" in out
    assert f"generator pggan: pggan, 2 cells, 2 trainings of {budget_steps} steps" in out


def _rows() -> pd.DataFrame:
    """Results rows of a bake-off: 4 repeats, levels a (+0.05 Dice) and b (none), one baseline."""
    rng = np.random.default_rng(0)
    records = []
    for repeat in range(4):
        shared = rng.normal(0, 0.02)
        for rf in (0.5, 1.0):
            for level, syn, effect in ((NO_GENERATOR, 0.0, 0.0), ("a", 1.0, 0.05), ("b", 1.0, 0.0)):
                records.append({"cell_id": f"{level}-{rf}-{repeat}", "real_fraction": rf, "synthetic": syn,
                                "generator": level, "fold": 0, "repeat": repeat,
                                "dice_mean": 0.7 + rf * 0.1 + shared + effect + rng.normal(0, 0.002),
                                "generator_key": "" if level == NO_GENERATOR else f"{level}{rf}{repeat}",
                                "gen_swd": {"a": 5.0, "b": 9.0}.get(level, np.nan), "gen_swd_real": 4.0,
                                "gen_nn_distance": {"a": 0.3, "b": 0.1}.get(level, np.nan)})
    return pd.DataFrame(records)


def test_every_level_is_paired_with_the_shared_baseline() -> None:
    rows = _rows()
    analysis = analyse(rows, test="paired", by="generator")
    assert analysis.cols[0] == "generator"
    tested = [r for r in analysis.to_records() if not r["baseline"]]
    assert len(tested) == 4 and all(r["n_pairs"] == 4 for r in tested)
    for r in tested:  # the difference is against the baseline rows of the same real fraction
        base = rows[(rows.generator == NO_GENERATOR) & (rows.real_fraction == r["real_fraction"])].dice_mean.mean()
        assert r["baseline_mean"] == pytest.approx(base)
    a = [r for r in tested if r["generator"] == "a"]
    assert all(r["diff"] == pytest.approx(0.05, abs=0.01) and r["ci_low"] > 0 for r in a)
    dice = dice_differences(analysis, "real_fraction")
    assert list(dice.index) == ["a", "b"] and list(dice.columns) == ["real_fraction=0.5, synthetic=1",
                                                                     "real_fraction=1, synthetic=1"]
    assert dice.loc["a"].iloc[0].startswith("+0.05")
    quality = quality_table(rows)
    assert list(quality["generator"]) == ["a", "b"] and list(quality["generators"]) == [8, 8]
    assert list(quality["swd"]) == [5.0, 9.0] and list(quality["swd real"]) == [4.0, 4.0]
    assert analysis.shared == ["generator"] and "shared" in " ".join(analysis.notes)
    assert footer(analysis)[1] == "baseline (\u2020): synthetic=0, compared within the same real_fraction"


@pytest.mark.slow
def test_small_bakeoff_runs_through_ray(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bakeoff.yaml"
    path.write_text(yaml.safe_dump(_bakeoff("[1.0]")))  # 3 cells, 2 generators: a few minutes under load
    storage = tmp_path / "st"
    assert main(["run", str(path), "--storage", str(storage)]) == 0
    capsys.readouterr()
    rows = read_results("bakeoff", storage=str(storage)).rows
    assert len(rows) == 3 and set(rows["generator"]) == {NO_GENERATOR, "dcgan", "pggan"}
    assert (rows.loc[rows.generator == NO_GENERATOR, "generator_key"].fillna("") == "").all()
    for rf, at in rows.groupby("real_fraction"):  # rule 2 across levels: the same real subjects
        assert at["train_subjects"].nunique() == 1, rf
        assert len(at) == 3 and at.loc[at.generator != NO_GENERATOR, "generator_key"].nunique() == 2
    generators = sorted(p.name for p in (storage / "bakeoff" / "artifacts" / "generators").iterdir())
    assert generators == sorted(rows.loc[rows.generator != NO_GENERATOR, "generator_key"])  # one per level and subset
    families = {json.loads((storage / "bakeoff/artifacts/generators" / k / "generator.json").read_text())["family"]
                for k in generators}
    assert families == {"dcgan_wgangp", "pggan"}

    assert main(["results", "bakeoff", "--storage", str(storage), "--by", "generator", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    tested = [r for r in records if not r["baseline"]]
    assert sorted(r["generator"] for r in tested) == ["dcgan", "pggan"]
    base = rows.loc[rows.generator == NO_GENERATOR, "dice_mean"]
    for r in tested:  # each level against the one shared baseline row
        assert r["baseline_n"] == 1 and r["baseline_mean"] == pytest.approx(float(base.iloc[0]))

    out = tmp_path / "report.html"
    assert main(["report", "bakeoff", "--storage", str(storage), "--out", str(out)]) == 0
    page = out.read_text()
    section = page[page.index("<h2>Generator comparison</h2>"):]
    table = section[:section.index("</table>")]
    assert table.split("<tbody>")[1].count("<tr>") == 2  # one row per level
    assert "<td>dcgan</td>" in table and "<td>pggan</td>" in table and "<td>dcgan_wgangp</td>" in table
    assert "fcn_dice_mean" in table and "swd real" in table and "nn_distance" in table
    assert section.count("data:image/png;base64,") >= 3  # the real grid and one per level


def test_a_list_form_generator_factor_shares_its_baseline_too(tmp_path: Path) -> None:
    raw = yaml.safe_load(tiny_study_yaml())
    raw["factors"]["generator"] = ["dcgan_wgangp", "pix2pix"]
    plain = raw.pop("generator")
    raw["generator"] = {"configs": {"dcgan_wgangp": plain["config"], "pix2pix": {"steps": 3}},
                        "pool": plain["pool"], "quality": plain["quality"]}
    plan = _plan(raw, tmp_path)
    levels = [c.factors["generator"] for c in plan.cells]
    assert levels.count(NO_GENERATOR) == 2 and levels.count("dcgan_wgangp") == 2 and levels.count("pix2pix") == 2
    assert {j.name for j in plan.generator_jobs.values()} == {"dcgan_wgangp", "pix2pix"} and len(plan.generator_jobs) == 4


def test_adding_or_changing_a_level_keeps_the_other_cells(tmp_path: Path) -> None:
    from synthmix.errors import SynthmixError
    from synthmix.orchestrator.store import StudyStore
    from synthmix.orchestrator.study_run import _study_to_freeze
    from synthmix.search_spaces import load_study

    before = _plan(_bakeoff(), tmp_path)
    added = _bakeoff()
    added["factors"]["generator"]["pix"] = {"name": "pix2pix", "config": {"steps": 3}}
    changed = _bakeoff()
    changed["factors"]["generator"]["pggan"]["budget"] = {"cpu_seconds": 2 * PGGAN_BUDGET}
    ids = lambda plan, level: {c.cell_id for c in plan.cells if c.factors["generator"] == level}  # noqa: E731
    for raw, moved in ((added, set()), (changed, {"pggan"})):
        after = _plan(raw, tmp_path)
        for level in ("none", "dcgan", "pggan"):
            assert (ids(after, level) == ids(before, level)) == (level not in moved), level
    assert len(ids(_plan(added, tmp_path), "pix")) == 2

    # A run under the stored name takes the new levels (and keeps refusing other changes).
    paths = {}
    for name, raw in (("stored", _bakeoff()), ("added", added), ("other", {**_bakeoff(), "seed": 1})):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))
    store = StudyStore.at(tmp_path / "st" / "bakeoff")
    store.root.mkdir(parents=True)
    store.study_file.write_text(paths["stored"].read_text())
    assert _study_to_freeze(load_study(paths["stored"]), store) is None
    assert b"pix2pix" in _study_to_freeze(load_study(paths["added"]), store)
    with pytest.raises(SynthmixError, match="different configuration"):
        _study_to_freeze(load_study(paths["other"]), store)
