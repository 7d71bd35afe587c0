"""Apply a finished run's whole ensemble to new battles and write a Kaggle submission.

Every member predicts (cheap members from their skops fits; neural runs through the Ray Data
engine with the model resolver OOF scoring uses: the run's precision, text options and TTA),
then the stacker, calibrator and rules of the run's stack/ turn them into one prediction per
battle. A submission must name every id, so validation salvages unparseable JSON as raw text
(flagged json_salvaged) and a row that still fails it (empty, too long, bad labels, ...) is
predicted at the run's class prior; both are counted in the summary, and every failing row
also goes to <out>.rejects.parquet with its reason. Only a row without a usable id cannot be
in the submission.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from prefscale.artifacts import ALLOWED, label_frame
from prefscale.config import Config, ValidationConfig, load_config
from prefscale.data import schema
from prefscale.data.files import validate_file
from prefscale.data.validate import Rejected, coerce_id, row_protocol
from prefscale.errors import PrefscaleError
from prefscale.io import (
    atomic_path,
    exists,
    read_json,
    read_present_columns,
    read_table,
    resolve,
)
from prefscale.layout import ENSEMBLE, RunLayout
from prefscale.manifest import verify
from prefscale.members.store import load_estimator
from prefscale.metrics import class_prior, log_loss, without_ties


def load_run(run_dir: str, verify_all: bool = False) -> tuple[Config, list[str]]:
    """The config a run was made with and its stacked members, or a one-line error saying what is missing
    (``verify_all``: hash every sealed file, not only those whose size or mtime changed)."""
    layout = RunLayout(run_dir)
    if not exists(layout.config) or not exists(layout.stack_summary):
        raise PrefscaleError(f"{run_dir} is not a finished run (needs config.yaml and stack/summary.json); "
                             f"run `prefscale run --config ... --run-dir {run_dir}` first")
    config = load_config(layout.config).model_copy(update={"output_dir": run_dir})
    verify(config, full=verify_all)
    return config, read_json(layout.stack_summary)["members"]


def _work_key(input_uri: str) -> str:
    """Names predict's scratch space by the input's path, size and mtime: a changed input never reuses old scores."""
    fs, path = resolve(input_uri)
    info = fs.get_file_info(path)
    key = hashlib.blake2b(f"{os.path.abspath(path)}|{info.size}|{info.mtime_ns}".encode(), digest_size=6).hexdigest()
    return f"{os.path.basename(path).split('.')[0]}-{key}"


def neural_probs(config: Config, names: list[str], battles_uri: str, scratch: str) -> dict[str, pd.DataFrame]:
    """Probabilities of train runs, by run name then id: each run's scoring model (averaged, else
    the mean of its fold models), all runs' models scored by one plan (one pass with score.pack_models)."""
    from prefscale.artifacts import read_parts
    from prefscale.score.engine import score_plan
    from prefscale.score.scoring_model import scoring_plan

    run_of = {}
    plan = []
    for name in names:
        for model, settings in scoring_plan(config, name):
            run_of[model.name] = name
            plan.append((model, settings))
    passes = score_plan(battles_uri, plan, lambda label: os.path.join(scratch, "scores", label))
    scores = pd.concat([read_parts(out, [schema.ID, "model", *schema.PROBS]).to_pandas() for out, _ in passes.values()])
    scores["run"] = scores.pop("model").map(run_of)
    return {name: frame.drop(columns="run").groupby(schema.ID).mean() for name, frame in scores.groupby("run")}


def in_process_probs(config: Config, names: list[str], battles: pa.Table) -> dict[str, pd.DataFrame]:
    """neural_probs for a handful of battles, in this process: the same resolver, encoding and
    scorer, without the seconds a Ray cluster and its actors take to start (``compare``)."""
    from prefscale.score.encode import encode_battles
    from prefscale.score.scorer import ModelScorer
    from prefscale.score.scoring_model import scoring_plan
    from prefscale.score.tta import softmax

    found = {}
    for name in names:
        plan = scoring_plan(config, name)
        models, settings = [m for m, _ in plan], plan[0][1]
        scored = ModelScorer(models, settings.max_tokens, threads=os.cpu_count() or 1, tta_space=settings.tta_space)(
            encode_battles(battles, models, settings.tta))
        probs = np.mean([softmax(np.stack([scored.column(m.column(c)).to_numpy() for c in schema.LOGITS], axis=1).astype(np.float64))
                         for m in models], axis=0)
        found[name] = pd.DataFrame(probs, index=scored.column(schema.ID).to_numpy(), columns=list(schema.PROBS))
    return found


