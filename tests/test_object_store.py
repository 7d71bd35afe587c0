"""An s3:// run directory, end to end against a local S3-compatible server (moto's server mode):
every stage of a recipe with a teacher, pseudolabels and an averaged student, then predict from
the bucket. Nothing of the run lands on local disk but the nodes' caches."""

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_commands

from prefscale.io import exists, finished, listdir, read_json

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_every_stage_and_predict_work_with_the_run_directory_in_a_bucket(s3_bucket, tmp_path, battles_path, alpacaeval, tiny_bert_path):
    run = f"{s3_bucket}/runs/tiny"
    small = {"model": {"path": tiny_bert_path}, "max_rows": 16, "batch_size": 8, "checkpoint_every": 100, "max_length": 32,
             "workers": 1, "cpus_per_worker": 0.5, "tta": False}
    config = {
        "name": "tiny", "output_dir": run, "data": {"train": [battles_path], "unlabeled": str(alpacaeval), "folds": 3},
        "pairs": {"max_instructions": 1}, "members": {"features": {"kind": "features", "params": {"max_iter": 20}}},
        "train": {"teacher": {**small, "average": "none"},
                  "student": {**small, "distill": {"teachers": ["teacher"]}, "pseudolabels": True, "average": "exact"}},
        "pseudolabel": {"rows": 16},
        "stack": {"members": ["features", "student"], "tune_samples": 10, "leave_one_source_out": False},
        "score": {"cpus_per_actor": 0.5, "format_cpus": 0.25, "pack_models": True},
        "ray": {"num_cpus": 2, "object_store_mb": 512},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    checked, summary, predicted = run_commands([["doctor", "--config", str(tmp_path / "tiny.yaml")],  # writes a marker from every node
                                                ["run", "--config", str(tmp_path / "tiny.yaml")],
                                                ["predict", "--run-dir", run, "--input", battles_path, "--out", str(tmp_path / "sub.csv")]],
                                               cwd=tmp_path)
    assert checked["problems"] == [] and checked["run_dir"] == run

    battles = pq.read_table(f"{run}/battles.parquet").column("id").to_pylist()
    for name in ("teacher", "student"):
        assert sorted(pq.read_table(f"{run}/oof/{name}.parquet").column("id").to_pylist()) == sorted(battles)
        assert [finished(f"{run}/models/{name}/fold{k}/adapter") for k in range(3)] == [True] * 3  # uploaded whole, marker last
    assert finished(f"{run}/models/student/averaged") and exists(f"{run}/pseudolabels.parquet")
    assert summary["stages"]["train:student"]["averaged_model"]["folds"] == 3
    # Each fold's model, optimizer and batches are released before the next (all three folds run in one
    # worker): from the second fold on (the first one imports the model code), a fold starts within 10%
    # of the memory the second started with.
    starts = [f["rss_at_start_gib"] for f in summary["stages"]["train:teacher"]["folds"]]
    assert len(starts) == 3 and starts[2] <= 1.10 * starts[1], starts
    assert summary["stages"]["pseudolabel"]["pseudolabeled"] > 0
    assert exists(f"{run}/report/report.md") and exists(f"{run}/manifest.json") and "ray_train" in listdir(run)
    assert read_json(f"{run}/summary.json")["name"] == "tiny"
    submission = pd.read_csv(tmp_path / "sub.csv")
    assert len(submission) == predicted["submission_rows"] == len(battles)
    assert not any(p.name == "runs" for p in tmp_path.iterdir()), "nothing of the run was written locally"
