"""Fit each cheap member per fold (Ray tasks, one per fold) for OOF logits, then on all battles.

Outputs: the layout's oof(name) (same columns as the neural OOF) and the all-data fit at
member_model(name), which `prefscale predict` applies to new battles. Reruns skip members
whose two outputs exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from prefscale.artifacts import oof_metrics, oof_table
from prefscale.config import Config, MemberConfig
from prefscale.data import schema
from prefscale.io import exists, read_table, write_table
from prefscale.members.estimators import fit_predict, make_member
from prefscale.members.store import save_estimator


def submit_fold_fits(kind: str, params: dict[str, Any], battles_ref: Any, fold: np.ndarray, rows: np.ndarray) -> list[tuple[np.ndarray, Any]]:
    """One Ray task per fold among ``rows`` (indices into the table behind ``battles_ref``): fit
    on the rows of the other folds, predict the fold's rows. Returns (test rows, result ref) pairs,
    so a caller can put many members' or splits' fits in flight at once before collecting any."""
    import ray

    task = ray.remote(num_cpus=1)(fit_predict)
    fits = []
    for k in sorted(set(fold[rows].tolist())):
        in_fold = fold[rows] == k
        fits.append((rows[in_fold], task.remote(kind, params, battles_ref, rows[~in_fold], rows[in_fold])))
    return fits


def collect_fold_fits(fits: list[tuple[np.ndarray, Any]], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_rows, 3) probabilities from ``submit_fold_fits`` (rows no fold predicted stay NaN), and
    where each row's two single-order verdicts flip."""
    import ray

    probs, flips = np.full((n_rows, 3), np.nan), np.zeros(n_rows, dtype=bool)
    for test, (fold_probs, fold_flips) in zip([test for test, _ in fits], ray.get([ref for _, ref in fits]), strict=True):
        probs[test], flips[test] = fold_probs, fold_flips
    return probs, flips


def fold_predictions(kind: str, params: dict[str, Any], battles: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """OOF probabilities (and swap flips) for every battle, the folds fitted in parallel as Ray tasks."""
    import ray

    fits = submit_fold_fits(kind, params, ray.put(battles), battles.column(schema.FOLD).to_numpy(), np.arange(battles.num_rows))
    return collect_fold_fits(fits, battles.num_rows)


def train_member(config: Config, name: str, member: MemberConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    layout = config.layout
    battles = read_table(layout.battles)
    out, model_out = layout.oof(name), layout.member_model(name)
    params = dict(member.params)
    if exists(out) and exists(model_out):
        log(f"  [{name}] done earlier; delete {out} to refit")
        return {"name": name, "skipped": True, **oof_metrics(read_table(out), battles)}
    if member.tune_samples:
        from prefscale.members.tuning import tune_member

        params = tune_member(member.kind, battles, member.tune_samples, base=params, seed=0)
        log(f"  [{name}] tuned params {params}")
    probs, flips = fold_predictions(member.kind, params, battles)
    oof = oof_table(battles.column(schema.ID).to_numpy(), battles.column(schema.FOLD).to_numpy(), name, probs, flips)
    write_table(oof, out)
    save_estimator(make_member(member.kind, params).fit(battles, schema.label_matrix(battles)), model_out)
    summary = {"name": name, "kind": member.kind, "params": params, "oof_path": out, "model_path": model_out,
               "oof_rows": oof.num_rows, **oof_metrics(oof, battles), "seconds": round(time.perf_counter() - started, 1)}
    log(f"  [{name}] OOF log loss {summary['oof_log_loss']} in {summary['seconds']}s")
    return summary

