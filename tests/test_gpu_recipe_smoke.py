"""The three GPU recipes end to end on this CPU through the same code, as a cluster runs them:
the Llama-3 and Qwen2 teachers (QLoRA nf4), then the Gemma-2 student distilled from both and
trained on their pseudolabels, its folds averaged, stacked, and `predict` on its run. `--smoke`
swaps in tiny random models of each architecture, published under the recipes' own hub ids in
the smoke run's hub cache, so hub resolution runs too; the doctor passes on the smoke recipe."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_commands

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"llama3_70b": ("llama3_70b_teacher", "meta-llama/Meta-Llama-3-70B", "LlamaForSequenceClassification"),
           "qwen2_72b": ("qwen2_72b_teacher", "Qwen/Qwen2-72B", "Qwen2ForSequenceClassification"),
           "gemma2_9b": ("gemma2_9b_student", "google/gemma-2-9b", "Gemma2ForSequenceClassification")}
pytestmark = pytest.mark.slow


def test_the_gpu_recipes_chain_end_to_end_on_cpu_under_their_hub_ids(tmp_path):
    recipes = [str(REPO / "configs" / f"{RECIPES[run][0]}.yaml") for run in RECIPES]
    smoke = tmp_path / "runs" / "smoke" / "arena"
    commands = [["doctor", "--config", *recipes, "--smoke"],  # the student's teachers come from the configs before it
                ["run", "--config", *recipes, "--smoke"],  # the whole recipe, one command
                ["predict", "--run-dir", str(smoke / "run"), "--input", str(smoke / "data" / "arena_kaggle_sample.parquet"), "--out", "sub.csv"]]
    # HF_HUB_OFFLINE and the cache come from --smoke, not from here.
    weights_read: list[str] = []
    run_commands(commands, cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("HF_")}, weights_read=weights_read)
    assert weights_read == [], "the driver never reads model weights: training, scoring and merging run in Ray workers"

    run = smoke / "run"
    battles = pq.read_table(run / "battles.parquet").column("id").to_pylist()
    for name, (_, hub_id, architecture) in RECIPES.items():
        oof = pq.read_table(run / "oof" / f"{name}.parquet").column("id").to_pylist()
        assert sorted(oof) == sorted(battles), f"{name}: every battle gets exactly one OOF row"
        published = smoke / "hub" / f"models--{hub_id.replace('/', '--')}"
        assert (published / "refs" / "main").exists(), f"{hub_id} was resolved from the smoke cache"
        fold = run / "models" / name / "fold0"
        assert sorted(os.listdir(fold)) == ["adapter"], "a fold keeps its adapter, never a merged copy of the model"
        assert json.loads((fold / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    averaged = json.loads((run / "models" / "gemma2_9b" / "averaged" / "config.json").read_text())
    assert averaged["architectures"] == [RECIPES["gemma2_9b"][2]]
    scoring = {name: json.loads((run / "models" / name / "scoring.json").read_text()) for name in RECIPES}
    assert [scoring[n]["precision"] for n in RECIPES] == ["nf4", "nf4", "bf16"] and all(s["tta"] for s in scoring.values())
    assert not (run / "models" / "llama3_70b" / "averaged").exists() and (run / "models" / "gemma2_9b" / "averaged").exists()

    summary = json.loads((run / "summary.json").read_text())  # the student's run, the last on this directory
    assert summary["stages"]["train:gemma2_9b"]["averaged_model"]["folds"] == 3
    pseudolabeled = summary["stages"]["pseudolabel"]
    assert sorted(pseudolabeled["scoring"]) == sorted(f"{t}-{k}" for t in ("llama3_70b", "qwen2_72b") for k in range(3))
    assert pseudolabeled["battles"] == 32 and pseudolabeled["pseudolabeled"] > 0, pseudolabeled
    fingerprints = json.loads((run / "fingerprints.json").read_text())
    assert {"output of train:llama3_70b", "output of train:qwen2_72b", "output of pseudolabel"} <= set(fingerprints["train:gemma2_9b"])
    assert (run / "report" / "report.md").exists() and (run / "manifest.json").exists()
    submission = pq.read_table(smoke / "data" / "arena_kaggle_sample.parquet").num_rows
    assert len((tmp_path / "sub.csv").read_text().strip().splitlines()) == submission + 1
