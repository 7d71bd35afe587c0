"""A real two-node Ray cluster on this machine: `ray start --head` with the dashboard, a second
`ray start --address`, a job submitted through the Job Submission SDK, its actors on both nodes."""

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import submit_job, wait_job

from prefscale.io import write_table

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_job_submitted_to_a_two_node_cluster_runs_on_both_nodes(two_node_cluster, battles_path, tiny_bert_path, tmp_path):
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    write_table(pq.read_table(battles_path).slice(0, 64), tmp_path / "battles.parquet")
    # Each 2-CPU node keeps a whole CPU free beside its scorer: Ray Data's repartition tasks need one.
    config = {"name": "mn", "data": {"train": ["unused"]}, "text": {"max_length": 48}, "ray": {"address": "auto"},
              "score": {"models": [{"name": "tiny", "path": tiny_bert_path}], "actors": 2, "cpus_per_actor": 1.0,
                        "format_cpus": 0.2, "block_rows": 8, "threads_per_actor": 1, "tta": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    client, job = submit_job(two_node_cluster, f"{sys.executable} ray_jobs/score.py --config {tmp_path / 'c.yaml'} "
                                               f"--input {tmp_path / 'battles.parquet'} --out {tmp_path / 'scores'} --json")
    status = wait_job(client, job, 420)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    scores = pq.read_table(tmp_path / "scores")
    assert sorted(scores.column("id").to_pylist()) == sorted(pq.read_table(tmp_path / "battles.parquet").column("id").to_pylist())
    scorers = [a for a in list_actors(address=two_node_cluster.dashboard, detail=True, limit=1000) if "ModelScorer" in (a.class_name or "")]
    assert len({a.node_id for a in scorers}) == 2, "the scorer actors should run on both nodes"
