"""cluster.yaml is a valid Ray cluster launcher config (checked offline with the schema and the
checks `ray up` itself runs before it contacts AWS), asks for what synthmix needs, and holds no
secret. A deliberately broken copy must fail the same check."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> dict:
    """What `ray up` does first: fill in the provider's defaults, then validate against
    ray/autoscaler/ray-schema.json plus Ray's own cross-field checks (no network)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_a_valid_ray_cluster_config() -> None:
    prepared = _validate(_load())
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0  # a CPU head node
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 1]
    assert gpu, "a single-GPU worker type"
    assert all(t["min_workers"] < t["max_workers"] <= prepared["max_workers"] for t in gpu)  # autoscales


def test_every_node_installs_synthmix() -> None:
    config = _load()
    assert config["file_mounts"]["~/synthmix"] == "."
    assert any("-e ~/synthmix" in cmd for cmd in config["setup_commands"])  # head and workers alike


def test_cluster_yaml_holds_no_secret() -> None:
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)  # AWS access key ids
    assert not re.search(r"[A-Za-z0-9/+=]{40}", text)  # AWS secret access keys
    assert "PRIVATE KEY" not in text
    assert not re.search(r"(?im)^\s*[^#]*\b(aws_secret_access_key|aws_session_token|password)\b", text)


BREAKAGES = {  # a deliberately invalid edit -> what Ray's check must say about it
    "unknown field": (("available_node_types", "gpu", "gpus"), 1, "'gpus' was unexpected"),
    "bad type": (("max_workers",), "four", "'four' is not of type 'integer'"),
    "head not defined": (("head_node_type",), "no-such-node-type", "must be one of `available_node_types`"),
    "min above max": (("available_node_types", "gpu", "min_workers"), 9, "smaller than the sum of `min_workers`"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_cluster_yaml_fails_validation(breakage: str) -> None:
    (*parents, key), value, message = BREAKAGES[breakage]
    config = _load()
    node = config
    for name in parents:
        node = node[name]
    node[key] = value
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(message)):
        _validate(config)
