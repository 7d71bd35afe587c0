"""Turn trained adapters into plain models the scoring engine loads (safetensors + tokenizer)."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from prefscale.io import atomic_dir
from prefscale.models.averaging import average_exact, average_factors, merge_into_base
from prefscale.models.loading import load_classifier, load_tokenizer
from prefscale.models.lora import LoraSettings, build_trainable, load_trainable_state


def saved_dtype(precision: str) -> torch.dtype:
    """Merging runs in fp32; the saved model takes the training compute dtype (a QLoRA
    teacher saves bf16, half the bytes of fp32), and the scorer quantizes it again if asked."""
    return {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)


def export_merged(model_path: str, lora: LoraSettings, trainable: dict[str, torch.Tensor], out_dir: str, trust_remote_code: bool = False,
                  precision: str = "fp32") -> str:
    """Base (full precision) + trained adapters merged into its weights, saved for scoring."""
    model = build_trainable(model_path, "fp32", lora, trust_remote_code)
    load_trainable_state(model, trainable)
    merged = model.merge_and_unload() if lora.r else model
    with atomic_dir(out_dir) as tmp:
        merged.to(saved_dtype(precision)).save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(model_path, trust_remote_code).save_pretrained(tmp)
    return out_dir


def export_average(model_path: str, lora: LoraSettings, fold_checkpoints: list[str], out_dir: str, method: str = "exact",
                   trust_remote_code: bool = False, precision: str = "fp32") -> str:
    """Average K fold adapters into one merged model (see prefscale.models.averaging)."""
    states = [load_file(os.path.join(c, "trainable.safetensors")) for c in fold_checkpoints]
    if method == "factors":
        return export_merged(model_path, lora, average_factors(states), out_dir, trust_remote_code, precision)
    base = load_classifier(model_path, trust_remote_code)
    mean_delta, others = average_exact(states, lora.alpha / lora.r)
    base.load_state_dict(merge_into_base(base.state_dict(), mean_delta, others))
    with atomic_dir(out_dir) as tmp:
        base.to(saved_dtype(precision)).save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(model_path, trust_remote_code).save_pretrained(tmp)
    return out_dir
