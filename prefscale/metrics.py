"""The competition metric and its baselines, in one place, under each battle's label protocol.

A battle whose judges could not answer "tie" (forced choice, ``ties`` False) is scored by
the likelihood of its winner given "not a tie": p_a / (p_a + p_b). Every fitted component
(members, neural loss, stacker, calibrators) minimises this same quantity, so forced-choice
sources never teach a model that ties do not happen.
"""

from __future__ import annotations

import numpy as np


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Log probabilities, clipped at 1e-7 so a confident zero stays finite."""
    return np.log(np.clip(probs, 1e-7, 1.0))


def without_ties(probs: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    """Rows where ``ties`` is False (every row when None) renormalised over A and B, tie at 0."""
    pair = probs[:, :2] / np.clip(probs[:, :2].sum(axis=1, keepdims=True), 1e-15, None)
    forced = np.column_stack([pair, np.zeros(len(probs))])
    return forced if ties is None else np.where(np.asarray(ties, dtype=bool)[:, None], probs, forced)


def log_loss(labels: np.ndarray, probs: np.ndarray, ties: np.ndarray | None = None) -> float:
    """Mean cross-entropy of (n, 3) label distributions; forced-choice rows (``ties`` False) conditionally."""
    if ties is not None and not np.all(ties):
        probs = without_ties(probs, ties)
    return float(-(labels * np.log(np.clip(probs, 1e-15, 1.0))).sum(axis=1).mean())


def winner_log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Log loss of P(winner | not a tie) over the battles not judged a tie: whether a model knows
    which answer wins, apart from how often it expects ties."""
    decisive = labels[:, 2] == 0
    return log_loss(labels[decisive], probs[decisive], np.zeros(int(decisive.sum()), dtype=bool))


def class_prior(labels: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    """The constant prediction of maximum protocol likelihood: the tie share of battles that
    allowed ties, and the A/B split of every battle's decisive label mass."""
    if ties is None or np.all(ties):
        return labels.mean(axis=0)
    allowed = np.asarray(ties, dtype=bool)
    tie = labels[allowed, 2].mean() if allowed.any() else 0.0
    decisive = labels[:, :2].sum(axis=0)
    return np.array([*((1 - tie) * decisive / max(decisive.sum(), 1e-15)), tie])


def out_of_fold_prior(labels: np.ndarray, folds: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    """Each row predicted by the class balance of the other folds: the honest baseline for OOF
    logits, which never see their own fold's labels (the all-data prior does)."""
    probs = np.empty_like(labels, dtype=np.float64)
    for fold in np.unique(folds):
        held = folds == fold
        rest = ~held if (~held).any() else np.ones_like(held)
        probs[held] = class_prior(labels[rest], None if ties is None else ties[rest])
    return probs
