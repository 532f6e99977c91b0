"""Study validation: a valid study's typed content, and every kind of invalid study rejected
with the field named (table-driven), all problems reported at once."""

import copy
import json

import pytest
import yaml

from synthmix.errors import StudyError
from synthmix.search_spaces import load_study, validate_study
from synthmix.search_spaces.schema import merge_overrides

BASE = {
    "name": "tiny",
    "seed": 3,
    "dataset": {"phantom": {"subjects": 8, "size": 32, "classes": 3}},
    "split": {"test": 0.25, "val": 0.25, "repeats": 2},
    "factors": {"real_fraction": [0.5, 1.0], "synthetic": [0, 0.5, 1.0], "architecture": ["unet"],
                "augmentation": ["none", "flip"]},
    "segmenter": {"batch_size": 8, "max_steps": 10},
    "generator": {"name": "dcgan_wgangp", "config": {"steps": 5}},
    "mixing": {"policy": "additive", "source": "pool"},
}


def _with(path: str, value, base=BASE) -> dict:
    raw = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


_DELETE = object()


def test_valid_study_is_typed_and_defaults_are_filled():
    study = validate_study(copy.deepcopy(BASE), "tiny.yaml")
    assert study.factors["real_fraction"] == (0.5, 1.0)
    assert study.factors["synthetic"] == (0.0, 0.5, 1.0)
    assert list(study.factors) == ["real_fraction", "synthetic", "architecture", "augmentation"]
    assert study.statistics.baseline == {"synthetic": 0.0}  # the one real-only level
    assert study.statistics.test == "auto" and study.resources.workers == 1
    assert study.batch_size == 8
    assert study.generator.configs == {"dcgan_wgangp": {"steps": 5}}
    json.dumps(study.to_dict())  # JSON-able


def test_phantom_classes_include_004s_seven():
    assert validate_study(_with("dataset.phantom.classes", 7), "tiny.yaml").dataset.phantom.classes == 7


@pytest.mark.parametrize("path, value, expected", [
    ("colour", "red", "colour: unknown key"),
    ("seed", "abc", "seed: must be an integer"),
    ("split.repeats", 0, "split.repeats: must be >= 1"),
    ("split.folds", 3, "split: give exactly one of folds or test"),
    ("split.test", 0.8, "split: test + val = 1.05"),
    ("split.shuffle", True, "split.shuffle: unknown key"),
    ("dataset.phantom", _DELETE, "dataset: give exactly one of phantom"),
    ("dataset.manifest", "no/such/manifest.csv", "dataset.manifest: "),
    ("dataset.phantom.classes", 9, "dataset.phantom.classes: 9 is not one of"),
    ("dataset.phantom.size", "big", "dataset.phantom.size: must be an integer"),
    ("dataset.preprocess", {"axiz": 2}, "dataset.preprocess.axiz: unknown preprocess option"),
    ("factors.real_fraction", [0.5, 1.5], "factors.real_fraction[1]: 1.5 is outside (0, 1]"),
    ("factors.real_fraction", [0, 1], "factors.real_fraction[0]: 0 is outside (0, 1]"),
    ("factors.synthetic", [0, -0.5], "factors.synthetic[1]: -0.5 is negative"),
    ("factors.synthetic", [], "factors.synthetic: is empty"),
    ("factors.synthetic", 0.5, "factors.synthetic: must be a list"),
    ("factors.synthetic", [0, 0.0], "factors.synthetic: duplicate levels"),
    ("factors.architecture", ["unet", "transformer"], "factors.architecture[1]: unknown architecture 'transformer'"),
    ("factors.augmentation", ["none", "mixup"], "factors.augmentation[1]: unknown augmentation 'mixup'"),
    ("factors.architecture", _DELETE, "factors.architecture: missing"),
    ("factors.real_count", [2], "factors: give real_fraction or real_count, not both"),
    ("factors.colour", ["red"], "factors.colour: unknown key"),
    ("generator.name", "stylegan9", "generator.name: unknown generator 'stylegan9'"),
    ("generator", _DELETE, "generator: missing"),
    ("generator.config", {"stepz": 5}, "generator.config.stepz: unknown dcgan_wgangp option"),
    ("generator.config", {"seed": 1}, "generator.config.seed: set the study's seed"),
    ("mixing.policy", "blend", "mixing.policy: unknown policy 'blend'"),
    ("mixing.source", "cloud", "mixing.source: unknown source 'cloud'"),
    ("segmenter.architecture", "unet", "segmenter.architecture: set it in factors.architecture"),
    ("segmenter.seed", 4, "segmenter.seed: set the study's seed"),
    ("segmenter.max_stepz", 4, "segmenter: unknown field 'max_stepz'"),
    ("exclude", [{"synthetic": 2.0}], "exclude[0].synthetic: 2.0 is not a level of factors.synthetic"),
    ("exclude", [{"colour": "red"}], "exclude[0].colour: unknown key"),
    ("exclude", [{}], "exclude[0]: is empty"),
    ("statistics.test", "anova", "statistics.test: unknown test 'anova'"),
    ("statistics.alpha", 5, "statistics.alpha: 5 is outside (0, 1)"),
    ("statistics.baseline", {"synthetic": 3}, "statistics.baseline.synthetic: 3 is not a level"),
    ("resources.gpus_per_worker", -1, "resources.gpus_per_worker: -1 is outside"),
    ("resources.max_concurrent_trials", 0, "resources.max_concurrent_trials: must be >= 1"),
    ("name", "my study!", "name: must be a name"),
    ("mixing.draw", "random", "mixing.draw: unknown draw 'random'; known: fixed, fresh"),
    ("mixing", {"policy": "synthetic_only", "draw": "fresh"}, "mixing.draw: fresh makes every synthetic_only"),
    ("segmenter", {"batch_size": 8, "max_steps": 10, "budget": {"epochs_real": 3}},
     "segmenter.budget: give max_steps (optimiser steps) or budget (real exposures), not both"),
    ("segmenter", {"batch_size": 8, "budget": {"epochs": 3}}, "segmenter.budget: must be {epochs_real: E}"),
    ("resources", {"workers": 3}, "segmenter.batch_size: 8 is the global batch and must split evenly over "
                                  "resources.workers=3"),
    ("factors.synthetic", [0, "1 only"], "factors.synthetic: mixes numbers and quoted levels"),
    ("factors.synthetic", ["0", "0 only"], "factors.synthetic[1]: '0 only' is not an additive amount"),
])
def test_invalid_studies_name_the_field(path, value, expected):
    raw = copy.deepcopy(BASE)
    raw.setdefault("statistics", {})
    raw.setdefault("resources", {})
    with pytest.raises(StudyError) as err:
        validate_study(_with(path, value, raw), "bad.yaml")
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert err.value.source == "bad.yaml" and expected in str(err.value)


