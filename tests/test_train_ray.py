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


def test_ray_tune_picks_lr_and_lora_rank_and_training_uses_them(ray_local, battles_path, tiny_bert_path, tmp_path):
    """Trials report held-out log loss at each checkpoint (ASHA's metric); the fold is then
    trained at the best lr and rank: its adapter has the searched rank."""
    import json

    from safetensors.torch import load_file

    from prefscale.data.folds import assign_folds
    from prefscale.train.kfold import train_run

    table = assign_folds(pq.read_table(battles_path).slice(0, 120), 3)
    write_table(table, tmp_path / "battles.parquet")
    fold = sorted(set(table.column("fold").to_pylist()))[0]
    config = Config.model_validate({
        "name": "t", "output_dir": str(tmp_path), "data": {"train": ["unused"]}, "text": {"max_length": 48},
        "score": {"block_rows": 64, "cpus_per_actor": 0.5, "format_cpus": 0.25, "threads_per_actor": 1},
        "train": {"teacher": {"model": {"path": tiny_bert_path}, "folds": [fold], "max_rows": 64, "batch_size": 8, "checkpoint_every": 2,
                              "workers": 1, "cpus_per_worker": 0.5, "oof_tta": False, "average": "none",
                              "tune_samples": 4, "tune_ranks": [2, 4], "tune_eval_rows": 32}},
    })
    summary = train_run(config, "teacher", log=lambda line: None)
    search = json.loads((tmp_path / "tune" / "teacher.json").read_text())
    assert len(search["trials"]) == 4 and all(t["heldout_log_loss"] > 0 for t in search["trials"])
    assert 2e-5 <= search["best"]["lr"] <= 2e-3 and summary["tuned"] == search["best"]
    adapter = load_file(str(tmp_path / "models" / "teacher" / f"fold{fold}" / "adapter" / "trainable.safetensors"))
    ranks = {t.shape[0] for n, t in adapter.items() if "lora_A" in n}
    assert ranks == {search["best"]["r"]}
