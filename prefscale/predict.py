"""Apply a finished run's whole ensemble to new battles and write a Kaggle submission.

Every member predicts (cheap members from their skops fits; neural runs through the Ray Data
engine with the run's TTA, fold models averaged when no merged model exists), then the
stacker, calibrator and rules of <run_dir>/stack turn them into one prediction per battle.
Rows that fail validation go to <out>.rejects.parquet with a reason; none are dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from prefscale.config import Config, load_config
from prefscale.data import schema as S
from prefscale.data.stages import validate_file
from prefscale.data.validate import ValidationOptions
from prefscale.errors import PrefscaleError
from prefscale.io import atomic_path, exists, read_table, resolve
from prefscale.members.oof import member_model_path
from prefscale.members.store import load_estimator
from prefscale.metrics import log_loss
from prefscale.stack.stage import stack_dir

RUN_CONFIG = "config.yaml"


def load_run(run_dir: str) -> tuple[Config, list[str]]:
    """The config a run was made with and its stacked members, or a one-line error saying what is missing."""
    config_path, summary_path = os.path.join(run_dir, RUN_CONFIG), os.path.join(stack_dir(run_dir), "summary.json")
    if not exists(config_path) or not exists(summary_path):
        raise PrefscaleError(f"{run_dir} is not a finished run (needs {RUN_CONFIG} and stack/summary.json); run `prefscale run --config ... --out {run_dir}` first")
    with open(summary_path, encoding="utf-8") as handle:
        members = json.load(handle)["members"]
    return load_config(config_path).model_copy(update={"output_dir": run_dir}), members


def _work_dir(run_dir: str, input_uri: str) -> str:
    """Scratch space keyed by the input's path, size and mtime: a changed input never reuses old scores."""
    fs, path = resolve(input_uri)
    info = fs.get_file_info(path)
    key = hashlib.blake2b(f"{os.path.abspath(path)}|{info.size}|{info.mtime_ns}".encode(), digest_size=6).hexdigest()
    return os.path.join(run_dir, "predict", f"{os.path.basename(path).split('.')[0]}-{key}")


def neural_probs(config: Config, name: str, battles_uri: str, work: str) -> dict[int, np.ndarray]:
    """Probabilities of one train run by id: its merged model, else the mean of its fold models."""
    from prefscale.score.engine import read_parts, run_score_job
    from prefscale.score.jobs import score_job, text_options
    from prefscale.score.models import ScoringModel

    models_dir = os.path.join(config.run_dir, "models", name)
    averaged = os.path.join(models_dir, "averaged")
    paths = [averaged] if os.path.isdir(averaged) else sorted(
        os.path.join(models_dir, d, "model") for d in os.listdir(models_dir) if d.startswith("fold"))
    if not paths:
        raise PrefscaleError(f"train run '{name}' has no models under {models_dir}; rerun its training")
    text = text_options(config, config.train[name].max_length)
    trust = (config.train[name].model or config.model).trust_remote_code
    parts = []
    for i, path in enumerate(paths):  # one job per fold model: each pool needs its own CPUs, so pools never queue
        out = os.path.join(work, "scores", f"{name}-{i}")
        run_score_job(score_job(config, battles_uri, out, [ScoringModel(f"{name}-{i}", path, text, "fp32", trust)], rows=None))
        parts.append(read_parts(out, [S.ID, *S.PROBS]).to_pandas())
    scores = pd.concat(parts).groupby(S.ID).mean()
    return dict(zip(scores.index.to_numpy(), scores.to_numpy(), strict=True))


def predict(run_dir: str, input_uri: str, out_csv: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    config, members = load_run(run_dir)
    work = _work_dir(run_dir, input_uri)
    clean_uri, rejects_uri = os.path.join(work, "clean.parquet"), f"{out_csv}.rejects.parquet"
    validation = validate_file(input_uri, clean_uri, rejects_uri, ValidationOptions(lenient_json=config.data.lenient_json, max_chars=config.data.max_chars))
    battles = read_table(clean_uri)
    if battles.num_rows == 0:
        raise PrefscaleError(f"no valid battles in {input_uri} ({validation['rejected']} rejected, see {rejects_uri})")
    ids = battles.column(S.ID).to_numpy()
    logp = np.empty((len(ids), len(members), 3))
    needs_ray = any(m in config.train for m in members)
    if needs_ray:
        from prefscale.ray_runtime import ensure_ray

        ensure_ray(config.ray.address, config.ray.num_cpus, config.ray.object_store_mb)
    for i, name in enumerate(members):
        if name in config.members:
            probs = load_estimator(member_model_path(run_dir, name)).predict_proba(battles)
        else:
            by_id = neural_probs(config, name, clean_uri, work)
            probs = np.stack([by_id[i_] for i_ in ids])
        logp[:, i] = np.log(np.clip(probs, 1e-7, 1.0))
        log(f"  [{name}] predicted {len(ids)} battles")
    probs = load_estimator(os.path.join(stack_dir(run_dir), "stacker.skops")).predict_proba(logp)
    probs = load_estimator(os.path.join(stack_dir(run_dir), "calibrator.skops")).predict_proba(probs)
    probs = load_estimator(os.path.join(stack_dir(run_dir), "rules.skops")).apply(battles, probs)
    submission = pa.table({S.ID: ids, **{c: probs[:, k] for k, c in enumerate(S.LABEL_COLUMNS)}})
    with atomic_path(out_csv) as (fs, tmp):
        with fs.open_output_stream(tmp) as handle:
            pacsv.write_csv(submission, handle)
    summary: dict[str, Any] = {"run_dir": run_dir, "input": input_uri, "output": out_csv, "predicted": len(ids),
                               "rejected": validation["rejected"], "rejects_path": rejects_uri, "members": members}
    if S.is_labeled(battles):
        summary["log_loss"] = round(log_loss(S.label_matrix(battles), probs), 4)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary
