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


def test_kuberay_rayjob_names_real_entrypoints_and_exposes_nothing():
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    entry, config = re.findall(r"(ray_jobs/\w+\.py) --config (configs/[\w.-]+\.yaml)", spec["entrypoint"])[0]
    assert (REPO / entry).exists() and (REPO / config).exists()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    workers = cluster["workerGroupSpecs"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for w in workers for c in w["template"]["spec"]["containers"])
    assert "serviceType" not in cluster["headGroupSpec"]


def test_no_credentials_in_configs_or_cluster_files():
    secret = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|password\s*:|api[_-]?key\s*:|token\s*:|hf_[A-Za-z0-9]{20,}", re.IGNORECASE)
    files = [REPO / "cluster.yaml", REPO / "k8s" / "rayjob.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
    leaks = [f"{f.name}: {m.group(0)}" for f in files for m in secret.finditer(f.read_text())]
    assert not leaks
