"""Honest ensemble numbers: stackers, calibrators and rules are scored on folds they never saw.

Outer loop: for each fold k, fit on the other folds, predict fold k. Inside it, the
calibrator is chosen and fitted on the stacker's inner OOF predictions (the stacker refitted
without each inner fold), so calibration is also judged on data it was not fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prefscale.stack.blend import BlendStacker
from prefscale.stack.calibration import CALIBRATORS, choose_calibrator
from prefscale.stack.data import StackData
from prefscale.stack.degenerate import DegenerateRules
from prefscale.stack.stackers import LogisticStacker

STACKERS = {"lr": LogisticStacker, "blend": BlendStacker}


@dataclass
class NestedResult:
    raw: np.ndarray
    calibrated: np.ndarray
    final: np.ndarray
    calibrators: dict[int, str] = field(default_factory=dict)


def fold_oof(make, logp: np.ndarray, labels: np.ndarray, folds: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Predictions of ``make()`` for every row from a model fitted on the other folds."""
    probs = np.empty(labels.shape)
    for fold in np.unique(folds):
        test = folds == fold
        probs[test] = make().fit(logp[~test], labels[~test], ties[~test]).predict_proba(logp[test])
    return probs


def nested_cv(data: StackData, method: str, calibration: str, degenerate_rules: bool) -> NestedResult:
    make = STACKERS[method]
    result = NestedResult(*(np.empty(data.labels.shape) for _ in range(3)))
    for fold in np.unique(data.folds):
        test, train = data.folds == fold, data.folds != fold
        inner = data.take(np.nonzero(train)[0])
        name, calibrator = calibration, CALIBRATORS["none"]()
        if calibration != "none":
            inner_oof = fold_oof(make, inner.logp, inner.labels, inner.folds, inner.ties)
            if calibration == "auto":
                name, _ = choose_calibrator(inner_oof, inner.labels, inner.folds, inner.ties)
            calibrator = CALIBRATORS[name]().fit(inner_oof, inner.labels, inner.ties)
        result.calibrators[int(fold)] = name
        result.raw[test] = make().fit(inner.logp, inner.labels, inner.ties).predict_proba(data.logp[test])
        result.calibrated[test] = calibrator.predict_proba(result.raw[test])
        rules = DegenerateRules(enabled=degenerate_rules).fit(inner.battles, inner.labels)
        result.final[test] = rules.apply(data.battles.take(np.nonzero(test)[0]), result.calibrated[test])
    return result
