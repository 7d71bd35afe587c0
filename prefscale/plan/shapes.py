"""What a model is, counted from its configuration on the meta device: never its weights.

``model_config`` finds a model's config.json the way loading would (a local folder, the hub
cache) and, for the recipes' hub models when they are not cached, the project's copy of their
published config (``architectures/``, each file naming its source). ``size_model`` builds the
3-label classifier on meta, applies the run's LoRA with peft exactly as training does, and
returns the counts the resource plan multiplies: parameters by kind, trainable parameters, and
the activation peaks of a training step and of a scoring batch (``trace.activation_peak``).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from prefscale.config import LoraConfig
from prefscale.errors import PrefscaleError

ARCHITECTURES = Path(__file__).parent / "architectures"
QUANTIZED = ("int8", "nf4")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# bitsandbytes bytes per quantized weight: nf4 with double quantization keeps an 8-bit absmax per
# block of 64 and an fp32 one per 256 of those; LLM.int8 keeps one fp32 scale per output row (added apart).
QUANTIZED_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0}
ADAPTER_BYTES = 4  # peft keeps LoRA weights in fp32 over a bf16 or quantized base (autocast_adapter_dtype)


def known_config(repo: str) -> Path:
    """The project's copy of a hub model's published config.json (may not exist)."""
    return ARCHITECTURES / f"{repo.replace('/', '--')}.json"


def _from_dict(values: dict, trust_remote_code: bool):
    from transformers import AutoConfig

    values = {k: v for k, v in values.items() if not k.startswith("_")}
    return AutoConfig.for_model(values.pop("model_type"), trust_remote_code=trust_remote_code, **values)


def model_config(spec: str, trust_remote_code: bool = False):
    """(transformers config, where it was read) of the model ``spec`` names, reading config.json only."""
    from transformers import AutoConfig

    from prefscale.models.loading import HUB_ID, PACKAGE_PREFIX, hub_errors, resolve_model_path

    hub = HUB_ID.match(spec)
    if spec.startswith(PACKAGE_PREFIX) or not hub or os.path.exists(spec):
        folder = resolve_model_path(spec, trust_remote_code)
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code), os.path.join(folder, "config.json")
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    repo, revision = hub["repo"], hub["revision"]
    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):
        return AutoConfig.from_pretrained(os.path.dirname(cached), trust_remote_code=trust_remote_code), cached
    if known_config(repo).exists():
        values = json.loads(known_config(repo).read_text())
        return _from_dict(values, trust_remote_code), values["_source"]
    if constants.is_offline_mode():
        resolve_model_path(spec)  # raises the one-line "not in the hub cache" error
    with hub_errors(spec, repo, revision):
        path = hf_hub_download(repo, "config.json", revision=revision)
    return AutoConfig.from_pretrained(os.path.dirname(path), trust_remote_code=trust_remote_code), path


@dataclass(frozen=True)
class ModelSize:
    """Counts of one model as a recipe uses it (elements, not bytes, unless named so)."""

    spec: str
    source: str  # the config.json it was counted from
    model_type: str
    parameters: int
    linear: int  # weights of the Linear layers bitsandbytes quantizes (every one but the head)
    linear_rows: int  # their output rows (LLM.int8 keeps an fp32 scale per row)
    rest: int  # embeddings, norms, biases and the head: kept in the compute dtype
    largest_linear: int  # elements of the largest Linear weight (what a streamed merge holds at once)
    stored_bytes: float  # bytes per parameter of the checkpoint on disk
    trainable: int  # LoRA adapters and head (every parameter when lora.r == 0)
    train_peak: int  # bytes: a training step's activations, transients and gradients
    score_peak: int  # bytes: one scoring batch's activations and transients

    def weight_bytes(self, precision: str, training: bool) -> float:
        """Bytes of the weights loaded at ``precision``; quantized models keep the rest in bf16 for
        scoring, and in fp32 for training (peft's prepare_model_for_kbit_training casts them up)."""
        if precision in DTYPE_BYTES:
            return self.parameters * DTYPE_BYTES[precision]
        scales = self.linear_rows * 4 if precision == "int8" else 0
        return self.linear * QUANTIZED_BYTES[precision] + scales + self.rest * (4 if training else 2)


def _compute_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)


def _meta_classifier(config, precision: str, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForSequenceClassification

    from prefscale.models.loading import NUM_LABELS

    config.num_labels = NUM_LABELS
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0  # batches of more than one row need one; its value does not change a size
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, dtype=_compute_dtype(precision), trust_remote_code=trust_remote_code)
    if precision in QUANTIZED:  # as prepare_model_for_kbit_training leaves it: what stays unquantized computes in fp32
        for module in _unquantized(model):
            for param in module.parameters(recurse=False):
                param.data = param.data.float()
    return model


def _quantized(model) -> list:
    """The Linear layers bitsandbytes quantizes: all but the head's."""
    import torch

    from prefscale.models.loading import HEAD_MODULES

    head = {id(sub) for name, m in model.named_modules() if name.split(".")[-1] in HEAD_MODULES for sub in m.modules()}
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m) not in head]


def _unquantized(model) -> list:
    quantized = {id(m) for m in _quantized(model)}
    return [m for m in model.modules() if id(m) not in quantized]


def _stored_bytes(config) -> int:
    """Bytes per parameter of the checkpoint, from its config's dtype (fp32 when it names none)."""
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32").removeprefix("torch.")
    return {"bfloat16": 2, "float16": 2}.get(dtype, 4)


def _counts(model) -> dict[str, int]:
    linear = rows = largest = 0
    for module in _quantized(model):
        linear += module.weight.numel()
        rows += module.out_features
        largest = max(largest, module.weight.numel())
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "linear": linear, "linear_rows": rows, "rest": total - linear, "largest_linear": largest}


@functools.lru_cache(maxsize=32)
def size_model(spec: str, precision: str, lora: LoraConfig, train_batch: int, train_length: int, checkpointing: bool,
               score_batch: int, score_length: int, trust_remote_code: bool = False) -> ModelSize:
    """Count ``spec`` as a run uses it: at ``precision``, with ``lora``, trained on batches of
    ``train_batch`` x ``train_length`` tokens (0: not trained) and scored on ``score_batch`` x ``score_length``."""
    from peft import get_peft_model

    from prefscale.models.lora import peft_config
    from prefscale.plan.trace import activation_peak

    config, source = model_config(spec, trust_remote_code)
    stored = _stored_bytes(config)
    try:
        model = _meta_classifier(config, precision, trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise PrefscaleError(f"cannot plan {spec}: transformers has no sequence classifier for it ({str(exc).splitlines()[0]})") from None
    counts = _counts(model)
    if checkpointing and train_batch:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as models/lora.py does
    if lora.r:
        model = get_peft_model(model, peft_config(model, lora))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_peak = activation_peak(model, train_batch, train_length, training=True) if train_batch else 0
    if checkpointing and train_batch:
        (model.get_base_model() if lora.r else model).gradient_checkpointing_disable()
    score_peak = activation_peak(model, score_batch, score_length, training=False) if score_batch else 0
    return ModelSize(spec=spec, source=str(source), model_type=config.model_type, stored_bytes=stored, trainable=trainable,
                     train_peak=train_peak, score_peak=score_peak, **counts)
