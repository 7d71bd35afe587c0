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
from prefscale.members.estimators import fit_predict
from prefscale.members.fitting import fold_predictions
from prefscale.metrics import class_prior, log_loss
from prefscale.stack.data import StackData
from prefscale.stack.nested import stacker_factory

ENSEMBLE = "ensemble (cheap members)"
PRIOR = "prior (other sources)"


def leave_one_source_out(config: Config, data: StackData) -> dict[str, Any]:
    """{source: {member, ENSEMBLE, PRIOR: log loss on that source}, plus their mean over sources}."""
    import ray

    members = {name: config.members[name] for name in data.members if name in config.members}
    sources = sorted(set(data.datasets))
    if len(sources) < 2 or not members:
        return {}
    task = ray.remote(num_cpus=1)(fit_predict)
    per_source: dict[str, dict[str, float]] = {}
    battles_ref = ray.put(data.battles)
    for source in sources:
        held = data.datasets == source
        rest_rows, held_rows = np.nonzero(~held)[0], np.nonzero(held)[0]
        rest = data.battles.take(rest_rows)
        pending = {name: task.remote(m.kind, dict(m.params), battles_ref, rest_rows, held_rows) for name, m in members.items()}
        rest_oof = np.stack([np.log(np.clip(fold_predictions(m.kind, dict(m.params), rest), 1e-7, 1)) for m in members.values()], axis=1)
        held_probs = {name: ray.get(ref) for name, ref in pending.items()}
        held_logp = np.stack([np.log(np.clip(held_probs[name], 1e-7, 1)) for name in members], axis=1)
        labels, ties = data.labels[held], data.ties[held]
        stacker = stacker_factory(config.stack or StackConfig())().fit(rest_oof, data.labels[~held], data.ties[~held], data.datasets[~held])
        row = {name: log_loss(labels, probs, ties) for name, probs in held_probs.items()}
        row[ENSEMBLE] = log_loss(labels, stacker.predict_proba(held_logp, data.datasets[held]), ties)  # an unseen source: pooled weights
        row[PRIOR] = log_loss(labels, np.broadcast_to(class_prior(data.labels[~held], data.ties[~held]), labels.shape), ties)
        per_source[source] = {k: round(v, 4) for k, v in row.items()}
    names = [*members, ENSEMBLE, PRIOR]
    return {"per_source": per_source, "mean": {n: round(float(np.mean([per_source[s][n] for s in sources])), 4) for n in names},
            "rows": {s: int((data.datasets == s).sum()) for s in sources}}
