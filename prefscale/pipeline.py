"""The recipe as one list of stages, walked by `prefscale run` and by every per-stage command.

Each stage names when the config enables it, the run-layout paths it reads and writes, and
the function that runs it from the typed config. Stages talk only through those files, so
any one can be rerun alone: `prefscale train` is `run_stages(config, ["train"])`, and a stage
whose input the data stages make (battles, unlabeled pairs) gets them made first when they
are missing. Ray is started once, here, by whoever owns the run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from prefscale.config import Config
from prefscale.errors import PrefscaleError
from prefscale.fingerprints import ensure_fresh
from prefscale.io import exists, read_json, write_bytes, write_json
from prefscale.layout import input_stem
from prefscale.locks import exclusive
from prefscale.tracking import tracked

Log = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    name: str
    enabled: Callable[[Config], bool]  # part of `prefscale run` for this config
    inputs: Callable[[Config], list[str]]
    outputs: Callable[[Config], list[str]]
    run: Callable[[Config, Log], dict[str, Any]]  # returns {summary key: JSON-ready summary}
    uses_ray: bool = False
    makes_inputs: bool = False  # cheap and deterministic: run first when a later stage lacks its outputs



def _timed(key: str, log: Log, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    log(f"[{key}] ...")
    started = time.perf_counter()
    result = work()
    result["seconds"] = round(time.perf_counter() - started, 2)  # the whole stage, whatever part its summary timed
    log(f"[{key}] done in {result['seconds']:.1f}s")
    return result


def prepare_battles(config: Config, log: Log) -> dict[str, Any]:
    """Validate every training input, then deduplicate and assign folds: the layout's battles."""
    from prefscale.data.files import split, validate_file

    layout, data = config.layout, config.data
    ensure_fresh(config, "data", log)
    results: dict[str, Any] = {}
    for uri in data.train:
        key = f"validate:{input_stem(uri)}"
        results[key] = result = _timed(key, log, lambda uri=uri: validate_file(uri, layout.validated(input_stem(uri)), layout.rejects(input_stem(uri)), data))
        log(f"  {result['rows']} rows: {result['clean']} clean, {result['rejected']} rejected {result['reasons']}")
    results["split"] = result = _timed("split", log, lambda: split(
        [layout.validated(input_stem(uri)) for uri in data.train], layout.battles, layout.rejects("duplicates"),
        folds=data.folds, seed=data.fold_seed, dedup=data.dedup, merge_labels=data.merge_duplicate_labels))
    log(f"  {result['kept']} battles in {result['folds']} folds {result['fold_sizes']}, {result['duplicates']} duplicates")
    return results


def make_unlabeled_pairs(config: Config, log: Log) -> dict[str, Any]:
    from prefscale.data.files import make_pairs

    ensure_fresh(config, "pairs", log)
    result = _timed("pairs", log, lambda: make_pairs(config.data.unlabeled, config.layout.unlabeled_pairs, config.pairs))
    log(f"  {result['pairs_written']} unlabeled battles")
    return {"pairs": result}


def fit_members(config: Config, log: Log) -> dict[str, Any]:
    from prefscale.members.fitting import train_member

    results = {}
    for name, member in config.members.items():
        ensure_fresh(config, f"member:{name}", log)
        results[f"member:{name}"] = _timed(f"member:{name}", log, lambda name=name, member=member: train_member(config, name, member, log))
    return results


def train_runs(config: Config, log: Log, phase: int = 0) -> dict[str, Any]:
    """Phase 0: the runs trained before the pseudolabels (teachers); phase 1: the runs that use them."""
    from prefscale.train.kfold import train_run

    results = {}
    for name in config.train_phases()[phase]:
        ensure_fresh(config, f"train:{name}", log)
        results[f"train:{name}"] = result = _timed(f"train:{name}", log, lambda name=name: train_run(config, name, log))
        log(f"  OOF log loss {result['oof_log_loss']} vs class prior {result['prior_log_loss']} (out of fold {result['oof_prior_log_loss']}) "
            f"over {result['oof_rows']} battles")
    return results


