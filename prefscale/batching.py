"""Batches of token ids: formed by a token budget over length-sorted rows, and padded.

Shared by the scoring actors, the training loop and the benchmarks.

A fixed row count wastes compute twice: short rows padded to a long neighbour, and small
batches of short rows. Sorting a block by length and filling each batch up to
``max_tokens`` padded tokens fixes both.
"""

from __future__ import annotations

import numpy as np


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_rows: int = 1024) -> list[np.ndarray]:
    """Row indices per batch; every row appears in exactly one batch."""
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        rows = end - start
        width = int(lengths[order[end - 1]])
        if rows > 1 and (width * rows > max_tokens or rows > max_rows):
            batches.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray], pad_to: int | None = None) -> int:
    """Tokens computed: each batch is padded to its longest row (or to ``pad_to``)."""
    return int(sum(len(b) * (pad_to or int(lengths[b].max())) for b in batches if len(b)))


def pad_batch(sequences: list[list[int]], pad_id: int):
    """Right-padded (input_ids, attention_mask) tensors for one batch of token id lists."""
    import torch

    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, seq in enumerate(sequences):
        ids[k, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[k, : len(seq)] = 1
    return ids, mask
