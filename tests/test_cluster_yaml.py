"""cluster.yaml validates against the schema shipped in the ray package and names real files."""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert any(t.get("resources", {}).get("GPU") for t in config["available_node_types"].values())


def test_every_node_type_names_its_own_security_group_so_the_launcher_opens_nothing():
    """Ray's AWS launcher creates a group with SSH open to 0.0.0.0/0 for any node type without
    SecurityGroupIds; run its own configuration step on cluster.yaml: it must create nothing."""
    from ray.autoscaler._private.aws import config as aws_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    groups = [t["node_config"].get("SecurityGroupIds") for t in config["available_node_types"].values()]
    assert all(groups) and len({tuple(g) for g in groups}) == 1, "every node type names the same group of yours"
    assert "security_group" not in config["provider"], "a launcher-made group would open SSH to the world"
    before = copy.deepcopy(config)
    assert aws_config._configure_security_group(config) == before  # returns at once: no group made, no AWS call
    assert {"CidrIp": "0.0.0.0/0"} in aws_config._create_default_ssh_inbound_rules()[0]["IpRanges"]  # what it would have opened
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_every_entrypoint_and_config_named_exists():
    text = (REPO / "cluster.yaml").read_text() + (REPO / "README.md").read_text()
    named = set(re.findall(r"(ray_jobs/\w+\.py|configs/[\w.-]+\.yaml)", text))
    assert named, "cluster.yaml and README name the job entrypoints and configs"
    missing = [n for n in named if not (REPO / n).exists()]
    assert not missing


SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"


def unknown_fields(document, schema: dict, path: str = "") -> list[str]:
    """Keys the API server would prune (kubectl --validate=strict refuses them): not in a
    schema's properties where it neither allows additional properties nor preserves unknown fields."""
    if isinstance(document, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        found = []
        for key, value in document.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
        return found
    if isinstance(document, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [f for key, value in document.items() for f in unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")]
    if isinstance(document, list) and "items" in schema:
        return [f for i, item in enumerate(document) for f in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def test_kuberay_rayjob_validates_against_kuberays_own_crd():
    crd_path = SHARED_SCHEMAS / "kuberay-ray.io_rayjobs.yaml"
    if not crd_path.exists():
        pytest.skip(f"needs KubeRay's RayJob CRD at {crd_path} (../shared/schemas); not present here")
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == f"{crd['spec']['group']}/v1" and job["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.Draft7Validator(schema).validate(job)
    assert unknown_fields(job, schema) == []
    broken = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}  # a typo the API server would drop silently
    assert unknown_fields(broken, schema) == [".spec.rayClusterSpec.headGroupSpec.rayStartParam"]


def test_kuberay_job_can_be_submitted_and_the_network_policy_keeps_it_private():
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    spec = job["spec"]
    entry, config = re.findall(r"(ray_jobs/\w+\.py) --config (configs/[\w.-]+\.yaml)", spec["entrypoint"])[0]
    assert (REPO / entry).exists() and (REPO / config).exists()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    # K8sJobMode submits from another pod through the head Service: the dashboard must listen there.
    if spec.get("submissionMode", "K8sJobMode") != "SidecarMode":
        assert cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    assert "serviceType" not in cluster["headGroupSpec"]
    workers = cluster["workerGroupSpecs"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for w in workers for c in w["template"]["spec"]["containers"])
    assert "HF_HUB_OFFLINE" not in spec["runtimeEnvYAML"]  # the hub cache is tried first; offline only when a user says so

    policy = yaml.safe_load((REPO / "k8s" / "networkpolicy.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    templates = [cluster["headGroupSpec"]["template"], spec["submitterPodTemplate"], *(w["template"] for w in workers)]
    for template in templates:  # every pod of the job is covered by the policy
        assert selected.items() <= template["metadata"]["labels"].items()
    for rule in policy["spec"]["ingress"]:  # and reached only by those pods, or the operator on the dashboard port
        sources = rule["from"]
        assert all(s.get("podSelector", {}).get("matchLabels") == selected or ("namespaceSelector" in s and rule.get("ports") == [
            {"protocol": "TCP", "port": 8265}]) for s in sources)


def test_no_credentials_in_configs_or_cluster_files():
    secret = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|password\s*:|api[_-]?key\s*:|(?<![_/.])token\s*:|hf_[A-Za-z0-9]{20,}", re.IGNORECASE)
    files = [REPO / "cluster.yaml", REPO / "k8s" / "rayjob.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
    leaks = [f"{f.name}: {m.group(0)}" for f in files for m in secret.finditer(f.read_text())]
    assert not leaks


def test_a_submitted_job_carries_the_hub_token_from_the_environment_and_uploads_no_environment(monkeypatch):
    from prefscale.submit import job_runtime_env

    monkeypatch.setenv("HF_TOKEN", "hf_from_the_shell")
    env = job_runtime_env()
    assert env["env_vars"]["HF_TOKEN"] == "hf_from_the_shell" and env["working_dir"] == str(REPO)
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    monkeypatch.delenv("HF_TOKEN")
    assert "HF_TOKEN" not in job_runtime_env()["env_vars"]


def test_the_clusters_prefscales_files_start_are_closed_by_token_authentication():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert all(c.startswith("RAY_AUTH_MODE=token ray start") for c in commands if "ray start" in c)
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # the token reaches every node
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    makefile = (REPO / "Makefile").read_text()
    assert "RAY_AUTH_MODE" not in makefile  # only prefscale's own in-process Ray runs without auth (ray_runtime.ensure_ray)