def pseudolabel(config: Config, log: Log) -> dict[str, Any]:
    """Score the unlabeled battles (unless pseudolabel.scores names score directories), then write soft labels."""
    from prefscale.io import read_head, write_table
    from prefscale.score.engine import score_plan
    from prefscale.score.pseudolabel import write_pseudolabels
    from prefscale.score.scoring_model import configured_models, scoring_plan

    layout, settings = config.layout, config.pseudolabel
    scorers = config.pseudolabel_scorers() or [m.name for m in configured_models(config)]

    def work() -> dict[str, Any]:
        ensure_fresh(config, "pseudolabel", log)
        battles = settings.input or layout.unlabeled_pairs
        if settings.rows:
            write_table(read_head(battles, settings.rows), layout.pseudolabel_input)
            battles = layout.pseudolabel_input
        summary: dict[str, Any] = {}
        score_dirs = settings.scores
        if not score_dirs:
            plan = [step for name in scorers for step in scoring_plan(config, name)]
            passes = score_plan(battles, plan, lambda label: layout.scores(f"unlabeled-{label}"))
            score_dirs = [out for out, _ in passes.values()]
            summary["scoring"] = {label: scored for label, (_, scored) in passes.items()}
        labeled = layout.battles if settings.dedup_labeled and exists(layout.battles) else None
        return {**write_pseudolabels(battles, score_dirs, settings.output or layout.pseudolabels, layout.rejects("pseudolabels"), settings, labeled),
                **summary}

    result = _timed("pseudolabel", log, work)
    log(f"  {result['pseudolabeled']} pseudolabels from {result['battles']} unlabeled battles")
    return {"pseudolabel": result}


def score_output(config: Config) -> str:
    from prefscale.score.scoring_model import configured_models

    return config.score.output or config.layout.scores("-".join(m.name for m in configured_models(config)))


def score(config: Config, log: Log) -> dict[str, Any]:
    """Score score.input (default: the run's battles) with score.models; log loss where labeled."""
    from prefscale.score.engine import score_battles
    from prefscale.score.scoring_model import configured_models

    settings = config.score
    models = configured_models(config)
    battles, output = settings.input or config.layout.battles, score_output(config)
    with exclusive(output, log):
        ensure_fresh(config, "score", log, score_output=output)
        result = _timed("score", log, lambda: {**score_battles(battles, output, models, settings), **_score_report(battles, output)})
    log(f"  scored {result['scored']} battles at {result['rows_per_s']} rows/s; log loss {result['log_loss']}")
    return {"score": result}


def _score_report(battles_uri: str, scores_uri: str) -> dict[str, Any]:
    """Join scores to labels by id (Ray Data does not keep order) and measure them."""
    from prefscale.artifacts import ALLOWED, label_frame, read_parts
    from prefscale.data import schema
    from prefscale.io import read_present_columns
    from prefscale.metrics import log_loss

    scores = read_parts(scores_uri).to_pandas().set_index(schema.ID)
    battles = read_present_columns(battles_uri, [schema.ID, *schema.LABEL_COLUMNS, schema.TIES])  # never the texts
    labeled = label_frame(battles) if schema.is_labeled(battles) else None
    joined = scores.join(labeled, how="inner") if labeled is not None else scores.iloc[:0]
    return {
        "log_loss": round(log_loss(joined[list(schema.LABEL_COLUMNS)].to_numpy(), joined[list(schema.PROBS)].to_numpy(),
                                   joined[ALLOWED].to_numpy(dtype=bool)), 4) if len(joined) else None,
        "mean_tokens": round(float(scores["tokens"].mean()), 1) if len(scores) else None,
    }


def stack(config: Config, log: Log) -> dict[str, Any]:
    from prefscale.stack.ensemble import run_stack

    ensure_fresh(config, "stack", log)
    return {"stack": _timed("stack", log, lambda: run_stack(config, log))}


def report(config: Config, log: Log) -> dict[str, Any]:
    from prefscale.manifest import seal
    from prefscale.stack.report import write_report

    ensure_fresh(config, "report", log)
    result = _timed("report", log, lambda: {**write_report(config.layout, config.stack_members(), config.cascade),
                                            **seal(config, read_json(config.layout.stack_summary)["members"])})
    log(f"  report: {config.layout.report_file('report.md')}; {result['sealed_files']} files sealed in {config.layout.manifest}")
    return {"report": result}


def _pseudolabels_enabled(config: Config) -> bool:
    return bool(config.data.unlabeled and config.train)


