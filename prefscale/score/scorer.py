"""The actor stage: model replicas loaded once per actor, scoring token ids in token-budget batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from prefscale.artifacts import SWAP_FLIP
from prefscale.batching import pad_batch, token_budget_batches
from prefscale.data.schema import LOGITS
from prefscale.devices import torch_device
from prefscale.memory import peak_rss_bytes
from prefscale.score.encode import IDS, IDS_SWAPPED, encode_battles
from prefscale.score.scoring_model import ScoringModel
from prefscale.score.tta import TTASpace, combine_swapped, swap_flips, unswap_probs


ACTOR_RSS = "actor_peak_rss"  # per output block: the actor's peak resident bytes so far (the score summary keeps the largest)


class _Replica:
    """One base loaded once (quantized per config), the fold adapters over it, and its padding id.

    Every adapter of a pass shares the replica's one base (peft multi-adapter): a 70B base in
    4 bits holds all five of its fold adapters, where merged fold models would be five 70B copies.
    An adapter's base is loaded as training loaded it (``load_base``), so a QLoRA fold is scored
    as nf4(W) + its adapter, the forward pass it was trained with."""

    def __init__(self, models: list[ScoringModel], device: str) -> None:
        from prefscale.models.loading import (
            dynamic_int8,
            load_classifier,
            load_tokenizer,
            quantization_kwargs,
        )
        from prefscale.models.lora import load_base, with_adapters

        first = models[0]
        # int8 on a CPU actor is PyTorch's dynamic int8 over the fp32 weights, not bitsandbytes
        cpu_int8 = first.precision == "int8" and device == "cpu"
        precision = "fp32" if cpu_int8 else first.precision
        kwargs = quantization_kwargs(precision)
        quantized = "quantization_config" in kwargs
        device_map = {"": 0 if device == "cuda" else "cpu"}
        adapters = {m.name: m.adapter for m in models if m.adapter}
        if adapters:
            self.model = with_adapters(load_base(first.path, precision, first.trust_remote_code, device_map), adapters)
            if merged(first, device):  # one adapter, merged into its own fp32 copy: no LoRA branch in the forward
                self.model = self.model.merge_and_unload()
                self.merged = True
        else:
            self.model = load_classifier(first.path, first.trust_remote_code, **kwargs, **({"device_map": device_map} if quantized else {}))
        self.model.eval()
        if not quantized:
            self.model.to(device)
        if cpu_int8:
            self.model = dynamic_int8(self.model)
        self.pad_id = load_tokenizer(first.path, first.trust_remote_code).pad_token_id

    merged = False

    def use(self, model: ScoringModel) -> None:
        """Make ``model``'s adapter the one the next forward runs."""
        if model.adapter and not self.merged:
            self.model.set_adapter(model.name)


def merged(model: ScoringModel, device: str) -> bool:
    """Whether a fold adapter is merged into a copy of its base of its own: on CPU at fp32 (or int8, made
    from fp32), where models are small and the unmerged LoRA branch cost about as much again per forward.
    Elsewhere one base serves every adapter (a 70B base is not copied per fold)."""
    return device == "cpu" and model.precision in ("fp32", "int8") and model.adapter is not None


def _replicas(models: list[ScoringModel], device: str) -> dict[str, _Replica]:
    """{model name: its replica}; models over the same base at the same precision share one."""
    groups: dict[tuple, list[ScoringModel]] = {}
    for model in models:
        key = (model.path, model.precision, model.trust_remote_code, model.adapter if merged(model, device) else model.adapter is not None)
        groups.setdefault(key, []).append(model)
    found = {}
    for group in groups.values():
        replica = _Replica(group, device)
        found |= {m.name: replica for m in group}
    return found


class ModelScorer:
    """Holds one replica of each model it is given and scores every block sent to it with each.

    Several models in one actor share one Python and torch runtime: a cascade stage that
    averages six fold models costs one process, not six."""

    def __init__(self, models: list[ScoringModel], max_tokens: int, threads: int, use_gpu: bool = False, tta_space: TTASpace = "prob",
                 encode: tuple[list[ScoringModel], bool] | None = None, rehearse: bool = False) -> None:
        """``encode``: (models, tta) to tokenize each block for before scoring it, when no
        separate tokenizer stage runs (CPU scoring)."""
        import torch

        from prefscale.ray_runtime import quiet_libraries

        quiet_libraries()
        torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch_device(use_gpu, "a scorer actor (score.gpus_per_actor > 0)", rehearse=rehearse).type
        self.models = models
        self.replicas = _replicas(models, self.device)
        self.max_tokens = max_tokens
        self.tta_space = tta_space
        self.encode = encode

    def _logits(self, model: ScoringModel, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Logits per sequence, and the padded width each was computed at."""
        replica = self.replicas[model.name]
        replica.use(model)
        lengths = np.array([len(s) for s in sequences])
        logits = np.full((len(sequences), 3), np.nan, dtype=np.float32)
        widths = np.zeros(len(sequences), dtype=np.int32)
        live = np.flatnonzero(lengths > 0)
        torch = self.torch
        with torch.inference_mode():
            for batch in token_budget_batches(lengths[live], self.max_tokens):
                rows = live[batch]
                ids, mask = pad_batch([sequences[row] for row in rows], replica.pad_id)
                # use_cache=False: a classifier reads one forward; a KV cache would only take memory (GBs for a 70B batch)
                out = replica.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False).logits
                logits[rows] = out.float().cpu().numpy()
                widths[rows] = ids.shape[1]
        return logits, widths

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.encode is not None:
            batch = encode_battles(batch, *self.encode)
        for model in self.models:
            batch = self._score(model, batch)
        if ACTOR_RSS in batch.column_names:  # a cascade's second neural stage: one figure per actor
            batch = batch.drop_columns([ACTOR_RSS])
        return batch.append_column(ACTOR_RSS, pa.array([peak_rss_bytes()] * batch.num_rows, pa.int64()))

    def _score(self, m: ScoringModel, batch: pa.Table) -> pa.Table:
        sequences = batch.column(m.column(IDS)).to_pylist()
        n = len(sequences)
        tta = m.column(IDS_SWAPPED) in batch.column_names
        if tta:  # both orders sorted and batched together: one sort over twice the rows pads less
            sequences += batch.column(m.column(IDS_SWAPPED)).to_pylist()
            batch = batch.drop_columns([m.column(IDS_SWAPPED)])
        logits, widths = self._logits(m, sequences)
        real = np.array([len(s) for s in sequences], dtype=np.int64)
        flips = pa.nulls(n, pa.bool_())
        if tta:
            flips = pa.array(swap_flips(logits[:n], unswap_probs(logits[n:])))
            logits = combine_swapped(logits[:n], logits[n:], self.tta_space)
            widths, real = widths[:n] + widths[n:], real[:n] + real[n:]
        batch = batch.drop_columns([m.column(IDS)])
        for i, name in enumerate(LOGITS):
            batch = batch.append_column(m.column(name), pa.array(logits[:, i], pa.float32()))
        batch = batch.append_column(m.column(SWAP_FLIP), flips)
        batch = batch.append_column(m.column("tokens"), pa.array(real, pa.int32()))
        return batch.append_column(m.column("computed_tokens"), pa.array(widths, pa.int32()))
