"""Load a 3-class sequence classifier and its tokenizer, named as Hugging Face users name models.

A model is a local folder, ``package:<module>/<subdir>`` (a folder inside an installed
package, such as the shipped MiniLM), or a hub id ``org/name`` with an optional
``@revision`` (branch, tag or commit), resolved through huggingface_hub: the local cache
first, the hub when it is reachable and HF_HUB_OFFLINE is not set. Gated and private models
take their token from HF_TOKEN or the saved `hf auth login`, never from a config.
Weights load only from safetensors, and remote code runs only when the config says so.
Decoder models (Llama, Gemma, Qwen) get a pad token so batches can be padded and the
classifier pools the last real token.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
import re
from collections.abc import Iterator

from prefscale.errors import PrefscaleError

PACKAGE_PREFIX = "package:"
NUM_LABELS = 3
HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# What a classifier needs from a hub repo: configs, tokenizer files, safetensors weights. Never
# pickled weights (*.bin, *.pt); remote code (*.py) only when trust_remote_code is on.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def _has_safetensors(folder: str) -> bool:
    return any(f.endswith((".safetensors", ".safetensors.index.json")) for f in os.listdir(folder))


def _package_dir(spec: str) -> str:
    module, _, subdir = spec[len(PACKAGE_PREFIX) :].partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise PrefscaleError(f"model package '{module}' is not installed; pip install it or set model.path to a local folder")
    return os.path.join(list(found.submodule_search_locations)[0], subdir)


@contextlib.contextmanager
def hub_errors(spec: str, repo: str, revision: str | None) -> Iterator[None]:
    """Every way a hub look-up fails, as one line that says what to do."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise PrefscaleError(f"{repo} is gated: accept its terms on its hub page, then set HF_TOKEN (or run `hf auth login`) on every node") from None
    except RevisionNotFoundError:
        raise PrefscaleError(f"{repo} has no revision '{revision}'; name a branch, tag or commit that exists") from None
    except RepositoryNotFoundError:
        raise PrefscaleError(f"{repo} is not on the hub or not visible to your token: check the id, or set HF_TOKEN (or run `hf auth login`) "
                             f"for a private repo; a local folder needs a path that exists") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.TransportError):  # not cached, and no hub to ask
        offline = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the hub cannot be reached"
        raise PrefscaleError(f"{spec} is not in the hub cache ({constants.HF_HUB_CACHE}) and {offline}; download it once with "
                             f"`hf download {repo}{f' --revision {revision}' if revision else ''}` where the hub is reachable, "
                             f"or point model.path at a local folder") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise PrefscaleError(f"the hub refused {repo} (HTTP {status}): the token from HF_TOKEN or `hf auth login` is invalid or lacks access") from None
        raise PrefscaleError(f"the hub failed on {repo}: {str(exc).strip().splitlines()[0]}; retry, or use a cached copy with HF_HUB_OFFLINE=1") from None


def _hub_snapshot(spec: str, repo: str, revision: str | None, trust_remote_code: bool) -> str:
    """The local snapshot of a hub repo (downloaded only when not cached and the hub is reachable)."""
    from huggingface_hub import snapshot_download

    with hub_errors(spec, repo, revision):
        folder = snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES + (["*.py"] if trust_remote_code else []))
    if not _has_safetensors(folder):
        raise PrefscaleError(f"{spec} has no .safetensors weights; prefscale never loads pickled weights: pick a repo or revision that ships safetensors")
    return folder


def resolve_model_path(spec: str, trust_remote_code: bool = False) -> str:
    """A local folder holding the model named by ``spec`` (see the module docstring)."""
    if spec.startswith(PACKAGE_PREFIX):
        return _package_dir(spec)
    if "://" in spec:  # a model a run wrote to an object store (an averaged model): this node's cached copy
        from prefscale.io import local_copy

        return resolve_model_path(local_copy(spec), trust_remote_code)
    hub = HUB_ID.match(spec)
    if hub and not os.path.exists(spec):
        return _hub_snapshot(spec, hub["repo"], hub["revision"], trust_remote_code)
    if not os.path.isdir(spec):
        raise PrefscaleError(f"model directory not found: {spec}; point model.path at a folder with config.json, or a hub id org/name")
    if not _has_safetensors(spec):
        raise PrefscaleError(f"{spec} holds no .safetensors weights; convert the checkpoint to safetensors")
    return spec


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec, trust_remote_code), trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise PrefscaleError(f"{spec}: needs a fast tokenizer (tokenizer.json) for batched tokenization")
    if tokenizer.pad_token is None:
        # One id, whatever the config says: Llama-3.1-Instruct lists several eos ids, and pad must be one.
        eos = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else None
        tokenizer.pad_token = eos or tokenizer.convert_ids_to_tokens(_first(tokenizer.eos_token_id))
    return tokenizer


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


# Classification heads stay unquantized (and trainable): BERT-style 'classifier', Llama-style 'score'.
HEAD_MODULES = ["classifier", "score", "pre_classifier"]
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")


def quantization_kwargs(precision: str, compute_dtype: str = "bf16") -> dict:
    """from_pretrained arguments for a precision; int8 and nf4 go through bitsandbytes."""
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
            llm_int8_skip_modules=HEAD_MODULES,
        )
    else:
        raise PrefscaleError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    return {"quantization_config": config, "dtype": dtypes[compute_dtype]}


def attention_for(path: str, trust_remote_code: bool = False) -> str:
    """The attention kernel to load a model with: FlashAttention 2 on a GPU where it is installed and
    the architecture supports it, else PyTorch's SDPA where supported, else eager (Gemma-2: SDPA
    cannot soft-cap its attention logits)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    try:
        model_class = AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:  # remote code: let transformers choose
        return "sdpa"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") and getattr(model_class, "_supports_flash_attn", False):
        return "flash_attention_2"
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def dynamic_int8(model):
    """A CPU replica in int8: PyTorch's dynamic quantization (fbgemm on x86) of every Linear layer but
    the head and LoRA's small factors. Weights are int8, activations quantized per batch; on CPU it is
    faster than fp32, where bitsandbytes' int8 is slower (benchmarks/bench_score_throughput.py)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    heads = [name for name, _ in model.named_modules() if name.split(".")[-1] in HEAD_MODULES]

    def kept(name: str) -> bool:
        return ".lora_" in f".{name}" or any(name == h or name.startswith(f"{h}.") for h in heads)

    layers = {name: default_dynamic_qconfig for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and not kept(name)}
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    with warnings.catch_warnings():  # torch.ao's deprecation notices, once per replica; its successor (torchao) is not a dependency
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        return quantize_dynamic(model, layers, dtype=torch.qint8, inplace=True)


def load_classifier(spec: str, trust_remote_code: bool = False, **kwargs):
    """A 3-label AutoModelForSequenceClassification with an explicit attention kernel (``attention_for``);
    a new head is initialised if the checkpoint has none."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(spec, trust_remote_code)
    kwargs.setdefault("attn_implementation", attention_for(path, trust_remote_code))
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
    if model.config.pad_token_id is None or isinstance(model.config.pad_token_id, list):
        # Batches are padded with the tokenizer's pad id, and last-token pooling looks for it: one id.
        model.config.pad_token_id = load_tokenizer(path, trust_remote_code).pad_token_id
    return model