def ensemble_probs(config: Config, members: list[str], battles: pa.Table, battles_uri: str, scratch: str,
                   log: Callable[[str], None], in_process: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each member's probabilities (by name) and the ensemble's (stacker, calibrator, rules, then
    each battle's tie protocol) for validated battles (``in_process``: neural members without Ray)."""
    layout = config.layout
    ids = battles.column(schema.ID).to_numpy()
    runs = [m for m in members if m not in config.members]
    by_run: dict[str, pd.DataFrame] = {}
    if runs and in_process:
        by_run = in_process_probs(config, runs, battles)
    elif runs:
        from prefscale.ray_runtime import ensure_ray

        ensure_ray(config.ray)
        by_run = neural_probs(config, runs, battles_uri, scratch)
    by_member: dict[str, np.ndarray] = {}
    for name in members:
        if name in config.members:
            by_member[name] = load_estimator(layout.member_model(name)).predict_proba(battles)
        else:
            by_member[name] = by_run[name].loc[ids, list(schema.PROBS)].to_numpy()
        log(f"  [{name}] predicted {len(ids)} battles")
    return by_member, StackedEnsemble(layout, members).predict_proba(battles, by_member)


class StackedEnsemble:
    """A finished run's stacker, calibrator and rules, loaded once, applied to members' probabilities."""

    def __init__(self, layout: RunLayout, members: list[str], ensemble: str = ENSEMBLE) -> None:
        self.members = members
        self.stacker, self.calibrator, self.rules = (load_estimator(layout.stack_file(f"{n}.skops", ensemble)) for n in ("stacker", "calibrator", "rules"))

    def predict_proba(self, battles: pa.Table, by_member: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities under each battle's tie protocol."""
        logp = np.log(np.clip(np.stack([by_member[m] for m in self.members], axis=1), 1e-7, 1.0))
        probs = self.calibrator.predict_proba(self.stacker.predict_proba(logp, schema.battle_sources(battles)))
        return without_ties(self.rules.apply(battles, probs), schema.ties_allowed(battles))


def prior_for_rejects(layout: RunLayout, rejects_uri: str, predicted: set[int], options: ValidationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ids of rejected rows that have a usable id (and no prediction yet) with the run's class
    prior under each row's protocol: a submission still names them."""
    rejects = read_table(rejects_uri)
    if rejects.num_rows == 0 or schema.ID not in rejects.column_names:
        return np.empty(0, dtype=np.int64), np.empty((0, 3))
    training = label_frame(read_present_columns(layout.battles, [schema.ID, *schema.LABEL_COLUMNS, schema.TIES]))  # never the texts
    prior = class_prior(training[list(schema.LABEL_COLUMNS)].to_numpy(), training[ALLOWED].to_numpy(dtype=bool))
    ids, allowed = [], []
    for row in rejects.to_pylist():
        try:
            battle_id = coerce_id(row.get(schema.ID))
        except Rejected:
            continue
        if battle_id not in predicted:
            predicted.add(battle_id)
            ids.append(battle_id)
            allowed.append(row_protocol(row, options) != "none")
    probs = without_ties(np.tile(prior, (len(ids), 1)), np.asarray(allowed, dtype=bool)) if ids else np.empty((0, 3))
    return np.asarray(ids, dtype=np.int64), probs


def predict(run_dir: str, input_uri: str, out_csv: str, log: Callable[[str], None] = print, ties: str | None = None,
            verify_all: bool = False) -> dict[str, Any]:
    """``ties`` states the label protocol of the new battles ('allowed' or 'none'; a ``ties``
    column wins); None keeps the run's data.ties mapping by source. Forced choice puts no mass on tie."""
    started = time.perf_counter()
    config, members = load_run(run_dir, verify_all)
    layout = config.layout
    work_key = _work_key(input_uri)
    clean_uri, rejects_uri = layout.predict_work(work_key, "clean.parquet"), f"{out_csv}.rejects.parquet"
    validation_options = config.data.model_copy(update={"lenient_json": True, **({} if ties is None else {"ties": {}, "default_ties": ties})})
    validation = validate_file(input_uri, clean_uri, rejects_uri, validation_options, predicting=True)
    battles = read_table(clean_uri)
    if battles.num_rows == 0:
        raise PrefscaleError(f"no valid battles in {input_uri} ({validation['rejected']} rejected, see {rejects_uri})")
    ids = battles.column(schema.ID).to_numpy()
    probs = ensemble_probs(config, members, battles, clean_uri, layout.predict_work(work_key), log)[1]
    allowed = schema.ties_allowed(battles)
    fallback_ids, fallback_probs = prior_for_rejects(layout, rejects_uri, set(ids.tolist()), validation_options)
    submission = pa.table({schema.ID: np.concatenate([ids, fallback_ids]).astype(np.int64),
                           **{c: np.concatenate([probs[:, k], fallback_probs[:, k]]) for k, c in enumerate(schema.LABEL_COLUMNS)}})
    with atomic_path(out_csv) as (fs, tmp):
        with fs.open_output_stream(tmp) as handle:
            pacsv.write_csv(submission, handle)
    summary: dict[str, Any] = {"run_dir": run_dir, "input": input_uri, "output": out_csv, "predicted": len(ids),
                               "salvaged_json": validation["flags"].get("json_salvaged", 0), "rejected": validation["rejected"],
                               "predicted_at_prior": len(fallback_ids), "submission_rows": submission.num_rows, "rejects_path": rejects_uri,
                               "members": members, "forced_choice": int((~allowed).sum()),
                               "too_long": validation["flags"].get("too_long", 0),  # predicted on the token budget's cut, as in training
                               "unscored_labels": validation["flags"].get("unscored_label", 0)}  # tie labels their protocol forbids
    labels = schema.label_matrix(battles)
    scored = ~np.isnan(labels).any(axis=1)
    if scored.any():
        summary["log_loss"] = round(log_loss(labels[scored], probs[scored], allowed[scored]), 4)
        summary["scored_rows"] = int(scored.sum())
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _as_turns(value: Any, field: str) -> str:
    """A battle's text as the Arena's JSON list of turns (plain text is one turn)."""
    if isinstance(value, str):
        return json.dumps([value])
    if isinstance(value, list) and all(isinstance(turn, str) for turn in value):
        return json.dumps(value)
    raise PrefscaleError(f"battle field '{field}' must be text or a list of texts (turns), got {type(value).__name__}")


IN_PROCESS_BATTLES = 64  # compare scores up to this many battles without starting Ray


def compare(run_dir: str, battles: list[dict[str, Any]], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """A finished run's A / B / tie probabilities, and each member's, for battles given as text
    (prompt, response_a, response_b; optional id, dataset, ties): a quick look, nothing kept."""
    config, members = load_run(run_dir)
    rows = []
    for index, battle in enumerate(battles):
        missing = [f for f in ("prompt", "response_a", "response_b") if f not in battle]
        if missing:
            raise PrefscaleError(f"battle {index + 1} lacks {', '.join(missing)}; give prompt, response_a and response_b")
        rows.append({schema.ID: int(battle.get("id", index)), "dataset": battle.get("dataset"), schema.TIES: battle.get("ties"),
                     **{f: _as_turns(battle[f], f) for f in ("prompt", "response_a", "response_b")}})
    with tempfile.TemporaryDirectory(prefix="prefscale-compare-") as scratch:
        source, clean_uri, rejects_uri = (os.path.join(scratch, f"{n}.parquet") for n in ("input", "clean", "rejects"))
        table = pa.Table.from_pylist(rows)
        pq.write_table(table.select([c for c in table.column_names if table.column(c).null_count < len(rows)]), source)
        validate_file(source, clean_uri, rejects_uri, config.data.model_copy(update={"lenient_json": True}), predicting=True)
        clean, rejected = read_table(clean_uri), read_table(rejects_uri)
        # A few battles are scored in this process: a Ray cluster's start would be most of the answer's time.
        small = clean.num_rows <= IN_PROCESS_BATTLES
        by_member, probs = ensemble_probs(config, members, clean, clean_uri, scratch, log, in_process=small) if clean.num_rows else ({}, np.empty((0, 3)))
    position = {int(i): k for k, i in enumerate(clean.column(schema.ID).to_pylist())}
    reasons = dict(zip(rejected.column(schema.ID).to_pylist(), rejected.column("reject_reason").to_pylist(), strict=True)) if rejected.num_rows else {}
    results = []
    for row in rows:
        k = position.get(row[schema.ID])
        if k is None:
            results.append({"id": row[schema.ID], "rejected": reasons.get(row[schema.ID], "rejected")})
            continue
        as_dict = lambda p: dict(zip(schema.CLASSES, (round(float(x), 4) for x in p), strict=True))  # noqa: E731
        results.append({"id": row[schema.ID], "ensemble": as_dict(probs[k]), "members": {m: as_dict(p[k]) for m, p in by_member.items()}})
    return results
