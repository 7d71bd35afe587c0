"""Average K fold adapters into one merged model, streamed tensor by tensor.

Two methods:
- ``factors`` (the 2024 winner's): average lora_A and lora_B separately. Cheap and keeps rank
  r, but mean(B) @ mean(A) is not mean(B @ A): cross terms B_i @ A_j of different folds leak
  in, so the result is not the average of the fold models.
- ``exact``: add the mean of the updates delta_k = scale * B_k @ A_k to the base weights. This
  equals averaging the K merged fold models (the update is linear in delta).
Heads and other fully trained tensors (peft's modules_to_save) are averaged directly in both.

The merge never holds a model: the base checkpoint is read one safetensors tensor at a time, each
weight gets the K adapters' update for its module (read lazily from the adapter files), and the
merged model is written in shards of at most ``MAX_SHARD`` bytes. Memory is one base weight in
fp32, its update and one output shard, whatever the model's size; it runs as a Ray task beside
the training workers (``train/kfold.py``), never in the driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Literal

import torch

from prefscale.errors import PrefscaleError

Method = Literal["factors", "exact"]
MAX_SHARD = 2 << 30
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<kind>[AB])(?:\.default)?\.weight$")
_PEFT_PREFIX = "base_model.model."


def saved_dtype(precision: str) -> torch.dtype:
    """The merged model takes the training compute dtype (a QLoRA or bf16 run saves bf16, half the
    bytes of fp32); the scorer quantizes it again if its precision asks."""
    return {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)


class FoldAdapters:
    """K fold adapters' tensors, read lazily: {module: K (A, B) pairs} and {head tensor: K copies}."""

    def __init__(self, directories: list[str], stack: contextlib.ExitStack) -> None:
        from safetensors import safe_open

        self.files = [stack.enter_context(safe_open(os.path.join(d, ADAPTER_WEIGHTS), "pt")) for d in directories]
        configs = [json.loads(open(os.path.join(d, "adapter_config.json")).read()) for d in directories]
        if len({(c["r"], c["lora_alpha"]) for c in configs}) != 1:
            raise PrefscaleError(f"fold adapters in {directories} were trained with different LoRA settings; retrain them with one")
        self.scale = configs[0]["lora_alpha"] / configs[0]["r"]
        keys = set(self.files[0].keys())
        if any(set(f.keys()) != keys for f in self.files):
            raise PrefscaleError("fold adapters have different parameters; were they trained with the same LoRA settings?")
        self.modules: dict[str, dict[str, str]] = {}
        self.whole: dict[str, str] = {}  # tensor name in the classifier -> its name in the adapter files
        for key in keys:
            match = _LORA.match(key)
            if match:
                self.modules.setdefault(match["module"], {})[match["kind"]] = key
            else:
                self.whole[key.removeprefix(_PEFT_PREFIX).replace(".modules_to_save.default", "")] = key

    def _k(self, key: str) -> list[torch.Tensor]:
        return [f.get_tensor(key).float() for f in self.files]

    def update(self, module: str, method: Method) -> torch.Tensor | None:
        """The mean update of ``module``'s weight (fp32), or None when it has no adapter."""
        names = self.modules.get(module)
        if names is None:
            return None
        a, b = self._k(names["A"]), self._k(names["B"])
        if method == "factors":
            return self.scale * torch.stack(b).mean(0) @ torch.stack(a).mean(0)
        return self.scale * sum(bk @ ak for ak, bk in zip(a, b, strict=True)) / len(a)

    def mean(self, name: str) -> torch.Tensor | None:
        """The mean of a fully trained tensor (the head), or None when the adapters do not train it."""
        key = self.whole.get(name)
        return torch.stack(self._k(key)).mean(0) if key else None


