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


def test_every_node_gets_the_tested_versions_and_the_launcher_what_it_needs() -> None:
    """The head had no AWS SDK (the autoscaler could not start one worker), the workers an
    unpinned Ray and a torch from an index without the tested version, and a driver-less GPU
    image passed `ray up` silently."""
    import re

    import ray

    config = load()
    commands = " ".join(config["setup_commands"])
    assert f'"ray[default,tune]=={ray.__version__}"' in commands  # one Ray version everywhere
    makefile = (CLUSTER_YAML.parent / "Makefile").read_text()
    tested_torch = re.search(r"TORCH_SPEC \?= (torch==[\d.]+)", makefile)
    assert tested_torch and f'"{tested_torch.group(1)}"' in commands
    assert "--no-build-isolation" in commands  # sam2 builds against that torch
    assert any("boto3" in c for c in config["head_setup_commands"])
    assert any(c.startswith("nvidia-smi") for c in config["worker_setup_commands"])
    assert config["file_mounts"]["/home/ubuntu/data"] == "./data"  # data on every node
