"""Every shipped preset validates, expands to the grid its header promises, and carries the
header; the `plan` and `spaces` commands end to end through synthmix.cli.main."""

import json
import re

import pytest
import yaml

from synthmix.cli import main
from synthmix.search_spaces import load_study
from synthmix.search_spaces.expand import build_split_plan, expand_cells
from synthmix.search_spaces.presets import preset_header, preset_names, preset_path

# (cells, generator trainings) each preset's header promises.
EXPECTED = {"quickstart": (12, 6), "bowles2018-table2": (144, 24), "neff2018": (18, 3),
            "bowles-gansfer-ratios": (125, 25), "neff2018-tuned": (18, 3), "lcgan2019": (12, 12),
            "brats-two-stage": (21, 2), "bowles2018-table3": (96, 24), "bowles2018-synthetic-sweep": (144, 24),
            "bowles2018-fraction-sweep": (160, 80), "bowles2018-mr": (126, 42), "bowles-gansfer": (125, 30),
            "generator-bakeoff": (78, 36), "generator-bakeoff-laptop": (26, 12)}


def test_the_required_presets_ship():
    assert {"quickstart", "bowles2018-table2", "neff2018"} <= set(preset_names())
    assert set(preset_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", preset_names())
def test_preset_validates_expands_and_has_a_header(name):
    header = preset_header(name)
    assert header.startswith(f"{name}:")
    assert re.search(r"^Command: synthmix run " + re.escape(name), header, re.M)
    assert re.search(r"^Expected run time: .*2-CPU laptop", header, re.M)
    study = load_study(name)
    assert study.name == name
    phantom = study.dataset.phantom
    ids = [f"sub-{i:03d}" for i in range(phantom.subjects)]  # the phantom's labelled subject ids
    plan = expand_cells(study, build_split_plan(study, ids), dataset_fingerprint="x", manifest="m.csv")
    assert (len(plan.cells), len(plan.generator_jobs)) == EXPECTED[name]
    cells, keys = EXPECTED[name]
    assert f"{cells} segmentation cells and {keys} generator training" in " ".join(header.split())


def test_spaces_list_and_show(capsys):
    assert main(["spaces", "list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert re.search(rf"^{re.escape(name)} +\S", out, re.M)
    assert main(["spaces", "show", "neff2018"]) == 0
    text = capsys.readouterr().out
    assert text == preset_path("neff2018").read_text() and text.startswith("# neff2018:")
    assert main(["spaces", "show", "nope"]) != 0
    assert "presets: " in capsys.readouterr().err


def test_plan_command_json_and_text(capsys, tmp_path):
    assert main(["plan", "quickstart", "--format", "json", "--data-root", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["cells"] == 12 and data["counts"]["generator_trainings"] == 6
    assert data["factors"] == ["real_fraction", "synthetic", "architecture", "augmentation"]
    assert len({c["cell_id"] for c in data["cells"]}) == 12
    assert main(["plan", "--data-root", str(tmp_path)]) == 0  # no argument: quickstart
    text = capsys.readouterr().out
    assert "cells: 12" in text and "generator trainings (unique keys): 6" in text and "estimated compute" in text


def test_plan_rejects_a_bad_study_and_launches_nothing(capsys, tmp_path):
    raw = yaml.safe_load(preset_path("quickstart").read_text())
    raw["factors"]["real_fraction"] = [0.5, 1.5]
    raw["factors"]["architecture"] = ["unet", "vit"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    data_root = tmp_path / "data"
    assert main(["plan", str(bad), "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert "factors.real_fraction[1]: 1.5 is outside (0, 1]" in err
    assert "factors.architecture[1]: unknown architecture 'vit'" in err
    assert str(bad) in err and not data_root.exists()


@pytest.mark.parametrize("name, unit", [("lcgan2019", 12), ("brats-two-stage", 21)])
def test_paper_presets_plan_whole_designs(name, unit, capsys, tmp_path):
    """002's 3 fractions x {none, GAN, traditional, both} and 004's 7 (real, synthetic) instances
    x 3 classes levels: `synthmix plan --format json` (on the phantom it writes) gives whole
    multiples of them, with one generator per subset shared by every level of the other factors."""
    assert main(["plan", name, "--format", "json", "--data-root", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    counts = data["counts"]
    assert counts["cells"] % unit == 0 and counts["cells"] >= unit
    fractions = len(data["levels"]["real_fraction"])
    if name == "lcgan2019":  # model selection: one choice per subset over 4 training lengths, each a key
        assert len(data["choices"]) == counts["choice_groups"] == fractions
        assert [[c["overrides"] for c in g["candidates"]] for g in data["choices"]] == \
            [[{"steps": 15}, {"steps": 75}, {"steps": 150}, {"steps": 300}]] * fractions
        keys = {c["generator_key"] for g in data["choices"] for c in g["candidates"]}
        assert len(keys) == counts["generator_trainings"] == 4 * fractions
        per_choice = {g["key"]: {c["augmentation"] for c in data["cells"] if c.get("choice_key") == g["key"]}
                      for g in data["choices"]}
        assert all(levels == {"none", "traditional"} for levels in per_choice.values())  # one choice serves both
        assert "Model selection over training lengths (generator.choose)" in " ".join(preset_header(name).split())
        return
    keys = {c["generator_key"] for c in data["cells"] if c["generator_key"]}
    assert len(keys) == counts["generator_trainings"] == fractions
    if name == "brats-two-stage":
        assert [c["num_classes"] for c in data["classes"]] == [7, 4, 2]
        per_key = {k: {c["classes"] for c in data["cells"] if c["generator_key"] == k} for k in keys}
        assert all(levels == {7, 4, 2} for levels in per_key.values())  # one generator serves every level


def test_bowles_gansfer_plans_30_generators_6_per_fold_on_an_older_unlabelled_pool(capsys, tmp_path):
    """001's design: `synthmix plan --format json` on the phantom it writes: 125 cells, one
    generator per block of at most 6 labelled subjects, 6 per fold, each also given the older
    unlabelled subjects (gansfer)."""
    import pandas as pd

    assert main(["plan", "bowles-gansfer", "--format", "json", "--data-root", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["cells"] == 125 and data["counts"]["generator_trainings"] == 30
    jobs = data["generator_jobs"]
    assert sorted(j["fold"] for j in jobs) == [f for f in range(5) for _ in range(6)]
    assert all(1 <= len(j["subjects"]) <= 6 and len(j["unlabelled"]) == 40 for j in jobs)
    assert sum(1 for c in data["cells"] if len(c.get("blocks", ())) == 4) == 20  # 24 labelled: 4 ratios x 5 folds
    manifest = pd.read_csv(data["manifest"])
    labelled, unlabelled = manifest[manifest.labelled], manifest[~manifest.labelled]
    assert labelled.age.between(20, 50).all() and unlabelled.age.between(40, 90).all()
    assert unlabelled.lesion_count.mean() > labelled.lesion_count.mean()
    assert unlabelled.label.notna().all()  # truth: written, never trained on (labelled false)
