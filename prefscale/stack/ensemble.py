"""The stacking stage: nested-CV numbers, the final fitted ensemble, and the Tune-vs-Powell check.

Writes the layout's stack/: stacker.skops, calibrator.skops, rules.skops (what `prefscale
predict` applies), oof.parquet (honest outer-fold ensemble predictions) and summary.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from prefscale.config import Config, StackConfig
from prefscale.data import schema
from prefscale.errors import PrefscaleError
from prefscale.io import write_json, write_table
from prefscale.layout import CHEAP_ENSEMBLE, ENSEMBLE
from prefscale.members.store import save_estimator
from prefscale.metrics import log_loss
from prefscale.stack.blend import BlendStacker, blend_loss, powell_weights
from prefscale.stack.calibration import CALIBRATORS, choose_calibrator
from prefscale.stack.data import StackData, load_stack_data
from prefscale.stack.degenerate import DegenerateRules
from prefscale.stack.nested import nested_cv, stacker_factory


def blend_search(data: StackData, settings: StackConfig) -> dict[str, Any]:
    """Powell and Ray Tune on the same in-sample blend objective (the 0.001 agreement check)."""
    from prefscale.stack.tune_blend import tune_blend_weights

    started = time.perf_counter()
    powell = powell_weights(data.logp, data.labels, data.ties)
    powell_s = time.perf_counter() - started
    tuned = tune_blend_weights(data.logp, data.labels, settings.tune_samples, seed=settings.seed, ties=data.ties)
    powell_loss = blend_loss(powell, data.logp, data.labels, data.ties)
    return {
        "powell": {"weights": dict(zip(data.members, np.round(powell, 4).tolist(), strict=True)), "log_loss": round(powell_loss, 5),
                   "seconds": round(powell_s, 1)},
        "tune": {"weights": dict(zip(data.members, np.round(tuned["weights"], 4).tolist(), strict=True)), "log_loss": round(tuned["log_loss"], 5),
                 "trials": tuned["trials"], "seconds": round(time.perf_counter() - started - powell_s, 1)},
        "tune_minus_powell": round(tuned["log_loss"] - powell_loss, 5),
        "_tuned_weights": tuned["weights"],
    }


def _finish(layout, ensemble: str, data: StackData, settings: StackConfig, nested, stacker) -> dict[str, Any]:
    """Choose and fit the calibrator and rules on all battles, and save the ensemble with its nested-CV OOF."""
    summary: dict[str, Any] = {}
    calibrator_name = settings.calibration
    if calibrator_name == "auto":
        calibrator_name, summary["calibrator_cv"] = choose_calibrator(nested.raw, data.labels, data.folds, data.ties)
    calibrator = CALIBRATORS[calibrator_name]().fit(nested.raw, data.labels, data.ties)
    rules = DegenerateRules(enabled=settings.degenerate_rules).fit(data.battles, data.labels)
    summary.update({"calibrator": calibrator_name, "degenerate_rules": rules.rules_, "degenerate_counts": rules.counts_})
    for name, obj in (("stacker", stacker), ("calibrator", calibrator), ("rules", rules)):
        save_estimator(obj, layout.stack_file(f"{name}.skops", ensemble))
    write_table(pa.table({
        schema.ID: data.ids, schema.FOLD: data.folds, schema.SOURCE: data.datasets.astype(str),
        schema.TIES: np.where(data.ties, "allowed", "none"),
        **{f"{kind}_{c}": nested_probs[:, i].astype(np.float32) for kind, nested_probs in (("raw", nested.raw), ("calibrated", nested.calibrated), ("final", nested.final))
           for i, c in enumerate(schema.CLASSES)},
    }), layout.stack_file("oof.parquet", ensemble))
    return summary


def cheap_ensemble(config: Config, data: StackData, settings: StackConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """The same stacker over the cheap members only: a cascade's first stage that costs no neural model."""
    members = [m for m in data.members if m in config.members]
    if not members:
        raise PrefscaleError(f"cascade.stages names {CHEAP_ENSEMBLE}, but the stack has no cheap member; add one under members")
    cheap = data.select(members)
    log(f"  [stack] {CHEAP_ENSEMBLE}: the stacker over {', '.join(members)} only")
    nested = nested_cv(cheap, stacker_factory(settings), settings.calibration, settings.degenerate_rules)
    stacker = stacker_factory(settings)().fit(cheap.logp, cheap.labels, cheap.ties, cheap.datasets)
    result = _finish(config.layout, CHEAP_ENSEMBLE, cheap, settings, nested, stacker)
    return {"members": members, "nested_cv_final": round(log_loss(cheap.labels, nested.final, cheap.ties), 4), "calibrator": result["calibrator"]}


def run_stack(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    settings = config.stack or StackConfig()
    started = time.perf_counter()
    layout = config.layout
    data = load_stack_data(layout, config.stack_members())
    log(f"  [stack] nested CV over {len(np.unique(data.folds))} folds: {len(data.ids)} battles, members {', '.join(data.members)}")
    nested = nested_cv(data, stacker_factory(settings), settings.calibration, settings.degenerate_rules)
    summary: dict[str, Any] = {
        "members": data.members, "rows": len(data.ids), "method": settings.method,
        "member_log_loss": {m: round(log_loss(data.labels, np.exp(data.logp[:, i]), data.ties), 4) for i, m in enumerate(data.members)},
        "nested_cv": {
            "stacked": round(log_loss(data.labels, nested.raw, data.ties), 4),
            "stacked_calibrated": round(log_loss(data.labels, nested.calibrated, data.ties), 4),
            "final": round(log_loss(data.labels, nested.final, data.ties), 4),
            "calibrator_per_fold": nested.calibrators,
        },
    }
    if settings.leave_one_source_out:
        from prefscale.stack.transfer import leave_one_source_out

        log(f"  [stack] leave one source out: cheap members and stacker refitted without each of {len(np.unique(data.datasets))} sources")
        summary["leave_one_source_out"] = leave_one_source_out(config, data)
    log(f"  [stack] blend-weight search: Powell, then {settings.tune_samples} Ray Tune trials")
    search = blend_search(data, settings)
    tuned_weights = search.pop("_tuned_weights")
    summary["blend_search"] = search
    stacker = BlendStacker(tuned_weights if settings.blend_search == "tune" else None) if settings.method == "blend" else stacker_factory(settings)()
    stacker.fit(data.logp, data.labels, data.ties, data.datasets)
    summary.update(_finish(layout, ENSEMBLE, data, settings, nested, stacker))
    if config.cascade and CHEAP_ENSEMBLE in config.cascade.stages:
        summary[CHEAP_ENSEMBLE] = cheap_ensemble(config, data, settings, log)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(summary, layout.stack_summary)
    log(f"  stacked OOF log loss {summary['nested_cv']['final']} (nested CV) vs best member {min(summary['member_log_loss'].values())}; "
        f"Tune {search['tune']['log_loss']} vs Powell {search['powell']['log_loss']}")
    return summary
