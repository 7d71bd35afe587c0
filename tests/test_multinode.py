"""A real two-node Ray cluster on this machine: `ray start --head` with the dashboard, a second
`ray start --address`, a training job submitted through the Job Submission SDK, one Ray Train
worker on each node (DDP over gloo between the nodes). Scoring across nodes is asserted by the
node-fault test, on the same kind of cluster."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import JOB_RUNTIME_ENV, RAY, wait_job

from prefscale.data.folds import assign_folds
from prefscale.io import write_table

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_training_job_runs_one_worker_on_each_node(two_node_cluster, battles_path, tiny_bert_path, tmp_path):
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    run_dir = tmp_path / "run"
    battles = assign_folds(pq.read_table(battles_path).slice(0, 48), 2)
    write_table(battles, run_dir / "battles.parquet")
    # 1.5 CPUs per worker on 2-CPU nodes: two workers cannot share a node, so Ray Train spreads them.
    config = {"name": "mn", "output_dir": str(run_dir), "data": {"train": ["unused"]}, "text": {"max_length": 32}, "ray": {"address": "auto"},
              "score": {"cpus_per_actor": 0.5, "format_cpus": 0.25, "block_rows": 16, "threads_per_actor": 1},
              "train": {"teacher": {"model": {"path": tiny_bert_path}, "folds": [0], "workers": 2, "cpus_per_worker": 1.5, "batch_size": 8,
                                    "max_rows": 16, "checkpoint_every": 100, "tta": False, "average": "none", "max_failures": 0}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    # Submitted as the README says, with the repository as the job's working directory (.gitignore keeps
    # .venv and runs out of the upload). Ray unpacks that directory again, deleting the old copy, when it
    # next creates the job's runtime environment; ray_jobs/_path.py runs the driver from its own copy.
    from ray.job_submission import JobSubmissionClient

    submitted = subprocess.run([RAY, "job", "submit", "--address", two_node_cluster.dashboard, "--no-wait", "--working-dir", ".",
                                "--runtime-env-json", json.dumps({"env_vars": JOB_RUNTIME_ENV["env_vars"]}), "--",
                                "python", "ray_jobs/train.py", "--config", str(tmp_path / "c.yaml"), "--json"],
                               capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    job = re.search(r"Job '([^']+)' submitted successfully", submitted.stdout + submitted.stderr)[1]
    client = JobSubmissionClient(two_node_cluster.dashboard)
    status = wait_job(client, job, 420)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    workers = [a for a in list_actors(address=two_node_cluster.dashboard, detail=True, limit=1000) if "RayTrainWorker" in (a.class_name or "")]
    assert len(workers) == 2 and len({a.node_id for a in workers}) == 2, "one training worker on each node"
    oof = pq.read_table(run_dir / "oof" / "teacher.parquet")
    held_out = sorted(i for i, f in zip(battles.column("id").to_pylist(), battles.column("fold").to_pylist()) if f == 0)
    assert sorted(oof.column("id").to_pylist()) == held_out  # the fold's OOF rows, each once


def test_a_cluster_with_token_authentication_refuses_a_client_without_the_token(token_cluster, tmp_path, battles_path):
    """The clusters prefscale's files start are closed (Ray token auth): joining with the token works,
    without it is one line."""
    address, token = token_cluster
    config = {"name": "closed", "output_dir": str(tmp_path / "run"), "data": {"train": [battles_path]}, "ray": {"address": address}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}

    def doctor(**env):
        return subprocess.run([sys.executable, "-m", "prefscale.cli", "doctor", "--config", str(tmp_path / "c.yaml"), "--json"],
                              capture_output=True, text=True, cwd=REPO, timeout=180, env={**base, "HOME": str(tmp_path), **env})

    with_token = doctor(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    assert with_token.returncode == 0, with_token.stderr[-2000:]
    assert json.loads(with_token.stdout.strip().splitlines()[-1])["cluster"]["joined"] is True
    without = doctor(RAY_AUTH_MODE="token")  # asks for auth, has no token
    refused = [line for line in without.stderr.splitlines() if "requires token authentication" in line]
    assert without.returncode == 2 and len(refused) == 1 and "set RAY_AUTH_MODE=token and its token" in refused[0], without.stderr[-2000:]
