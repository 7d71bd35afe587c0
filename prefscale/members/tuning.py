"""Ray Tune search for a cheap member's hyperparameters, with ASHA stopping over folds.

A trial's training iterations are folds: after each one it reports the running OOF log loss,
so ASHA drops poor settings after one or two folds instead of five. Trials take half a CPU.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pyarrow as pa

from prefscale.data import schema
from prefscale.members.estimators import fit_predict
from prefscale.metrics import log_loss
from prefscale.tracking import tune_callbacks


def search_space(kind: str) -> dict[str, Any]:
    from ray import tune

    if kind == "features":
        return {"learning_rate": tune.loguniform(0.02, 0.2), "max_leaf_nodes": tune.randint(7, 32),
                "min_samples_leaf": tune.randint(20, 120), "l2_regularization": tune.loguniform(0.1, 10.0)}
    return {"C": tune.loguniform(0.01, 1.0), "ngram_max": tune.choice([1, 2])}


def _trial(config: dict[str, Any], kind: str, base: dict[str, Any], battles: pa.Table) -> None:
    from ray import tune

    fold = battles.column(schema.FOLD).to_numpy()
    labels = schema.label_matrix(battles)
    seen = np.zeros(len(fold), dtype=bool)
    probs = np.empty(labels.shape)
    for k in np.unique(fold):
        test = np.nonzero(fold == k)[0]
        probs[test] = fit_predict(kind, {**base, **config}, battles, np.nonzero(fold != k)[0], test)[0]
        seen[test] = True
        tune.report({"log_loss": log_loss(labels[seen], probs[seen])})


def tune_member(kind: str, battles: pa.Table, samples: int, base: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The best params of ``samples`` Optuna trials (merged over ``base``)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    base = dict(base or {})
    folds = len(np.unique(battles.column(schema.FOLD).to_numpy()))
    with tempfile.TemporaryDirectory(prefix="prefscale-tune-") as scratch:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, kind=kind, base=base, battles=battles), {"cpu": 0.5}),
            param_space=search_space(kind),
            tune_config=tune.TuneConfig(
                metric="log_loss", mode="min", num_samples=samples, search_alg=OptunaSearch(seed=seed),
                scheduler=ASHAScheduler(max_t=folds, grace_period=1, reduction_factor=2), reuse_actors=True,
            ),
            run_config=tune.RunConfig(name=f"member-{kind}", storage_path=scratch, verbose=0, callbacks=tune_callbacks()),
        )
        results = tuner.fit()
    finished = [r for r in results if r.metrics and r.metrics.get("training_iteration") == folds]
    best = min(finished, key=lambda r: r.metrics["log_loss"])  # ASHA-stopped trials saw fewer folds
    return {**base, **{k: v.item() if hasattr(v, "item") else v for k, v in best.config.items()}}
