"""cluster.yaml passes Ray's own cluster-launcher validation, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate(config: dict) -> None:
    try:
        from ray.autoscaler._private.util import fillout_defaults, validate_config
    except ImportError:
        pytest.skip("Ray moved its cluster-config validator; nothing to validate against")
    validate_config(fillout_defaults(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_the_launcher() -> None:
    validate(load())


def test_cluster_layout() -> None:
    config = load()
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all(n["node_config"]["InstanceType"] == "g5.xlarge" for n in gpu)
    assert all(n["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for n in gpu)
    commands = " ".join(config["setup_commands"])
    assert commands.index("torch") < commands.index("pip install -e .")
    assert "--include-dashboard=false" in " ".join(config["head_start_ray_commands"])


def test_validator_rejects_a_broken_config() -> None:
    config = load()
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's error type is Ray-internal
        validate(config)
