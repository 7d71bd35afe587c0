"""Honest ensemble numbers: stackers, calibrators and rules are scored on folds they never saw.

Outer loop: for each fold k, fit on the other folds, predict fold k. Inside it, the
calibrator is chosen and fitted on the stacker's inner OOF predictions (the stacker refitted
without each inner fold), so calibration is also judged on data it was not fitted on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefscale.config import StackConfig
from prefscale.stack.blend import BlendStacker
from prefscale.stack.calibration import CALIBRATORS, choose_calibrator
from prefscale.stack.data import StackData
from prefscale.stack.degenerate import DegenerateRules
from prefscale.stack.stackers import LogisticStacker

STACKERS = {"lr": LogisticStacker, "blend": BlendStacker}


def stacker_factory(settings: StackConfig) -> Callable[[], Any]:
    """A zero-argument maker of the configured stacker (blend weights searched per fit by Powell)."""
    if settings.method == "lr":
        return lambda: LogisticStacker(per_source=settings.per_source)
    return STACKERS[settings.method]


@dataclass
class NestedResult:
    raw: np.ndarray
    calibrated: np.ndarray
    final: np.ndarray
    calibrators: dict[int, str] = field(default_factory=dict)


def fold_oof(make, data: StackData) -> np.ndarray:
    """Predictions of ``make()`` for every row from a stacker fitted on the other folds."""
    probs = np.empty(data.labels.shape)
    for fold in np.unique(data.folds):
        test, rest = data.folds == fold, data.folds != fold
        stacker = make().fit(data.logp[rest], data.labels[rest], data.ties[rest], data.datasets[rest])
        probs[test] = stacker.predict_proba(data.logp[test], data.datasets[test])
    return probs


def nested_cv(data: StackData, make: Callable[[], Any], calibration: str, degenerate_rules: bool) -> NestedResult:
    """``make``: a zero-argument stacker maker (stacker_factory)."""
    result = NestedResult(*(np.empty(data.labels.shape) for _ in range(3)))
    for fold in np.unique(data.folds):
        test, train = data.folds == fold, data.folds != fold
        inner = data.take(np.nonzero(train)[0])
        name, calibrator = calibration, CALIBRATORS["none"]()
        if calibration != "none":
            inner_oof = fold_oof(make, inner)
            if calibration == "auto":
                name, _ = choose_calibrator(inner_oof, inner.labels, inner.folds, inner.ties)
            calibrator = CALIBRATORS[name]().fit(inner_oof, inner.labels, inner.ties)
        result.calibrators[int(fold)] = name
        stacker = make().fit(inner.logp, inner.labels, inner.ties, inner.datasets)
        result.raw[test] = stacker.predict_proba(data.logp[test], data.datasets[test])
        result.calibrated[test] = calibrator.predict_proba(result.raw[test])
        rules = DegenerateRules(enabled=degenerate_rules).fit(inner.battles, inner.labels)
        result.final[test] = rules.apply(data.battles.take(np.nonzero(test)[0]), result.calibrated[test])
    return result