STAGES: tuple[Stage, ...] = (
    Stage("data", lambda c: True, lambda c: list(c.data.train), lambda c: [c.layout.battles], prepare_battles, makes_inputs=True),
    Stage("pairs", lambda c: bool(c.data.unlabeled), lambda c: [c.data.unlabeled] if c.data.unlabeled else [],
          lambda c: [c.layout.unlabeled_pairs], make_unlabeled_pairs, makes_inputs=True),
    Stage("members", lambda c: bool(c.members), lambda c: [c.layout.battles],
          lambda c: [p for m in c.members for p in (c.layout.oof(m), c.layout.member_model(m))], fit_members, uses_ray=True),
    Stage("train", lambda c: bool(c.train_phases()[0]), lambda c: [c.layout.battles], lambda c: [c.layout.oof(n) for n in c.train_phases()[0]],
          train_runs, uses_ray=True),
    Stage("pseudolabel", _pseudolabels_enabled, lambda c: [c.pseudolabel.input or c.layout.unlabeled_pairs],
          lambda c: [c.pseudolabel.output or c.layout.pseudolabels], pseudolabel, uses_ray=True),
    Stage("students", lambda c: bool(c.train_phases()[1]), lambda c: [c.layout.battles, c.pseudolabel.output or c.layout.pseudolabels],
          lambda c: [c.layout.oof(n) for n in c.train_phases()[1]], lambda c, log: train_runs(c, log, phase=1), uses_ray=True),
    # In `prefscale run`, only a scoring config scores: one with train runs makes better models than the base to score with.
    Stage("score", lambda c: not c.train and c.stack is None, lambda c: [c.score.input or c.layout.battles],
          lambda c: [score_output(c)], score, uses_ray=True),
    Stage("stack", lambda c: c.stack is not None, lambda c: [c.layout.oof(m) for m in c.stack_members()],
          lambda c: [c.layout.stack], stack, uses_ray=True),
    Stage("report", lambda c: c.stack is not None, lambda c: [c.layout.stack], lambda c: [c.layout.report], report),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def _with_missing_inputs(config: Config, names: list[str]) -> list[Stage]:
    """The named stages in recipe order, preceded by any input-making stage whose outputs they lack."""
    wanted = [s for s in STAGES if s.name in names]
    needed = {path for s in wanted for path in s.inputs(config) if not exists(path)}
    makers = [s for s in STAGES if s.makes_inputs and s.name not in names and needed & set(s.outputs(config))]
    return [s for s in STAGES if s in makers or s in wanted]


def save_config(config: Config) -> None:
    write_bytes(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode(), config.layout.config)


def run_stages(config: Config, names: list[str] | None = None, log: Log = print, allow_retrain: bool = False) -> dict[str, Any]:
    """Run the named stages (every enabled one when None) with their missing data inputs; the
    whole run (names None) also saves the config and writes the layout's summary. ``allow_retrain``:
    a config change may delete trained models (else it stops, naming the change)."""
    from prefscale.fingerprints import RETRAIN_ALLOWED

    token = RETRAIN_ALLOWED.set(allow_retrain)
    try:
        return _run_stages(config, names, log)
    finally:
        RETRAIN_ALLOWED.reset(token)


def _run_stages(config: Config, names: list[str] | None, log: Log) -> dict[str, Any]:
    unknown = sorted(set(names or ()) - set(STAGE_NAMES))
    if unknown:
        raise PrefscaleError(f"unknown stage {unknown}; stages are {', '.join(STAGE_NAMES)}")
    started = time.perf_counter()
    stages = [s for s in STAGES if s.enabled(config)] if names is None else _with_missing_inputs(config, names)
    results: dict[str, Any] = {}
    writes_run_dir = any(s.name != "score" for s in stages)  # scoring writes only its own output (locked there)
    with exclusive(config.run_dir, log) if writes_run_dir else contextlib.nullcontext(), \
            tracked(config, "run" if names is None else "+".join(names), log) as tracker:
        if names is None:
            save_config(config)
        if any(s.uses_ray for s in stages):
            from prefscale.ray_runtime import ensure_ray

            ensure_ray(config.ray)
        for stage in stages:
            with tracker.stage(stage.name):
                stage_results = stage.run(config, log)
                tracker.stage_results(stage_results)
            results.update(stage_results)
        summary: dict[str, Any] = {"name": config.name, "run_dir": config.run_dir, "stages": results,
                                   "timings_s": {key: result["seconds"] for key, result in results.items()}}
        summary["elapsed_s"] = round(time.perf_counter() - started, 1)
        if names is None:
            write_json(summary, config.layout.summary)
        layout = config.layout
        tracker.finish(summary, [layout.config, layout.summary, layout.stack_summary,
                                 *(layout.report_file(f) for f in ("report.md", "report.json", "reliability.png"))])
    return summary

