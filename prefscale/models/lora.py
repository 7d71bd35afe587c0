"""A trainable classifier: LoRA on all linear layers, optionally over a bitsandbytes base (QLoRA).

The classification head stays unquantized and fully trainable (peft's SEQ_CLS task keeps it
in ``modules_to_save``). Trap handled here: on CPU, a no-grad forward on a freshly loaded
4-bit model repacks its weights and later training silently gets zero gradients, so a model
built here for training must not be used for inference first.
"""

from __future__ import annotations

from prefscale.config import LoraConfig
from prefscale.models.loading import HEAD_MODULES, load_classifier, quantization_kwargs


def load_base(path: str, precision: str = "fp32", trust_remote_code: bool = False, device_map: dict | None = None,
              gradient_checkpointing: bool = False, class_prior=None):
    """The base classifier as training holds it: quantized per ``precision`` and, when quantized,
    prepared by peft for k-bit training (what stays unquantized in fp32). Scoring a fold adapter
    loads its base through here too, so it computes the forward pass the adapter was trained with.

    ``class_prior`` (3 probabilities) starts the head at the prior: zero weights and bias
    log(prior). A fresh head otherwise starts near uniform (log loss 1.099), and a short
    fine-tune spends its first steps just learning the class balance.
    """
    kwargs = quantization_kwargs(precision)
    quantized = "quantization_config" in kwargs
    if quantized:
        kwargs["device_map"] = device_map or {"": "cpu"}
    model = load_classifier(path, trust_remote_code, **kwargs)
    if class_prior is not None:
        init_head_at_prior(model, class_prior)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        # non-reentrant: gradients reach the adapters even though the frozen embeddings need none
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_trainable(path: str, precision: str = "fp32", lora: LoraConfig = LoraConfig(), trust_remote_code: bool = False,
                    device_map: dict | None = None, gradient_checkpointing: bool = False,
                    class_prior=None):
    """The base (``load_base``) wrapped with LoRA adapters; ``lora.r == 0`` trains every weight."""
    model = load_base(path, precision, trust_remote_code, device_map, gradient_checkpointing, class_prior)
    if lora.r == 0:
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config(model, lora))


def save_adapter(model, directory: str, tokenizer_from: str | None = None) -> None:
    """What a fold keeps: peft's adapter files (LoRA weights and the head, safetensors, adapter_config.json),
    megabytes beside a merged copy of the model; a full fine-tune (r: 0) saves the whole model and its tokenizer."""
    from prefscale.models.loading import load_tokenizer

    model = unwrap_ddp(model)
    model.save_pretrained(directory, safe_serialization=True)
    if not hasattr(model, "peft_config") and tokenizer_from:
        load_tokenizer(tokenizer_from).save_pretrained(directory)


ADAPTER_CONFIG = "adapter_config.json"  # peft's: a directory holding it is an adapter, not a model


def is_adapter(directory: str) -> bool:
    from prefscale.io import exists

    return exists(f"{directory.rstrip('/')}/{ADAPTER_CONFIG}")


def with_adapters(base, adapters: dict[str, str]):
    """``base`` with each named peft adapter loaded beside the others (one base in memory for all of
    them); ``set_adapter(name)`` picks the one a forward uses."""
    from peft import PeftModel

    from prefscale.io import local_copy

    names = list(adapters)
    model = PeftModel.from_pretrained(base, local_copy(adapters[names[0]]), adapter_name=names[0], is_trainable=False)
    for name in names[1:]:
        model.load_adapter(local_copy(adapters[name]), adapter_name=name, is_trainable=False)
    return model.eval()


def peft_config(model, lora: LoraConfig):
    """peft's LoraConfig for a classifier: adapters per ``lora``, the head in modules_to_save (trained whole)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    return PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, modules_to_save=[m for m in HEAD_MODULES if _has_module(model, m)])


def init_head_at_prior(model, prior) -> None:
    """Output layer weights to zero and bias to log(prior); heads without a bias keep their init."""
    import torch

    head = _output_layer(model)
    if head.bias is None:
        return
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.log(torch.as_tensor(prior, dtype=head.bias.dtype).clamp_min(1e-6)))


def _output_layer(model):
    """The Linear that emits the class logits (a head may be a small MLP, e.g. 'classifier.out_proj')."""
    import torch

    for name in HEAD_MODULES:
        heads = [m for n, m in model.named_modules() if n.split(".")[-1] == name]
        if heads:
            linears = [m for m in heads[0].modules() if isinstance(m, torch.nn.Linear)]
            return linears[-1]
    raise ValueError(f"no classification head named one of {HEAD_MODULES}")


def _has_module(model, name: str) -> bool:
    return any(n.split(".")[-1] == name for n, _ in model.named_modules())


def trainable_state(model) -> dict:
    """The parameters training changes (adapters and head): what a checkpoint must hold."""
    return {name: p.detach().cpu().contiguous() for name, p in unwrap_ddp(model).named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    missing = set(state) - {n for n, _ in unwrap_ddp(model).named_parameters()}
    if missing:
        raise ValueError(f"checkpoint has parameters the model lacks: {sorted(missing)[:3]}")
    unwrap_ddp(model).load_state_dict(state, strict=False)


def unwrap_ddp(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model
