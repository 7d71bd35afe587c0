"""The main job: every stage that exists, chained from one config, with per-stage timings.

Stages talk only through Parquet files in the run directory, so each can be rerun alone:
validate -> split (dedup + folds) -> unlabeled pairs -> cheap members -> train runs (teachers,
then distilled students; OOF from the Ray Data engine) -> pseudolabels -> stacking and
calibration -> report. The config is saved beside the outputs for `prefscale predict`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import yaml

from prefscale.config import Config
from prefscale.data import schema as S
from prefscale.data.pairs import PairOptions
from prefscale.data.stages import make_pairs, split, validate_file
from prefscale.data.validate import ValidationOptions
from prefscale.io import read_table, write_bytes, write_json
from prefscale.metrics import log_loss
from prefscale.ray_runtime import ensure_ray
from prefscale.score.jobs import text_options
from prefscale.score.models import ScoringModel

def _stem(uri: str) -> str:
    return os.path.basename(uri.rstrip("/")).split(".")[0]


def _timed(name: str, timings: dict[str, float], log: Callable[[str], None], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    log(f"[{name}] ...")
    started = time.perf_counter()
    result = work()
    timings[name] = round(time.perf_counter() - started, 2)
    log(f"[{name}] done in {timings[name]:.1f}s")
    return result


def save_config(config: Config) -> None:
    write_bytes(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode(), os.path.join(config.run_dir, "config.yaml"))


def prepare_battles(config: Config, timings: dict[str, float], log: Callable[[str], None] = print) -> dict[str, Any]:
    """validate every training input, then split: <run_dir>/battles.parquet with folds."""
    out = config.run_dir
    stages: dict[str, Any] = {}
    options = ValidationOptions(lenient_json=config.data.lenient_json, max_chars=config.data.max_chars)
    clean_paths = []
    for uri in config.data.train:
        clean = os.path.join(out, "validated", f"{_stem(uri)}.parquet")
        rejects = os.path.join(out, "rejects", f"{_stem(uri)}.parquet")
        result = _timed(f"validate:{_stem(uri)}", timings, log, lambda: validate_file(uri, clean, rejects, options))
        stages[f"validate:{_stem(uri)}"] = result
        log(f"  {result['rows']} rows: {result['clean']} clean, {result['rejected']} rejected {result['reasons']}")
        clean_paths.append(clean)

    battles = os.path.join(out, "battles.parquet")
    result = _timed("split", timings, log, lambda: split(
        clean_paths, battles, os.path.join(out, "rejects", "duplicates.parquet"),
        folds=config.data.folds, seed=config.data.fold_seed, dedup=config.data.dedup, merge_labels=config.data.merge_duplicate_labels,
    ))
    stages["split"] = result
    log(f"  {result['kept']} battles in {result['folds']} folds {result['fold_sizes']}, {result['duplicates']} duplicates")
    return stages


def run(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    out = config.run_dir
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"name": config.name, "run_dir": out, "stages": {}}
    save_config(config)
    summary["stages"].update(prepare_battles(config, timings, log))
    battles = os.path.join(out, "battles.parquet")

    if config.data.unlabeled:
        pairs_out = os.path.join(out, "unlabeled_pairs.parquet")
        result = _timed("pairs", timings, log, lambda: make_pairs(config.data.unlabeled, pairs_out, PairOptions(**config.pairs.model_dump())))
        summary["stages"]["pairs"] = result
        log(f"  {result['pairs_written']} unlabeled battles")

    ensure_ray(config.ray.address, config.ray.num_cpus, config.ray.object_store_mb)
    if config.members:
        from prefscale.members.oof import train_member

        for name, member in config.members.items():
            summary["stages"][f"member:{name}"] = _timed(f"member:{name}", timings, log, lambda name=name, member=member: train_member(config, name, member, log))
    if config.train:
        from prefscale.train.kfold import train_run

        for name in config.train_order():
            result = _timed(f"train:{name}", timings, log, lambda name=name: train_run(config, name, log))
            summary["stages"][f"train:{name}"] = result
            log(f"  OOF log loss {result['oof_log_loss']} vs class prior {result['prior_log_loss']} (out of fold {result['oof_prior_log_loss']}) over {result['oof_rows']} battles")

    from prefscale.score.stages import pseudolabel_stage, score_stage

    if config.data.unlabeled and config.train:
        final = config.train_order()[-1]
        averaged = os.path.join(out, "models", final, "averaged")
        models = [ScoringModel(final, averaged if os.path.isdir(averaged) else os.path.join(out, "models", final, "fold0", "model"),
                               text_options(config, config.train[final].max_length))]
        result = _timed("pseudolabel", timings, log, lambda: pseudolabel_stage(config, models=models))
        summary["stages"]["pseudolabel"] = result
        log(f"  {result['pseudolabeled']} pseudolabels from {result['battles']} unlabeled battles")
    elif not config.stack:
        job_summary = _timed("score", timings, log, lambda: score_stage(config, battles))
        job_summary.update(_score_report(battles, job_summary["output"]))
        summary["stages"]["score"] = job_summary
        log(f"  scored {job_summary['scored']} battles at {job_summary['rows_per_s']} rows/s; log loss {job_summary['log_loss']}")

    if config.stack:
        from prefscale.stack.report import write_report
        from prefscale.stack.stage import run_stack

        summary["stages"]["stack"] = _timed("stack", timings, log, lambda: run_stack(config, log))
        report = _timed("report", timings, log, lambda: write_report(out, config.stack_members()))
        summary["report"] = {k: report[k] for k in ("best_member", "ensemble_gain_vs_best_member", "reliability_png")}
        summary["report"]["log_loss"] = {name: row["log_loss"] for name, row in report["table"].items()}
        log(f"  report: {os.path.join(out, 'report', 'report.md')}")

    summary["timings_s"] = timings
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(summary, os.path.join(out, "summary.json"))
    return summary


def _score_report(battles_uri: str, scores_uri: str) -> dict[str, Any]:
    """Join scores to labels by id (Ray Data does not keep order) and measure them."""
    from prefscale.score.engine import read_parts

    battles = read_table(battles_uri, columns=[S.ID, *S.LABEL_COLUMNS]).to_pandas().set_index(S.ID)
    scores = read_parts(scores_uri).to_pandas().set_index(S.ID)
    joined = scores.join(battles, how="left")
    labeled = joined.dropna(subset=list(S.LABEL_COLUMNS))
    probs = labeled[["prob_a", "prob_b", "prob_tie"]].to_numpy()
    labels = labeled[list(S.LABEL_COLUMNS)].to_numpy()
    return {
        "log_loss": round(log_loss(labels, probs), 4) if len(labeled) else None,
        "mean_tokens": round(float(scores["tokens"].mean()), 1),
    }
