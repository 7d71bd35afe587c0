"""The competition metric, in one place."""

from __future__ import annotations

import numpy as np


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of (n, 3) label distributions under (n, 3) predicted probabilities."""
    return float(-(labels * np.log(np.clip(probs, 1e-15, 1.0))).sum(axis=1).mean())


def out_of_fold_prior(labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each row predicted by the class balance of the other folds: the honest baseline for OOF
    logits, which never see their own fold's labels (the all-data prior does)."""
    probs = np.empty_like(labels, dtype=np.float64)
    for fold in np.unique(folds):
        held = folds == fold
        probs[held] = labels[~held].mean(axis=0) if (~held).any() else labels.mean(axis=0)
    return probs
