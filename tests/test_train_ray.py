"""K-fold training on a real local Ray Train cluster, with a worker killed mid-run."""

import os

import pyarrow.parquet as pq
import pytest

from conftest import ProcessKiller
from prefscale.config import Config
from prefscale.io import write_table

pytestmark = pytest.mark.slow


def test_killed_worker_resumes_from_checkpoint_and_every_oof_row_appears_once(ray_local, battles_path, tiny_bert_path, tmp_path):
    from prefscale.train.kfold import train_run

    from prefscale.data.folds import assign_folds

    table = assign_folds(pq.read_table(battles_path).slice(0, 96), 3)
    write_table(table, tmp_path / "battles.parquet")
    folds = sorted(set(table.column("fold").to_pylist()))[:2]
    config = Config.model_validate({
        "name": "t", "output_dir": str(tmp_path), "data": {"train": ["unused"]}, "text": {"max_length": 48},
        "score": {"block_rows": 32, "cpus_per_actor": 0.5, "format_cpus": 0.25, "threads_per_actor": 1},
        "train": {"teacher": {"model": {"path": tiny_bert_path}, "folds": folds, "epochs": 6, "batch_size": 8, "checkpoint_every": 2,
                              "workers": 2, "cpus_per_worker": 0.5, "max_failures": 3, "oof_tta": False, "average": "exact"}},
    })
    first_checkpoint = lambda: bool(list((tmp_path / "ray_train" / f"teacher-fold{folds[0]}").glob("checkpoint_*")))
    with ProcessKiller("RayTrainWorker", ready=first_checkpoint) as killer:
        summary = train_run(config, "teacher", log=lambda line: None)
    assert killer.killed, "no training worker was killed"
    oof = pq.read_table(tmp_path / "oof" / "teacher.parquet")
    expected = sorted(i for i, f in zip(table.column("id").to_pylist(), table.column("fold").to_pylist()) if f in folds)
    assert sorted(oof.column("id").to_pylist()) == expected  # every held-out row exactly once
    assert summary["oof_rows"] == len(expected)
    assert os.path.exists(tmp_path / "models" / "teacher" / "averaged" / "model.safetensors")
