"""GPU stages on a cluster whose GPU node type starts at zero nodes (Ray's fake autoscaling cluster,
logical GPUs): the stage asks, the autoscaler adds a node, the stage finishes; a request no node
type can meet ends, after ray.scale_up_timeout_s, in one line naming what never came."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def prefscale(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "prefscale.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def gpu_nodes(address: str) -> list[dict]:
    code = ("import json, ray\nray.init(address=%r, log_to_driver=False)\n"
            "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('GPU')]))") % address
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_gpu_recipe_scales_a_node_up_from_zero_and_an_impossible_ask_fails_in_one_line(autoscaling_cluster, tmp_path, battles_path):
    assert gpu_nodes(autoscaling_cluster) == [], "the cluster starts without a GPU node"

    # More GPUs than the node type can ever give (one node of 2): refused after the deadline, in one line.
    impossible = {"name": "too-big", "output_dir": str(tmp_path / "too-big"), "data": {"train": [battles_path], "folds": 3},
                  "train": {"t": {"workers": 3, "use_gpu": True, "accelerator_type": "H100", "cpus_per_worker": 0.1, "folds": [0]}},
                  "ray": {"address": autoscaling_cluster, "rehearse_gpus": True, "scale_up_timeout_s": 20}, "tracking": {"enabled": False}}
    (tmp_path / "too-big.yaml").write_text(yaml.safe_dump(impossible))
    result = prefscale(["train", "--config", str(tmp_path / "too-big.yaml")], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("prefscale: error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "train.t's 3 workers asked the cluster for" in errors[0] and "3 GPU" in errors[0] and "never came within 20 s" in errors[0]

    # The Llama-3 teacher recipe at smoke size, its GPU and accelerator asks kept: the node comes, both stages finish.
    teacher = str(REPO / "configs" / "llama3_70b_teacher.yaml")
    result = prefscale(["run", "--config", teacher, "--smoke", "--address", autoscaling_cluster, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    nodes = gpu_nodes(autoscaling_cluster)
    assert len(nodes) == 1 and nodes[0].get("accelerator_type:H100") == 1, "the autoscaler added the H100 node type's node"
    run = tmp_path / "runs" / "smoke" / "arena" / "run"
    battles = pq.read_table(run / "battles.parquet").column("id").to_pylist()
    assert sorted(pq.read_table(run / "oof" / "llama3_70b.parquet").column("id").to_pylist()) == sorted(battles)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stages"]["train:llama3_70b"]["oof_rows"] == len(battles)
