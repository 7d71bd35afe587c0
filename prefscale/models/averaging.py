"""Merge K fold models' LoRA adapters into one model.

Two methods:
- ``factors`` (the 2024 winner's): average lora_A and lora_B separately. Cheap and keeps rank
  r, but mean(B) @ mean(A) is not mean(B @ A): cross terms B_i @ A_j of different folds leak
  in, so the result is not the average of the fold models.
- ``exact``: average the merged updates delta_k = scale * B_k @ A_k and add the mean to the
  base weights. This equals averaging the K merged fold models (the update is linear in
  delta). Its rank can reach K * r; ``refactor_rank`` turns it back into rank-r factors by SVD
  (exact only when the rank allows).
Heads and other fully trained tensors are averaged directly in both methods.
"""

from __future__ import annotations

import re
from typing import Literal

import torch

Method = Literal["factors", "exact"]
_LORA = re.compile(r"^(?P<prefix>.*)\.lora_(?P<kind>[AB])(?:\.default)?\.weight$")


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.float() for t in tensors]).mean(dim=0)


def average_factors(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The winner's method: every tensor (lora_A, lora_B, head) averaged on its own."""
    keys = states[0].keys()
    if any(s.keys() != keys for s in states):
        raise ValueError("fold adapters have different parameters; were they trained with the same LoRA settings?")
    return {k: _mean([s[k] for s in states]) for k in keys}


def lora_deltas(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """{module prefix: scale * B @ A} for every LoRA pair in a trainable state."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        match = _LORA.match(name)
        if match:
            pairs.setdefault(match["prefix"], {})[match["kind"]] = tensor.float()
    return {prefix: scale * ab["B"] @ ab["A"] for prefix, ab in pairs.items()}


def average_exact(states: list[dict[str, torch.Tensor]], scale: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(mean delta per LoRA module, mean of the non-LoRA trainable tensors)."""
    deltas = [lora_deltas(s, scale) for s in states]
    mean_delta = {k: _mean([d[k] for d in deltas]) for k in deltas[0]}
    others = {k: _mean([s[k] for s in states]) for k in states[0] if not _LORA.match(k)}
    return mean_delta, others


def refactor_rank(delta: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors (A, B) with scale * B @ A closest to ``delta`` (truncated SVD)."""
    u, s, vh = torch.linalg.svd(delta / scale, full_matrices=False)
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def base_weight_name(lora_prefix: str) -> str:
    """peft's 'base_model.model.x.y' LoRA module -> the base model's 'x.y.weight'."""
    name = lora_prefix.removeprefix("base_model.model.")
    return f"{name}.weight"


def merge_into_base(base_state: dict[str, torch.Tensor], mean_delta: dict[str, torch.Tensor], others: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base weights + mean deltas, with averaged heads; returns a plain (non-peft) state dict."""
    merged = dict(base_state)
    for prefix, delta in mean_delta.items():
        name = base_weight_name(prefix)
        merged[name] = (merged[name].float() + delta).to(merged[name].dtype)
    for key, value in others.items():
        name = key.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        if name in merged:
            merged[name] = value.to(merged[name].dtype)
    return merged
