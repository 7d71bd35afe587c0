"""Leave one source out: how the system does on data unlike its training data, and how far to
trust the ensemble on a source it never saw.

Out-of-fold figures reward recognising which dataset a battle came from, since every source is
in every fold. Here each source is held out in turn: every cheap member is refitted on the
other sources (K-fold OOF there for the stacker, an all-data fit for the held-out source), the
stacker is fitted on those OOF predictions and applied to the held-out source, and the prior
of the other sources is the baseline. Neural runs are not retrained per source (that would
multiply their cost by the number of sources), so this table covers the cheap members and
their stack; it says so in its name.

Sources disagree about what wins (a refusal is preferred in a harmlessness set and a long,
complete answer elsewhere), so a model fitted on some sources is overconfident on another. The
ensemble for an unseen source is therefore a mixture ``w * ensemble + (1 - w) * prior``; ``w``
is the one that predicts left-out sources best. In the table, each held-out source's ``w``
comes from an inner leave-one-source-out over the other sources only (the members refitted
without each of them), so the held-out source's labels choose nothing. ``unseen_weight``,
fitted on every source's outer held-out predictions, says how much of the cheap ensemble is
worth keeping on a source never seen. ``prefscale predict`` does not apply it: the neural runs,
which this table does not refit, are part of the ensemble it serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from prefscale.config import Config, StackConfig
from prefscale.data import schema
from prefscale.members.estimators import fit_predict
from prefscale.members.fitting import collect_fold_fits, submit_fold_fits
from prefscale.metrics import class_prior, log_loss, log_probs, winner_log_loss
from prefscale.stack.data import StackData
from prefscale.stack.nested import stacker_factory

ENSEMBLE = "ensemble (cheap members)"
SHRUNK = "ensemble, unseen-source mixture"
PRIOR = "prior (other sources)"

Held = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (ensemble probs, prior, labels, ties) of one left-out source


def mix_with_prior(probs: np.ndarray, prior: np.ndarray, weight: float) -> np.ndarray:
    """The unseen-source prediction: the ensemble's probabilities pulled toward the class prior."""
    return weight * probs + (1 - weight) * np.broadcast_to(prior, probs.shape)


def fit_unseen_weight(held: list[Held]) -> float:
    """The mixture weight in [0, 1] with the least mean log loss over left-out sources (each source
    counts once, whatever its size: the question is how the next source will go)."""
    def loss(weight: float) -> float:
        return float(np.mean([log_loss(labels, mix_with_prior(probs, prior, weight), ties) for probs, prior, labels, ties in held]))

    return round(float(minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-3}).x), 3)


def leave_one_source_out(config: Config, data: StackData) -> dict[str, Any]:
    """{source: {member, ENSEMBLE, SHRUNK, PRIOR: log loss on that source}}, their mean over sources,
    the same for P(winner | not a tie) alone (does the preference transfer, apart from the tie
    rate?), each source's inner mixture weight, and ``unseen_weight``, the weight for a new source.

    Every fit of every source and member is put in flight before any is collected, so the
    cluster's CPUs stay busy (one source after another left most of them idle)."""
    import ray

    members = {name: config.members[name] for name in data.members if name in config.members}
    sources = sorted(set(data.datasets))
    if len(sources) < 2 or not members:
        return {}
    n = len(data.ids)
    battles_ref, fold = ray.put(data.battles), data.battles.column(schema.FOLD).to_numpy()
    held_fit = ray.remote(num_cpus=1)(fit_predict)
    rows_of = {source: np.nonzero(data.datasets == source)[0] for source in sources}
    inner_sources = {source: [s for s in sources if s != source] if len(sources) > 2 else [] for source in sources}  # two: no inner split

    def without(*left_out: str) -> np.ndarray:
        return np.nonzero(~np.isin(data.datasets, left_out))[0]

    pending, inner = {}, {}
    for source in sources:
        for name, m in members.items():
            pending[source, name] = (submit_fold_fits(m.kind, dict(m.params), battles_ref, fold, without(source)),
                                     held_fit.remote(m.kind, dict(m.params), battles_ref, without(source), rows_of[source]))
            for other in inner_sources[source]:
                inner[source, other, name] = held_fit.remote(m.kind, dict(m.params), battles_ref, without(source, other), rows_of[other])
    per_source: dict[str, dict[str, float]] = {}
    winner: dict[str, dict[str, float]] = {}
    outer: list[Held] = []
    weights: dict[str, float] = {}
    for source in sources:
        held = data.datasets == source
        rest_logp = np.stack([log_probs(collect_fold_fits(pending[source, name][0], n)[0][~held]) for name in members], axis=1)
        stacker = stacker_factory(config.stack or StackConfig())().fit(rest_logp, data.labels[~held], data.ties[~held], data.datasets[~held])
        inner_held = []
        for other in inner_sources[source]:
            logp = np.stack([log_probs(ray.get(inner[source, other, name])[0]) for name in members], axis=1)
            rest, rows = without(source, other), rows_of[other]
            inner_held.append((stacker.predict_proba(logp, data.datasets[rows]), class_prior(data.labels[rest], data.ties[rest]),
                               data.labels[rows], data.ties[rows]))
        weights[source] = fit_unseen_weight(inner_held) if inner_held else 1.0
        held_probs = {name: ray.get(pending[source, name][1])[0] for name in members}
        labels, ties = data.labels[held], data.ties[held]
        ensemble = stacker.predict_proba(np.stack([log_probs(held_probs[name]) for name in members], axis=1), data.datasets[held])
        prior = class_prior(data.labels[~held], data.ties[~held])
        outer.append((ensemble, prior, labels, ties))
        predictions = {**held_probs, ENSEMBLE: ensemble,  # an unseen source: the stacker's pooled weights
                       SHRUNK: mix_with_prior(ensemble, prior, weights[source]), PRIOR: np.broadcast_to(prior, labels.shape)}
        per_source[source] = {name: round(log_loss(labels, probs, ties), 4) for name, probs in predictions.items()}
        winner[source] = {name: round(winner_log_loss(labels, probs), 4) for name, probs in predictions.items()}
    return {"per_source": per_source, "mean": _mean(per_source), "winner_given_not_tie": {"per_source": winner, "mean": _mean(winner)},
            "rows": {s: int(len(rows_of[s])) for s in sources}, "inner_weight": weights, "unseen_weight": fit_unseen_weight(outer)}


def _mean(per_source: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each model's mean over sources (every source counts once)."""
    names = next(iter(per_source.values()))
    return {name: round(float(np.mean([row[name] for row in per_source.values()])), 4) for name in names}
