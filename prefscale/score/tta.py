"""Swap test-time augmentation: combine predictions on (A, B) and on (B, A).

The swapped prediction is mapped back to the original order first. Averaging in probability
space is the winners' choice; logit space is offered for comparison.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from prefscale.data.schema import SWAP_ORDER

TTASpace = Literal["prob", "logit"]


def unswap_probs(probs: np.ndarray) -> np.ndarray:
    """Map predictions made on swapped battles back to the original A/B order."""
    return np.asarray(probs)[..., SWAP_ORDER]


def swap_flips(direct: np.ndarray, swapped_back: np.ndarray) -> np.ndarray:
    """Where the verdict (the most likely of a, b, tie) on (A, B) differs from the verdict on
    (B, A) mapped back to A/B order: the model's position bias, which swap averaging hides."""
    return np.asarray(direct).argmax(axis=-1) != np.asarray(swapped_back).argmax(axis=-1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def combine_swapped(logits: np.ndarray, swapped_logits: np.ndarray, space: TTASpace = "prob") -> np.ndarray:
    """Logits of the combined prediction (log-probabilities for probability space)."""
    back = unswap_probs(swapped_logits)
    if space == "logit":
        return (logits + back) / 2
    return np.log((softmax(logits) + softmax(back)) / 2)
