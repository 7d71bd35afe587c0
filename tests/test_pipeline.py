"""The main job end to end: real data, a real local Ray (Train and Data), real models."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_commands

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_main_job_runs_every_stage(tmp_path, kaggle_sample, human_pairs, alpacaeval, tiny_bert_path):
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    human = pq.read_table(human_pairs)  # a third of each source: every stage's shape, at a test's cost
    human = human.take(np.arange(0, human.num_rows, 3)) if human.num_rows > 3000 else human
    pq.write_table(human, tmp_path / "human_pairs.parquet")
    config["data"]["train"] = [str(tmp_path / "human_pairs.parquet"), str(kaggle_sample)]
    config["data"]["unlabeled"] = str(alpacaeval)
    config["pairs"]["max_instructions"] = 1
    for run in config["train"].values():  # the recipe's shape, at test size: one fold, a tiny model
        run.update({"model": {"path": tiny_bert_path}, "folds": [0], "max_rows": 64, "checkpoint_every": 100, "max_length": 48})
    config["train"]["teacher"]["workers"] = 1
    config["pseudolabel"]["rows"] = 64
    config["score"]["precision"] = "int8"  # int8 replicas through held-out folds, pseudolabels, predict, compare and the cascade
    config["stack"]["tune_samples"] = 30
    del config["stack"]["members"]  # the default: members and runs over every fold
    config["members"]["features"]["params"] = {"max_iter": 60}  # the recipe's members, lighter
    config["members"]["tfidf"]["params"] = {"max_features": 3000}
    config["cascade"] = {"stages": ["features", "cheap_ensemble", "student", "ensemble"], "max_sent": 0.5}  # a member, the cheap stack, a neural run, the stack
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "run", "--config", str(path), "--run-dir", str(out), "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=900, env=_without_tracking_server())
    assert result.returncode == 0, result.stderr[-3000:]
    # Quiet by default (--verbose shows them): no Ray INFO lines, Train notices or library deprecations among the progress lines.
    noise = re.compile(r"\bINFO\b|Warning: |Attempting to start training worker group|Checkpoint successfully created|Reporting training result|kernels-community")
    noisy = [line[:200] for line in result.stderr.splitlines() if noise.search(line)]
    assert noisy == [], "\n".join(noisy)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    stages = summary["stages"]
    sample_rows = pq.read_metadata(kaggle_sample).num_rows
    assert stages["validate:arena_kaggle_sample"]["rows"] == sample_rows
    battles = pq.read_table(out / "battles.parquet")
    assert stages["split"]["kept"] == battles.num_rows
    protocols = battles.select(["dataset", "ties"]).to_pandas().fillna({"dataset": "arena"}).groupby("dataset")["ties"].unique()
    assert {d: list(p) for d, p in protocols.items()} == {"arena": ["allowed"], "hh_rlhf_harmless_test": ["none"], "llmeval2": ["allowed"],
                                                          "pandalm_testset": ["allowed"]}
    generators = pq.read_table(alpacaeval).to_pandas().groupby("instruction", sort=False)["generator"].nunique().iloc[0]
    assert stages["pairs"]["pairs_written"] == generators * (generators - 1) // 2
    fold0 = sum(1 for f in battles.column("fold").to_pylist() if f == 0)
    for name in ("teacher", "student"):
        oof = pq.read_table(out / "oof" / f"{name}.parquet")
        assert oof.num_rows == len(set(oof.column("id").to_pylist())) == fold0 == stages[f"train:{name}"]["oof_rows"]
    assert stages["pseudolabel"]["battles"] == min(64, stages["pairs"]["pairs_written"])
    assert summary["timings_s"]["pseudolabel"] >= max(scored["seconds"] for scored in stages["pseudolabel"]["scoring"].values())
    assert set(summary["timings_s"]) >= {"split", "pairs", "member:features", "member:tfidf", "train:teacher", "train:student", "pseudolabel",
                                         "stack", "report"}
    assert json.loads((out / "summary.json").read_text())["name"] == "local"
    for member in ("features", "tfidf"):  # cheap members cover every fold, so they (not the one-fold runs) are stacked
        oof = pq.read_table(out / "oof" / f"{member}.parquet")
        assert sorted(oof.column("id").to_pylist()) == sorted(battles.column("id").to_pylist())
    assert stages["train:student"]["swap_flip_share"] is None  # scored in one order: no flip to measure (test_score_engine measures one)
    stack = stages["stack"]
    assert stack["members"] == ["features", "tfidf"]
    assert stack["nested_cv"]["final"] < min(stack["member_log_loss"].values())  # better than the best member, not only the worst
    assert abs(stack["blend_search"]["tune_minus_powell"]) < 0.01
    report = json.loads((out / "report" / "report.json").read_text())
    sources = {"arena", "hh_rlhf_harmless_test", "llmeval2", "pandalm_testset"}
    assert all(0 <= report["table"][m]["swap_flip_share"] < 0.5 for m in ("features", "tfidf"))  # trained on both orders
    assert set(report["table"]["features"]["per_dataset"]) == set(report["table"]["source prior (out of fold)"]["per_dataset"]) == sources
    transfer = report["leave_one_source_out"]
    models = {"features", "tfidf", "ensemble (cheap members)", "ensemble, unseen-source mixture", "prior (other sources)"}
    assert set(transfer["per_source"]) == sources and set(transfer["mean"]) == set(transfer["winner_given_not_tie"]["mean"]) == models
    assert 0 <= transfer["unseen_weight"] <= 1 and set(transfer["inner_weight"]) == sources
    assert "## Leave one source out" in (out / "report" / "report.md").read_text()
    reliance = report["style_reliance"]  # humans, each stacked member and the ensemble, on the same battles and resamples
    assert set(reliance["sets"]) == {"humans (labels)", "features", "tfidf", "ensemble (final)"}
    assert reliance["sets"]["humans (labels)"]["length"]["ratio_to_reference"] == 1.0
    assert "## Style reliance" in (out / "report" / "report.md").read_text()
    assert (out / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    _check_tracked(out, summary)

    submission = tmp_path / "submission.csv"
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "predict", "--run-dir", str(out), "--input", str(kaggle_sample),
                             "--out", str(submission), "--json"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = json.loads(result.stdout.strip().splitlines()[-1])
    rows = pd.read_csv(submission)
    assert list(rows.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert len(rows) == predicted["submission_rows"] == sample_rows and rows["id"].is_unique  # a submission names every id
    assert predicted["salvaged_json"] > 0.15 * sample_rows and predicted["rejected"] == 0 and predicted["predicted"] == sample_rows  # truncated JSON read as raw text
    np.testing.assert_allclose(rows[["winner_model_a", "winner_model_b", "winner_tie"]].sum(axis=1), 1.0, atol=1e-6)
    assert 0.5 < predicted["log_loss"] < 1.5

    _check_compare(out, kaggle_sample, rows.set_index("id"))

    forced = tmp_path / "forced.csv"  # the user states the new battles are forced choice: no mass on tie
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "predict", "--run-dir", str(out), "--input", str(kaggle_sample),
                             "--out", str(forced), "--ties", "none", "--json"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, forced_summary = pd.read_csv(forced), json.loads(result.stdout.strip().splitlines()[-1])
    assert len(rows) == sample_rows and (rows["winner_tie"] == 0).all() and np.allclose(rows["winner_model_a"] + rows["winner_model_b"], 1.0)
    # The sample's tie-labeled rows contradict --ties none: a label never changes a prediction, so they are predicted
    # by the ensemble like every other row, and only their score is left out, counted.
    assert forced_summary["unscored_labels"] > 0.15 * sample_rows and forced_summary["rejected"] == forced_summary["predicted_at_prior"] == 0
    assert forced_summary["scored_rows"] == sample_rows - forced_summary["unscored_labels"]
    sample = pq.read_table(kaggle_sample, columns=["id", "winner_tie"]).to_pandas().set_index("id")
    tied = rows.set_index("id").loc[sample.index[sample["winner_tie"] == 1]]
    assert tied["winner_model_a"].std() > 0.01  # the model's predictions, not one prior for all

    _check_cascade(out, tmp_path, alpacaeval, stages["pairs"]["pairs_written"])

    member = out / "members" / "tfidf.skops"  # the finished run is sealed: a changed file is named, not mixed in
    member.write_bytes(member.read_bytes() + b"\0")
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "predict", "--run-dir", str(out), "--input", str(kaggle_sample),
                             "--out", str(tmp_path / "tampered.csv")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 2 and "changed: members/tfidf.skops" in result.stderr and not (tmp_path / "tampered.csv").exists()


def _check_cascade(out: Path, tmp_path: Path, alpacaeval: Path, pairs: int) -> None:
    """Thresholds fitted in the report; every battle decided exactly once, by a recorded stage;
    an interrupted output resumes by id; a long table goes to a leaderboard in one command."""
    fitted = json.loads((out / "report" / "cascade.json").read_text())
    stages = ["features", "cheap_ensemble", "student", "ensemble"]
    assert fitted["stages"] == stages and len(fitted["curve"]) == 101
    assert 0 < fitted["battles"] < pq.read_metadata(out / "battles.parquet").num_rows  # where the one-fold student has OOF
    assert "## Uncertainty cascade" in (out / "report" / "report.md").read_text()
    scored = tmp_path / "cascade"
    common = ["cascade", "--run-dir", str(out), "--input", str(out / "unlabeled_pairs.parquet"), "--out", str(scored), "--send-fraction", "0.3"]
    dump = tmp_path / "dump.parquet"
    long = pq.read_table(alpacaeval).to_pandas()
    long = long[long["instruction"].isin(long["instruction"].unique()[:2])]
    long.to_parquet(dump)
    first, rest, labels, via_score, ranked = run_commands([
        [*common, "--rows", "500"],
        common,  # as after an interruption: only the rest is scored
        # The cascade feeds pseudolabels (its final prediction is one model), and `score --cascade` runs it too.
        ["pseudolabel", "--config", str(out / "config.yaml"), "--run-dir", str(tmp_path / "next"), "--input", str(out / "unlabeled_pairs.parquet"),
         "--scores", str(scored), "--out", str(tmp_path / "pl.parquet")],
        ["score", "--config", str(out / "config.yaml"), "--run-dir", str(out), "--cascade", "--input", str(out / "unlabeled_pairs.parquet"),
         "--out", str(tmp_path / "via_score"), "--rows", "200", "--send-fraction", "0.3"],
        ["leaderboard", "--run-dir", str(out), "--battles", str(dump), "--out", str(tmp_path / "ranked"), "--bootstrap", "20"],
    ])
    assert first["scored"] == 500 and all(first["decided_by_stage"][s] > 0 for s in stages), first["decided_by_stage"]
    assert rest["already_done"] == 500 and rest["scored"] == pairs - 500 and rest["output_rows"] == rest["unique_ids"] == pairs
    table = pd.read_parquet(scored)
    assert sorted(table["id"]) == sorted(pq.read_table(out / "unlabeled_pairs.parquet", columns=["id"]).column("id").to_pylist())
    reached = {stage: stages[: k + 1] for k, stage in enumerate(stages)}
    for stage, group in table.groupby("stage"):
        for name in stages:
            assert group[f"{name}_prob_a"].notna().all() == (name in reached[stage]) and group[f"{name}_prob_a"].isna().all() == (name not in reached[stage])
        np.testing.assert_allclose(group[["prob_a", "prob_b", "prob_tie"]].to_numpy(), group[[f"{stage}_prob_{c}" for c in ("a", "b", "tie")]].to_numpy())
    assert 0.25 < (table["stage"] != "features").mean() < 0.35 and table["error"].isna().all()

    labels = labels["stages"]["pseudolabel"]
    head = yaml.safe_load((out / "config.yaml").read_text())["pseudolabel"]["rows"]  # the run's slice of the dump
    assert labels["pseudolabeled"] > 0 and labels["pseudolabeled"] + sum(labels["rejected"].values()) == labels["battles"] == head
    assert "unscored" not in labels["rejected"]
    soft = pd.read_parquet(tmp_path / "pl.parquet").set_index("id").join(table.set_index("id"))
    np.testing.assert_allclose(soft[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), soft[["prob_a", "prob_b", "prob_tie"]].to_numpy(), atol=1e-6)
    assert via_score["scored"] == via_score["unique_ids"] == 200 and set(pd.read_parquet(tmp_path / "via_score")["stage"]) <= set(stages)

    generators = long.groupby("instruction")["generator"].nunique()
    assert ranked["pairs"]["pairs_written"] == ranked["cascade"]["output_rows"] == ranked["leaderboard"]["battles"] == int((generators * (generators - 1) // 2).sum())
    board = pd.read_parquet(tmp_path / "ranked" / "leaderboard.parquet")
    assert len(board) == ranked["leaderboard"]["models"] == long["generator"].nunique() and (board["rating_low"] <= board["rating_high"]).all()

    changed = run_commands([[*common[:-1], "0.5"]])[0]  # another routing never reuses the old output
    assert changed["already_done"] == 0 and changed["output_rows"] == pairs


def _without_tracking_server() -> dict[str, str]:
    """The job's environment with the default tracking store (a SQLite file in the run directory)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _check_tracked(out: Path, summary: dict) -> None:
    """The run reads back through MLflow's client: config as params, figures as metrics, nested
    stage / fold / Tune-trial runs, the report and config as artifacts."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("prefscale")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1 and top[0].info.status == "FINISHED" and top[0].info.run_name == "local:run"
    job = top[0]
    assert job.data.params["train.teacher.max_rows"] == "64" and job.data.params["stack.tune_samples"] == "30"
    assert job.data.metrics["stages/stack/nested_cv/final"] == summary["stages"]["stack"]["nested_cv"]["final"]
    assert job.data.metrics["stages/report/table/source prior _out of fold_/per_dataset/arena"] > 0
    assert job.data.metrics["timings_s/train:teacher"] == summary["timings_s"]["train:teacher"]
    artifacts = {a.path for a in client.list_artifacts(job.info.run_id)}
    assert artifacts >= {"config.yaml", "summary.json", "report.md", "report.json", "reliability.png"}
    children = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    stages = {r.info.run_name: r for r in children[job.info.run_id]}
    assert set(stages) >= {"data", "members", "train", "pseudolabel", "students", "stack", "report"}
    assert all(r.info.status == "FINISHED" for r in stages.values())
    folds = children[stages["train"].info.run_id]
    assert [r.info.run_name for r in folds] == ["train:teacher fold 0"]
    assert all(r.info.status == "FINISHED" and r.info.end_time for r in runs if r.info.run_name.endswith(" fold 0"))  # ended with their parent
    trials = children[stages["stack"].info.run_id]  # Ray Tune's MLflowLoggerCallback, one run per blend trial
    assert len(trials) == 30 and all("log_loss" in t.data.metrics for t in trials)


def _check_compare(out: Path, kaggle_sample: Path, submission: pd.DataFrame) -> None:
    """`prefscale compare` gives predict's probabilities for the same battle, each member's too, and
    names a battle it cannot predict."""
    sample = pq.read_table(kaggle_sample).to_pandas()
    battle = next(row for row in sample.itertuples() if _parses(row))
    lines = [json.dumps({"id": int(battle.id), **{f: json.loads(getattr(battle, f)) for f in ("prompt", "response_a", "response_b")}}),
             json.dumps({"id": 7, "prompt": "", "response_a": "", "response_b": ""})]
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "compare", "--run-dir", str(out), "--json"], input="\n".join(lines),
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    compared, empty = json.loads(result.stdout.strip().splitlines()[-1])["battles"]
    expected = submission.loc[int(battle.id), ["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(dtype=float)
    np.testing.assert_allclose([compared["ensemble"][c] for c in ("a", "b", "tie")], expected, atol=1e-4)
    assert set(compared["members"]) == {"features", "tfidf"}
    assert empty == {"id": 7, "rejected": "empty_text"}
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "compare", "--run-dir", str(out), "--prompt", "What is 2+2?",
                             "--a", "4", "--b", "It is four, because two plus two makes four."], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and "ensemble" in result.stdout and "tfidf" in result.stdout, result.stderr[-2000:]


def _parses(row) -> bool:
    try:
        return all(isinstance(json.loads(getattr(row, f)), list) for f in ("prompt", "response_a", "response_b"))
    except json.JSONDecodeError:
        return False
