"""The main job end to end: real data, a real local Ray (Train and Data), real models."""

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


def test_main_job_runs_every_stage(tmp_path, kaggle_sample, human_pairs, alpacaeval, tiny_bert_path):
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["data"]["train"] = [str(human_pairs), str(kaggle_sample)]
    config["data"]["unlabeled"] = str(alpacaeval)
    config["pairs"]["max_instructions"] = 1
    for run in config["train"].values():  # the recipe's shape, at test size: one fold, a tiny model
        run.update({"model": {"path": tiny_bert_path}, "folds": [0], "max_rows": 64, "checkpoint_every": 100, "max_length": 48})
    config["train"]["teacher"]["workers"] = 1
    config["pseudolabel"]["rows"] = 64
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "run", "--config", str(path), "--out", str(out), "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=900, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    stages = summary["stages"]
    assert stages["validate:arena_kaggle_sample"]["rows"] == 806
    battles = pq.read_table(out / "battles.parquet")
    assert stages["split"]["kept"] == battles.num_rows
    assert stages["pairs"]["pairs_written"] == 2016
    fold0 = sum(1 for f in battles.column("fold").to_pylist() if f == 0)
    for name in ("teacher", "student"):
        oof = pq.read_table(out / "oof" / f"{name}.parquet")
        assert oof.num_rows == len(set(oof.column("id").to_pylist())) == fold0 == stages[f"train:{name}"]["oof_rows"]
    assert stages["pseudolabel"]["battles"] == 64
    assert set(summary["timings_s"]) >= {"split", "pairs", "train:teacher", "train:student", "pseudolabel"}
    assert json.loads((out / "summary.json").read_text())["name"] == "local"
