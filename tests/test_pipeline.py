"""The main job end to end: real data, a real local Ray, the shipped MiniLM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_main_job_runs_every_stage(tmp_path, kaggle_sample, human_pairs, alpacaeval):
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["data"]["train"] = [str(human_pairs), str(kaggle_sample)]
    config["data"]["unlabeled"] = str(alpacaeval)
    config["pairs"]["max_instructions"] = 2
    config["score"]["rows"] = 48
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "run", "--config", str(path), "--out", str(out), "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    stages = summary["stages"]
    assert stages["validate:arena_kaggle_sample"]["rows"] == 806
    assert stages["split"]["kept"] == pq.read_metadata(out / "battles.parquet").num_rows
    assert stages["pairs"]["pairs_written"] == 2 * 2016
    scores = pq.read_table(out / "scores" / "smoke.parquet")
    assert scores.num_rows == 48 == len(set(scores.column("id").to_pylist()))
    assert 0.9 < stages["score"]["log_loss"] < 1.4  # an untrained head: close to uniform
    assert set(summary["timings_s"]) >= {"split", "pairs", "score"}
    assert json.loads((out / "summary.json").read_text())["name"] == "local"
