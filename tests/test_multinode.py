"""A real two-node Ray cluster on this machine: `ray start --head` with the dashboard, a second
`ray start --address`, a job submitted through the Job Submission SDK, its actors on both nodes."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from prefscale.io import write_table

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Two nodes on one machine must not share their agents' and managers' default ports."""
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
             "node-manager-port", "object-manager-port")
    return [f"--{name}={free_port()}" for name in names] + ["--disable-usage-stats"]


@pytest.fixture
def two_node_cluster():
    temp_dir = tempfile.mkdtemp(prefix="psmn-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", *node_ports()], check=True, env=env, capture_output=True)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=2", *node_ports()], check=True, env=env, capture_output=True)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        # `ray stop` would also stop other Ray instances on the machine; stop only this cluster's.
        for proc in psutil.process_iter(["pid", "cmdline"]):
            command = " ".join(proc.info["cmdline"] or [])
            if temp_dir in command or f":{gcs}" in command:
                try:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submitted_to_a_two_node_cluster_runs_on_both_nodes(two_node_cluster, battles_path, tiny_bert_path, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_nodes

    write_table(pq.read_table(battles_path).slice(0, 64), tmp_path / "battles.parquet")
    # Each 2-CPU node keeps a whole CPU free beside its scorer: Ray Data's repartition tasks need one.
    config = {"name": "mn", "data": {"train": ["unused"]}, "text": {"max_length": 48}, "ray": {"address": "auto"},
              "score": {"models": [{"name": "tiny", "path": tiny_bert_path}], "actors": 2, "cpus_per_actor": 1.0,
                        "format_cpus": 0.2, "block_rows": 8, "threads_per_actor": 1, "tta": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    client = JobSubmissionClient(two_node_cluster)
    deadline = time.time() + 60
    while len([n for n in list_nodes(address=two_node_cluster) if n.state == "ALIVE"]) < 2:
        assert time.time() < deadline, "the second node never joined"
        time.sleep(0.5)
    submit = lambda: client.submit_job(
        entrypoint=f"{sys.executable} ray_jobs/score.py --config {tmp_path / 'c.yaml'} --input {tmp_path / 'battles.parquet'} --out {tmp_path / 'scores'} --json",
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git", "runs", "**/__pycache__"], "env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}},
    )
    while True:  # the head's job agent takes a few seconds to come up after `ray start`
        try:
            job = submit()
            break
        except RuntimeError as exc:
            assert "No available agent" in str(exc) and time.time() < deadline + 60, exc
            time.sleep(1)
    deadline = time.time() + 420
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job did not finish: {client.get_job_logs(job)[-3000:]}"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    scores = pq.read_table(tmp_path / "scores")
    assert sorted(scores.column("id").to_pylist()) == sorted(pq.read_table(tmp_path / "battles.parquet").column("id").to_pylist())
    scorers = [a for a in list_actors(address=two_node_cluster, detail=True, limit=1000) if "ModelScorer" in (a.class_name or "")]
    assert len({a.node_id for a in scorers}) == 2, "the scorer actors should run on both nodes"
