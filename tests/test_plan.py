"""The resource plan: the real architectures counted on the meta device, checked against the shipped
cluster files, refused in one line where a node type cannot hold a process, and calibrated here
against the peak memory of real training workers and scoring actors."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from prefscale.config import Config, load_config
from prefscale.data.folds import assign_folds
from prefscale.io import write_table
from prefscale.plan.hardware import NodeType, file_nodes
from prefscale.plan.resources import check, plan

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("llama3_70b_teacher", "qwen2_72b_teacher", "gemma2_9b_student")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plans(human_pairs) -> dict:
    """Each GPU recipe, reading the real battles instead of its s3 inputs."""
    configs = {name: load_config(REPO / "configs" / f"{name}.yaml") for name in RECIPES}
    return {name: c.model_copy(update={"data": c.data.model_copy(update={"train": [str(human_pairs)], "unlabeled": None})})
            for name, c in configs.items()}


def test_the_real_architectures_are_counted_from_their_published_configs():
    from prefscale.config import LoraConfig
    from prefscale.plan.shapes import size_model

    llama = size_model("meta-llama/Meta-Llama-3-70B", "nf4", LoraConfig(r=64, alpha=128), 1, 2048, True, 16, 2048)
    assert round(llama.parameters / 1e9, 1) == 69.5 and round(llama.trainable / 1e6) == 828  # DESIGN.md's figures
    gemma = size_model("google/gemma-2-9b", "bf16", LoraConfig(r=0), 0, 0, False, 1, 1792)
    assert round(gemma.parameters / 1e9, 2) == 9.24 and gemma.stored_bytes == 4  # published in fp32
    assert 30 < llama.weight_bytes("nf4", training=True) / 2**30 < 40  # 4-bit linears, fp32 embeddings and norms (kbit training)


@pytest.mark.parametrize("cluster_file", ["cluster.yaml", "k8s/rayjob.yaml"])
def test_every_recipe_fits_the_shipped_cluster_files(plans, cluster_file):
    nodes = file_nodes(str(REPO / cluster_file))
    for name, config in plans.items():
        processes = plan(config)
        assert check(processes, nodes, cluster_file) == [], name
        kinds = {(p.stage, p.kind) for p in processes}
        assert ("all", "driver") in kinds and any(kind == "training worker" for _, kind in kinds)
        assert all(p.node_type for p in processes)
        assert all(not n.head for p in processes if p.kind != "driver" and p.gpus_each for n in nodes if n.name == p.node_type)


def _nodes(*extra: NodeType) -> list[NodeType]:
    return [NodeType("head", 8, 32, head=True), *extra]


def test_a_70b_teacher_on_40gb_a100s_is_refused_in_one_line(plans):
    config = plans["llama3_70b_teacher"]
    config = config.model_copy(update={"train": {"llama3_70b": config.train["llama3_70b"].model_copy(update={"accelerator_type": None})},
                                       "score": config.score.model_copy(update={"accelerator_type": None})})
    problems = check(plan(config), _nodes(NodeType("p4d", 96, 1152, 8, "A100-40G", max_nodes=2)), "test.yaml")
    worker = [p for p in problems if "training worker" in p]
    assert len(worker) == 1 and "\n" not in worker[0], problems
    assert worker[0].startswith("train:llama3_70b: a training worker needs ") and "p4d (8 x A100-40G 40 GB" in worker[0]


def test_a_gpu_that_cannot_hold_a_process_must_be_excluded_by_its_accelerator_type(plans):
    """Ray places an unconstrained GPU worker on any GPU node: each must hold it, or the type must be named."""
    config = plans["llama3_70b_teacher"]
    run = config.train["llama3_70b"].model_copy(update={"accelerator_type": None})
    problems = check(plan(config.model_copy(update={"train": {"llama3_70b": run}})),
                     _nodes(NodeType("p4d", 96, 1152, 8, "A100-40G"), NodeType("p5", 192, 2048, 8, "H100")), "test.yaml")
    assert any("may land on p4d" in p and "set train.llama3_70b.accelerator_type to H100" in p for p in problems), problems


def test_a_gemma_merge_is_refused_on_a_node_smaller_than_its_streamed_need(plans):
    config = plans["gemma2_9b_student"]
    run = config.train["gemma2_9b"].model_copy(update={"use_gpu": False, "accelerator_type": None})
    merge = [p for p in plan(config.model_copy(update={"train": {"gemma2_9b": run}})) if p.kind == "merge task"]
    assert len(merge) == 1 and 1 < merge[0].host_gib < 8  # streamed: never the dense fp32 model (37 GB)
    problems = check(merge, [NodeType("head", 8, 2, head=True)], "test.yaml")
    assert len(problems) == 1 and problems[0].startswith("train:gemma2_9b: a merge task needs ") and "head (2 GiB host, head)" in problems[0]
    assert check(merge, [NodeType("head", 8, 32, head=True)], "test.yaml") == []


def test_doctor_prints_the_plan_of_a_recipe_sequence_as_json(tmp_path, human_pairs):
    """The three recipes as one command, checked against cluster.yaml without a cluster."""
    import json
    import os
    import subprocess
    import sys

    configs = []
    for name in RECIPES:
        config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        config["data"]["train"] = [str(human_pairs)]
        config["data"].pop("unlabeled", None)
        config["pseudolabel"] = {}  # no dump to pseudolabel here
        config["train"] = {k: {**v, "pseudolabels": False} for k, v in config["train"].items()}
        config["output_dir"] = str(tmp_path / "run")
        for model in config.get("score", {}).get("models", []):
            model["path"] = model["path"].replace("/mnt/cluster_storage/prefscale/arena", str(tmp_path / "run"))
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        configs.append(str(tmp_path / f"{name}.yaml"))
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "doctor", "--config", *configs, "--nodes", "cluster.yaml", "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    problems = summary["problems"]
    assert all(p.startswith("model ") and "not in the hub cache" in p for p in problems), problems  # only the weights are missing here
    student = summary["recipes"][2]
    assert student["cluster"] == "not contacted: planned against cluster.yaml"
    assert {(p["stage"], p["kind"]) for p in student["plan"]} >= {("train:gemma2_9b", "training worker"), ("train:gemma2_9b", "merge task")}
    assert "resource plan of gemma2-9b-student:" in result.stderr and "training worker" in result.stderr


def test_planned_host_memory_of_a_worker_and_an_actor_is_within_25_percent_of_their_peaks(ray_local, battles_path, tiny_llama_path, tmp_path):
    """Calibration on CPU: MiniLM and a tiny Llama, a Ray Train worker and a Ray Data actor each,
    their peak RSS (reported by the processes themselves) against the plan."""
    from prefscale.plan.resources import data_size, scoring_actor, trained_run, run_size, training_worker
    from prefscale.train.kfold import train_run

    write_table(assign_folds(pq.read_table(battles_path), 3), tmp_path / "battles.parquet")
    config = Config.model_validate({
        "name": "calibration", "output_dir": str(tmp_path), "data": {"train": [battles_path], "folds": 3}, "text": {"max_length": 128},
        "score": {"cpus_per_actor": 0.5, "format_cpus": 0.25, "max_tokens": 2048},
        "train": {run: {"folds": [0], "batch_size": 16, "workers": 1, "cpus_per_worker": 0.5, "average": "none", "tta": False,
                        **({"model": {"path": tiny_llama_path}} if run == "tiny_llama" else {})} for run in ("minilm", "tiny_llama")}})
    data = data_size(config)
    for name in config.train:
        summary = train_run(config, name, log=lambda line: None)
        measured_worker = summary["folds"][0]["peak_rss_gib"]
        scored = pq.read_table(config.layout.heldout(name)).num_rows
        actor = summary["actor_peak_rss_gib"]
        planned_worker = training_worker(config, name, data).host_gib
        planned_actor = scoring_actor(config, "t", run_size(trained_run(config, name), 2048), "fp32", 1, 128, data).host_gib
        assert abs(planned_worker / measured_worker - 1) < 0.25, (name, planned_worker, measured_worker)
        assert abs(planned_actor / actor - 1) < 0.25, (name, planned_actor, actor, scored)
