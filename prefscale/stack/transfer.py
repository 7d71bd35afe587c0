"""Leave one source out: how the system does on data unlike its training data.

Out-of-fold figures reward recognising which dataset a battle came from, since every source is
in every fold. Here each source is held out in turn: every cheap member is refitted on the
other sources (K-fold OOF there for the stacker, an all-data fit for the held-out source), the
stacker is fitted on those OOF predictions and applied to the held-out source, and the prior
of the other sources is the baseline. Neural runs are not retrained per source (that would
multiply their cost by the number of sources), so this table covers the cheap members and
their stack; it says so in its name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prefscale.config import Config, StackConfig
from prefscale.data import schema
from prefscale.members.estimators import fit_predict
from prefscale.members.fitting import collect_fold_fits, submit_fold_fits
from prefscale.metrics import class_prior, log_loss, log_probs
from prefscale.stack.data import StackData
from prefscale.stack.nested import stacker_factory

ENSEMBLE = "ensemble (cheap members)"
PRIOR = "prior (other sources)"


def leave_one_source_out(config: Config, data: StackData) -> dict[str, Any]:
    """{source: {member, ENSEMBLE, PRIOR: log loss on that source}, plus their mean over sources}.

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
    pending = {}
    for source in sources:
        rest_rows, held_rows = np.nonzero(data.datasets != source)[0], np.nonzero(data.datasets == source)[0]
        for name, m in members.items():
            pending[source, name] = (submit_fold_fits(m.kind, dict(m.params), battles_ref, fold, rest_rows),
                                     held_fit.remote(m.kind, dict(m.params), battles_ref, rest_rows, held_rows))
    per_source: dict[str, dict[str, float]] = {}
    for source in sources:
        held = data.datasets == source
        rest_logp = np.stack([log_probs(collect_fold_fits(pending[source, name][0], n)[0][~held]) for name in members], axis=1)
        held_probs = {name: ray.get(pending[source, name][1])[0] for name in members}
        held_logp = np.stack([log_probs(held_probs[name]) for name in members], axis=1)
        labels, ties = data.labels[held], data.ties[held]
        stacker = stacker_factory(config.stack or StackConfig())().fit(rest_logp, data.labels[~held], data.ties[~held], data.datasets[~held])
        row = {name: log_loss(labels, probs, ties) for name, probs in held_probs.items()}
        row[ENSEMBLE] = log_loss(labels, stacker.predict_proba(held_logp, data.datasets[held]), ties)  # an unseen source: pooled weights
        row[PRIOR] = log_loss(labels, np.broadcast_to(class_prior(data.labels[~held], data.ties[~held]), labels.shape), ties)
        per_source[source] = {k: round(v, 4) for k, v in row.items()}
    names = [*members, ENSEMBLE, PRIOR]
    return {"per_source": per_source, "mean": {n: round(float(np.mean([per_source[s][n] for s in sources])), 4) for n in names},
            "rows": {s: int((data.datasets == s).sum()) for s in sources}}
