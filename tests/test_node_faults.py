"""Losing a whole worker node during a scoring job costs time, not rows: the job finishes, or a
rerun scores only the missing ids, and the output holds every input id exactly once. Before the
kill, the job's scorer actors run on both nodes (a Ray Data job spans the cluster)."""

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import submit_job, wait_job

from prefscale.io import write_table

pytestmark = pytest.mark.slow


def score_config(path: Path, model: str, actors: int) -> Path:
    config = {"name": "faults", "data": {"train": ["unused"]}, "text": {"max_length": 64}, "ray": {"address": "auto"},
              "score": {"models": [{"name": "tiny", "path": model}], "actors": actors, "cpus_per_actor": 1.0, "format_cpus": 0.2,
                        "block_rows": 8, "threads_per_actor": 1, "tta": True, "part_rows": 16}}
    path.write_text(yaml.safe_dump(config))
    return path


def last_json_line(logs: str) -> dict:
    return json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])


def test_killing_a_worker_node_mid_scoring_loses_and_duplicates_no_row(two_node_cluster, battles_path, tiny_bert_path, tmp_path):
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    one = pq.read_table(battles_path)  # 200 battles, eight times under new ids: long enough to be killed mid-pass on a fast day
    battles = pa.concat_tables([one.set_column(one.schema.get_field_index("id"), "id", pc.add(one["id"], copy * 10**9)) for copy in range(8)])
    write_table(battles, tmp_path / "battles.parquet")
    scores = tmp_path / "scores"
    command = f"{sys.executable} ray_jobs/score.py --input {tmp_path / 'battles.parquet'} --out {scores} --json --config "
    client, job = submit_job(two_node_cluster, command + str(score_config(tmp_path / "two.yaml", tiny_bert_path, actors=2)))
    deadline = time.time() + 600  # a busy shared machine has taken 5 minutes to start the job
    while not list(scores.glob("part-*.parquet")):  # kill once rows are being written
        assert time.time() < deadline and client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)[-3000:]
        time.sleep(0.2)
    deadline = time.time() + 120
    scorer_nodes = set()
    while len(scorer_nodes) < 2 and time.time() < deadline:  # the pool's second actor may still be starting
        scorer_nodes = {a.node_id for a in list_actors(address=two_node_cluster.dashboard, detail=True, limit=1000)
                        if "ModelScorer" in (a.class_name or "") and a.state == "ALIVE"}
    assert len(scorer_nodes) == 2, "the scorer actors should run on both nodes"
    assert two_node_cluster.kill_worker_node() > 0
    assert pq.read_table(scores).num_rows < battles.num_rows, "the node must die while rows are still being scored"
    status = wait_job(client, job, 60)
    if status != JobStatus.SUCCEEDED:  # the pool may wait for its lost actor's CPU: stop it and rerun on what is left
        if status is None:
            client.stop_job(job)
            wait_job(client, job, 60)
        done_before = pq.read_table(scores).num_rows
        assert 0 < done_before < battles.num_rows
        client, rerun = submit_job(two_node_cluster, command + str(score_config(tmp_path / "one.yaml", tiny_bert_path, actors=1)), nodes=1)
        assert wait_job(client, rerun, 300) == JobStatus.SUCCEEDED, client.get_job_logs(rerun)[-3000:]
        summary = last_json_line(client.get_job_logs(rerun))["stages"]["score"]
        assert summary["already_done"] == done_before and summary["scored"] == battles.num_rows - done_before
    ids = pq.read_table(scores).column("id").to_pylist()
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(battles.column("id").to_pylist())
