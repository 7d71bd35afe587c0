"""Turn trained adapters into plain models the scoring engine loads (safetensors + tokenizer)."""

from __future__ import annotations

import torch

from prefscale.config import LoraConfig, ModelConfig
from prefscale.io import atomic_dir
from prefscale.models.averaging import average_exact, average_factors, merge_into_base
from prefscale.models.loading import load_classifier, load_tokenizer
from prefscale.models.lora import build_trainable, load_trainable_state
from prefscale.train.loop import load_trainable


def saved_dtype(precision: str) -> torch.dtype:
    """Merging runs in fp32; the saved model takes the training compute dtype (a QLoRA
    teacher saves bf16, half the bytes of fp32), and the scorer quantizes it again if asked."""
    return {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)


def _save(model, base: ModelConfig, out_dir: str) -> str:
    with atomic_dir(out_dir) as tmp:
        model.to(saved_dtype(base.precision)).save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base.path, base.trust_remote_code).save_pretrained(tmp)
    return out_dir


def export_merged(base: ModelConfig, lora: LoraConfig, trainable: dict[str, torch.Tensor], out_dir: str) -> str:
    """Base (full precision) + trained adapters merged into its weights, saved for scoring."""
    model = build_trainable(base.path, "fp32", lora, base.trust_remote_code)
    load_trainable_state(model, trainable)
    return _save(model.merge_and_unload() if lora.r else model, base, out_dir)


def export_average(base: ModelConfig, lora: LoraConfig, fold_checkpoints: list[str], out_dir: str, method: str = "exact") -> str:
    """Average K fold adapters into one merged model (see prefscale.models.averaging)."""
    states = [load_trainable(c) for c in fold_checkpoints]
    if method == "factors":
        return export_merged(base, lora, average_factors(states), out_dir)
    model = load_classifier(base.path, base.trust_remote_code)
    mean_delta, others = average_exact(states, lora.alpha / lora.r)
    model.load_state_dict(merge_into_base(model.state_dict(), mean_delta, others))
    return _save(model, base, out_dir)