def test_policy_specific_levels():
    minibatch = {**BASE, "mixing": {"policy": "minibatch", "source": "on_the_fly"},
                 "factors": {**BASE["factors"], "synthetic": ["8-0", "4-4", "4-2"]}}
    with pytest.raises(StudyError) as err:
        validate_study(minibatch, "mb.yaml")
    assert err.value.problems == ["factors.synthetic[2]: '4-2' adds up to 6, the segmenter batch_size is 8"]
    ratio = {**BASE, "mixing": {"policy": "probability"}, "factors": {**BASE["factors"], "synthetic": ["1:0", 6001]}}
    with pytest.raises(StudyError, match=r"factors.synthetic\[1\]: .*quote ratios"):
        validate_study(ratio, "ratio.yaml")
    count = {**BASE, "mixing": {"policy": "count"}, "factors": {**BASE["factors"], "synthetic": [0, 600]},
             "generator": {"name": "dcgan_wgangp", "pool": {"size": 100}}}
    with pytest.raises(StudyError, match=r"generator.pool.size: 100 is smaller than the largest synthetic count 600"):
        validate_study(count, "count.yaml")


def test_every_problem_is_reported_at_once():
    raw = _with("factors.real_fraction", [2.0])
    raw = _with("split.repeats", 0, raw)
    raw = _with("mixing.policy", "blend", raw)
    raw = _with("generator.name", "nope", raw)
    with pytest.raises(StudyError) as err:
        validate_study(raw, "many.yaml")
    fields = {p.split(":")[0] for p in err.value.problems}
    assert {"factors.real_fraction[0]", "split.repeats", "mixing.policy", "generator.name"} <= fields


def test_manifest_path_is_relative_to_the_yaml_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.csv").write_text("subject_id,image,label\n")
    raw = _with("dataset", {"manifest": "data/manifest.csv"})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    study = load_study(str(tmp_path / "study.yaml"))
    assert study.dataset.manifest == str((tmp_path / "data" / "manifest.csv").resolve())
    (tmp_path / "data" / "manifest.csv").unlink()
    with pytest.raises(StudyError, match="dataset.manifest: .*does not exist"):
        load_study(str(tmp_path / "study.yaml"))


def test_load_study_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML") as err:
        load_study(str(bad))
    assert err.value.source == str(bad)
    with pytest.raises(StudyError, match="neither a study file nor a preset; presets: .*quickstart"):
        load_study("no-such-study")


