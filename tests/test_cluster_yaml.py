"""cluster.yaml validates against the schema shipped in the ray package and names real files."""

import json
import re
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert any(t.get("resources", {}).get("GPU") for t in config["available_node_types"].values())


def test_cluster_exposes_only_ssh_and_keeps_dashboard_local():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    ports = [(p["FromPort"], p["ToPort"]) for p in config["provider"]["security_group"]["IpPermissions"]]
    assert ports == [(22, 22)]
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_every_entrypoint_and_config_named_exists():
    text = (REPO / "cluster.yaml").read_text() + (REPO / "README.md").read_text()
    named = set(re.findall(r"(ray_jobs/\w+\.py|configs/[\w.-]+\.yaml)", text))
    assert named, "cluster.yaml and README name the job entrypoints and configs"
    missing = [n for n in named if not (REPO / n).exists()]
    assert not missing
