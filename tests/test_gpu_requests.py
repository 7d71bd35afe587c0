"""A scorer or training worker given a GPU that it cannot see fails at once, in one line naming
the node, instead of falling back to the CPU. Proven on a local Ray that declares logical GPUs
(this machine has none, which is exactly what a misconfigured GPU node looks like)."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from prefscale.data.folds import assign_folds
from prefscale.io import write_table

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_cli(tmp_path: Path, config: dict, *argv: str) -> tuple[int, str]:
    """Exit code and the one error line of a prefscale command."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", *argv, "--config", str(path), "--json"], capture_output=True, text=True,
                            cwd=REPO, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("prefscale: error: ")]  # Ray's worker logs interleave
    return result.returncode, errors[-1] if errors else result.stderr[-3000:]


def gpu_config(tmp_path: Path, model: str, **sections) -> dict:
    return {"name": "gpu", "output_dir": str(tmp_path / "run"), "data": {"train": ["unused"]}, "text": {"max_length": 32},
            "ray": {"num_cpus": 2, "num_gpus": 2}, **sections}


def test_gpu_scorers_on_a_node_without_cuda_fail_in_one_line_and_pools_are_sized_by_gpus(tmp_path, battles_path, tiny_bert_path):
    write_table(pq.read_table(battles_path).slice(0, 16), tmp_path / "b.parquet")
    score = {"models": [{"name": "tiny", "path": tiny_bert_path}], "cpus_per_actor": 0.5, "format_cpus": 0.25, "block_rows": 8, "gpus_per_actor": 1}
    code, line = run_cli(tmp_path, gpu_config(tmp_path, tiny_bert_path, score={**score, "actors": 3}), "score", "--input", str(tmp_path / "b.parquet"))
    assert code == 2 and "need 2.5 CPUs and 3 GPUs at once but the cluster has 2 and 2" in line, line
    code, line = run_cli(tmp_path, gpu_config(tmp_path, tiny_bert_path, score={**score, "actors": 2}), "score", "--input", str(tmp_path / "b.parquet"))
    assert code == 2 and line.startswith("prefscale: error: a scorer actor (score.gpus_per_actor > 0) was given a GPU but node "), line
    assert "sees no CUDA device" in line
    assert not list((tmp_path / "run").rglob("part-*.parquet")), "nothing was scored on the CPU"


def test_gpu_training_workers_on_a_node_without_cuda_fail_in_one_line(tmp_path, battles_path, tiny_bert_path):
    (tmp_path / "run").mkdir()
    write_table(assign_folds(pq.read_table(battles_path).slice(0, 48), 2), tmp_path / "run" / "battles.parquet")
    train = {"teacher": {"model": {"path": tiny_bert_path}, "folds": [0], "use_gpu": True, "workers": 2, "cpus_per_worker": 0.5,
                         "max_failures": 0, "batch_size": 8}}
    code, line = run_cli(tmp_path, gpu_config(tmp_path, tiny_bert_path, train=train), "train")
    assert code == 2 and line.startswith("prefscale: error: a training worker of train.teacher (use_gpu: true) was given a GPU but node "), line
    assert "sees no CUDA device" in line and not (tmp_path / "run" / "models").exists()