def test_overrides_merge_nested_and_dotted(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE))
    study = load_study(str(path), overrides={"resources.workers": 2, "split": {"repeats": 5},
                                             "factors.augmentation": ["rotate"]})
    assert study.resources.workers == 2 and study.split.repeats == 5 and study.split.test == 0.25
    assert study.factors["augmentation"] == ("rotate",)
    assert merge_overrides({"a": {"b": 1}}, {"a.c": 2}) == {"a": {"b": 1, "c": 2}}


def test_fingerprint_tracks_what_changes_results():
    fp = validate_study(copy.deepcopy(BASE), "x").fingerprint()
    assert fp == validate_study(copy.deepcopy(BASE), "y").fingerprint()
    # Options at their defaults hash as if absent, so studies stored before they existed keep their ids.
    same = [("description", "other words"), ("resources", {"cpus_per_worker": 2, "workers": 1}),
            ("statistics", {"alpha": 0.01}), ("factors.augmentation", ["none", "flip", "rotate"]),
            ("exclude", [{"synthetic": 0.5}]), ("mixing", {"policy": "additive", "source": "pool", "draw": "fixed"})]
    for path, value in same:
        assert validate_study(_with(path, value), "x").fingerprint() == fp, path
    # The number of workers still changes results (batch norm and the Dice loss per rank's share).
    different = [("seed", 4), ("factors.real_fraction", [0.25, 1.0]), ("segmenter.max_steps", 11),
                 ("generator.config", {"steps": 6}), ("split.repeats", 3), ("mixing.source", "on_the_fly"),
                 ("mixing", {"policy": "additive", "draw": "fresh"}), ("resources", {"workers": 2}),
                 ("segmenter", {"batch_size": 8, "budget": {"real_draws": 80}})]
    for path, value in different:
        assert validate_study(_with(path, value), "x").fingerprint() != fp, path


def test_generator_factor_takes_configs_per_level():
    raw = _with("factors.generator", ["dcgan_wgangp"])
    with pytest.raises(StudyError, match="give configs"):
        validate_study(raw, "g.yaml")
    raw["generator"] = {"configs": {"dcgan_wgangp": {"steps": 7}}}
    assert validate_study(raw, "g.yaml").generator.configs == {"dcgan_wgangp": {"steps": 7}}


def test_per_architecture_network_options():
    raw = _with("factors.architecture", ["unet", "uresnet"])
    raw["segmenter"]["networks"] = {"unet": {"levels": 3}, "uresnet": {"levels": 3, "num_res_units": 1}}
    study = validate_study(raw, "n.yaml")
    assert study.segmenter_config("uresnet", "flip")["network"] == {"levels": 3, "num_res_units": 1}
    raw["segmenter"]["networks"]["uresnet"] = {"doubling": True}
    with pytest.raises(StudyError, match="segmenter: network 'uresnet': unknown option 'doubling'"):
        validate_study(raw, "n.yaml")


def test_a_real_exposure_budget_needs_levels_that_draw_real_data():
    raw = _with("segmenter", {"batch_size": 16, "budget": {"real_draws": 160}})
    raw["factors"]["synthetic"] = ["16-0", "8-8", "0-16"]
    raw["mixing"] = {"policy": "minibatch", "source": "pool"}
    with pytest.raises(StudyError) as err:
        validate_study(raw, "x")
    assert err.value.problems == ["factors.synthetic[2]: '0-16' draws no real data, so segmenter.budget "
                                  "(real_draws) in real exposures never ends; use segmenter.max_steps"]


def test_generator_section_is_validated_by_the_family_and_the_pipeline():
    """Family options go through the family's own builder; an unknown filter, clean-up or
    select.by is named with its field; a whole-pool filter is refused for on-the-fly sampling."""
    def problems(generator, mixing=None):
        raw = {**BASE, "generator": generator, **({"mixing": mixing} if mixing else {})}
        with pytest.raises(StudyError) as err:
            validate_study(raw, "g.yaml")
        return err.value.problems

    base = {"name": "dcgan_wgangp", "config": {}}
    assert any(p.startswith("generator.config.pool_size: moved to generator.pool.size")
               for p in problems({**base, "config": {"pool_size": 4}}))
    assert any("generator.select.by: unknown 'fid'" in p for p in problems({**base, "select": {"by": "fid"}}))
    assert any("generator.pool" in p and "sharpen" in p for p in problems({**base, "pool": {"filters": ["sharpen"]}}))
    assert any("generator.pool" in p and "erode" in p for p in problems({**base, "pool": {"cleanup": ["erode"]}}))
    on_the_fly = problems({**base, "pool": {"filters": [{"name": "blur", "percentile": 10}]}},
                          {"policy": "additive", "source": "on_the_fly"})
    assert any(p.startswith("generator.pool.filters[0]: filter 'blur' ranks samples against the whole pool")
               for p in on_the_fly)