def _base_tensors(folder: str) -> dict[str, str]:
    """{tensor name: safetensors file} of a checkpoint (sharded or not)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as handle:
            return {name: os.path.join(folder, file) for name, file in json.load(handle)["weight_map"].items()}
    from safetensors import safe_open

    found = {}
    for file in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with safe_open(os.path.join(folder, file), "pt") as handle:
            found |= dict.fromkeys(handle.keys(), os.path.join(folder, file))
    return found


def _source(name: str, base: dict[str, str], prefix: str) -> str | None:
    """The base checkpoint's name for the classifier's tensor ``name`` (a bare backbone checkpoint lacks the prefix)."""
    for candidate in (name, name.removeprefix(f"{prefix}."), f"{prefix}.{name}"):
        if candidate in base:
            return candidate
    return None


def merged_tensors(target: dict[str, torch.dtype], prefix: str, base: dict[str, str], adapters: FoldAdapters, method: Method,
                   dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the merged classifier, one at a time, in the base checkpoint's file order."""
    from safetensors import safe_open

    sources = {name: _source(name, base, prefix) for name in target}
    missing = [n for n, s in sources.items() if s is None and adapters.mean(n) is None]
    if missing:
        raise PrefscaleError(f"the base checkpoint has no tensor for {missing[:3]} and the adapters do not train them; is it the run's base model?")
    heads = [n for n in target if adapters.mean(n) is not None]
    for name in heads:
        yield name, adapters.mean(name).to(dtype)
    by_file: dict[str, list[str]] = {}
    for name in target:
        if name not in heads:
            by_file.setdefault(base[sources[name]], []).append(name)
    for file, names in sorted(by_file.items()):
        with safe_open(file, "pt") as handle:  # one file mapped at a time: its pages leave with it
            for name in sorted(names):
                tensor = handle.get_tensor(sources[name])
                update = adapters.update(name.removesuffix(".weight"), method) if name.endswith(".weight") else None
                yield name, (tensor.float() + update).to(dtype) if update is not None else tensor.to(dtype)


def _write_shards(tensors: Iterator[tuple[str, torch.Tensor]], folder: str, max_shard: int) -> int:
    """Write the tensors as safetensors shards (model.safetensors, or model-0000k-of-0000n plus an index)."""
    from safetensors.torch import save_file

    shard: dict[str, torch.Tensor] = {}
    written: list[dict[str, torch.Tensor] | str] = []
    size = total = 0

    def flush() -> None:
        nonlocal shard, size
        path = os.path.join(folder, f"shard-{len(written):05d}.safetensors")
        save_file(shard, path, metadata={"format": "pt"})
        written.append(list(shard))
        shard, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard:
            flush()
        shard[name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    if shard:
        flush()
    if len(written) == 1:
        os.rename(os.path.join(folder, "shard-00000.safetensors"), os.path.join(folder, "model.safetensors"))
        return total
    weight_map = {}
    for k, names in enumerate(written):
        file = f"model-{k + 1:05d}-of-{len(written):05d}.safetensors"
        os.rename(os.path.join(folder, f"shard-{k:05d}.safetensors"), os.path.join(folder, file))
        weight_map |= dict.fromkeys(names, file)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)
    return total


def merge_average(base_spec: str, adapter_dirs: list[str], out_dir: str, method: Method = "exact", precision: str = "bf16",
                  trust_remote_code: bool = False, max_shard: int = MAX_SHARD) -> dict:
    """Average the fold adapters over their base into one plain model at ``out_dir`` (written atomically)."""
    from transformers import AutoModelForSequenceClassification

    from prefscale.io import atomic_dir, local_copy
    from prefscale.memory import peak_rss_bytes
    from prefscale.models.loading import NUM_LABELS, load_tokenizer, resolve_model_path
    from prefscale.plan.shapes import model_config

    folder = resolve_model_path(base_spec, trust_remote_code)
    config, _ = model_config(folder, trust_remote_code)
    config.num_labels = NUM_LABELS
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = load_tokenizer(folder, trust_remote_code).pad_token_id
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    target = {name: t.dtype for name, t in classifier.state_dict().items()}
    dtype = saved_dtype(precision)
    with contextlib.ExitStack() as stack, atomic_dir(out_dir) as staged:
        adapters = FoldAdapters([local_copy(d) for d in adapter_dirs], stack)
        tensors = merged_tensors(target, classifier.base_model_prefix, _base_tensors(folder), adapters, method, dtype)
        total = _write_shards(tensors, staged, max_shard)
        config.architectures = [type(classifier).__name__]
        config.dtype = dtype
        config.save_pretrained(staged)
        load_tokenizer(folder, trust_remote_code).save_pretrained(staged)
    return {"path": out_dir, "bytes": total, "folds": len(adapter_dirs), "method": method, "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3)}
