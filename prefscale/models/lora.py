"""A trainable classifier: LoRA on all linear layers, optionally over a bitsandbytes base (QLoRA).

The classification head stays unquantized and fully trainable (peft's SEQ_CLS task keeps it
in ``modules_to_save``). Trap handled here: on CPU, a no-grad forward on a freshly loaded
4-bit model repacks its weights and later training silently gets zero gradients, so a model
built here for training must not be used for inference first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefscale.models.loading import HEAD_MODULES, load_classifier, quantization_kwargs


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16  # 0 = full fine-tuning (small models only)
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    extra_trainable: list[str] = field(default_factory=list)  # e.g. ["pooler"] for BERT


def build_trainable(path: str, precision: str = "fp32", lora: LoraSettings = LoraSettings(), trust_remote_code: bool = False,
                    device_map: dict | None = None, gradient_checkpointing: bool = False, fsdp: bool = False):
    """Load the base (quantized per ``precision``) and wrap it with LoRA adapters."""
    kwargs = quantization_kwargs(precision, fsdp=fsdp)
    quantized = "quantization_config" in kwargs
    if quantized:
        kwargs["device_map"] = device_map or {"": "cpu"}
    model = load_classifier(path, trust_remote_code, **kwargs)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora.r == 0:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, modules_to_save=[m for m in HEAD_MODULES if _has_module(model, m)] + lora.extra_trainable)
    return get_peft_model(model, config)


def _has_module(model, name: str) -> bool:
    return any(n.split(".")[-1] == name for n, _ in model.named_modules())


def trainable_state(model) -> dict:
    """The parameters training changes (adapters and head): what a checkpoint must hold."""
    return {name: p.detach().cpu().contiguous() for name, p in _unwrap(model).named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    missing = set(state) - {n for n, _ in _unwrap(model).named_parameters()}
    if missing:
        raise ValueError(f"checkpoint has parameters the model lacks: {sorted(missing)[:3]}")
    _unwrap(model).load_state_dict(state, strict=False)


def _unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model
