"""K-fold training on Ray Train, then out-of-fold logits from the scoring engine.

One TorchTrainer trains every fold in turn on the same workers (each fold on the other folds,
plus any pseudolabels); each fold keeps its adapter (megabytes, never a merged copy of the
model), and its held-out fold is scored, as its base plus that adapter, by the same Ray Data
engine that produces every logit in the project, through the same model resolver as predict.
Every training battle gets exactly one OOF row. Reruns skip finished folds; an interrupted fold
resumes from its latest Ray Train checkpoint. Only an averaged run's adapters are merged into a
model, by a Ray task on a worker. The driver never loads a model's weights.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefscale.artifacts import OOF_COLUMNS, oof_metrics, read_parts
from prefscale.config import Config
from prefscale.data import schema
from prefscale.devices import check_gpu_nodes, raised_prefscale_error
from prefscale.errors import PrefscaleError
from prefscale.io import (
    absolute,
    exists,
    finished,
    read_json,
    read_table,
    write_table,
)
from prefscale.ray_runtime import verbose
from prefscale.scaling import accelerator, await_resources
from prefscale.score.engine import score_plan
from prefscale.score.scoring_model import (
    text_for,
    train_run_model_config,
    train_run_score_settings,
    trained_model,
    write_scoring_record,
)
from prefscale.train.loop import (
    FoldJob,
    checkpoint_state,
    train_loop_per_worker,
)
from prefscale.train.tune import tuned


def fold_job(config: Config, name: str, fold: int | None) -> FoldJob:
    """What one fold's workers need: the run's section as it is, with paths made absolute."""
    run, layout = config.train[name], config.layout
    teachers: list[str] = []
    if run.distill:
        teachers = [layout.oof(t) for t in run.distill.teachers]
        missing = [t for t, p in zip(run.distill.teachers, teachers, strict=True) if not exists(p)]
        if missing:
            raise PrefscaleError(f"train.{name} distills from {missing} whose OOF logits are missing; train them first (list them earlier under train)")
    model = train_run_model_config(config, name)
    if os.path.isdir(model.path):
        model = model.model_copy(update={"path": os.path.abspath(model.path)})
    return FoldJob(run=run, model=model, text=text_for(config, run.max_length), battles=absolute(layout.battles), fold=fold,
                   teachers=[absolute(p) for p in teachers], extra_train=[absolute(p) for p in extra_train(config, name)],
                   rehearse_gpus=config.ray.rehearse_gpus)


def extra_train(config: Config, name: str) -> list[str]:
    """The run's extra soft-labeled files: extra_train, plus the run's pseudolabels when it asks for them."""
    run = config.train[name]
    if not run.pseudolabels:
        return list(run.extra_train)
    pseudolabels = config.pseudolabel.output or config.layout.pseudolabels
    if not exists(pseudolabels):
        raise PrefscaleError(f"train.{name} trains on pseudolabels, but {pseudolabels} is missing; run `prefscale pseudolabel` first")
    return [*run.extra_train, pseudolabels]


def fit_folds(config: Config, name: str, jobs: list[FoldJob]) -> None:
    """Train the folds of ``jobs`` in one Ray Train run (workers start once, not once per fold);
    each finished fold's adapters land in its fold_adapter directory."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    run, layout = jobs[0].run, config.layout
    adapters = [absolute(layout.fold_adapter(name, job.fold)) for job in jobs]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"jobs": [job.model_dump() for job in jobs], "adapters": adapters},
        scaling_config=ray.train.ScalingConfig(num_workers=run.workers, use_gpu=run.use_gpu, resources_per_worker={"CPU": run.cpus_per_worker},
                                               accelerator_type=run.accelerator_type if run.use_gpu else None),
        torch_config=TorchConfig(backend="gloo") if config.ray.rehearse_gpus else None,  # a rehearsal's workers compute on CPUs
        run_config=ray.train.RunConfig(
            name=f"{name}-folds",  # a rerun resumes this run's latest checkpoint, whichever fold it belongs to
            storage_path=layout.checkpoints,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),  # worker-group and checkpoint notices
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        cause = raised_prefscale_error(exc) or [line for line in str(exc).splitlines() if line.strip()][-1].strip()
        raise PrefscaleError(f"train.{name} failed on its workers: {cause}") from None
    if missing := [job.fold for job, adapter in zip(jobs, adapters, strict=True) if not exists(adapter)]:
        raise PrefscaleError(f"train.{name} finished without adapters for folds {missing}; rerun to resume them")


def train_run(config: Config, name: str, log=print) -> dict[str, Any]:
    """Train every fold of one named run and write its OOF logits."""
    run, layout = config.train[name], config.layout
    if not exists(layout.battles):
        raise PrefscaleError(f"{layout.battles} not found; run the data stages first (prefscale run, or data validate + split)")
    all_battles = read_table(layout.battles)
    table = all_battles.select([schema.ID, schema.FOLD, *schema.LABEL_COLUMNS])
    folds = run.folds if run.folds is not None else sorted(set(table.column(schema.FOLD).to_pylist()))
    started = time.perf_counter()
    if run.use_gpu:  # once per run, before the Tune search and every fold's workers
        await_resources([{"CPU": run.cpus_per_worker, "GPU": 1, **accelerator(run.accelerator_type)}] * run.workers,
                        f"train.{name}'s {run.workers} workers", log)
        if not config.ray.rehearse_gpus:
            check_gpu_nodes(f"a training worker of train.{name} (use_gpu: true)")
    best = _searched(config, name, fold_job(config, name, folds[0]), log) if run.tune_samples else None
    jobs = {fold: tuned(fold_job(config, name, fold), best) if best else fold_job(config, name, fold) for fold in folds}
    untrained = [jobs[f] for f in folds if not finished(layout.fold_adapter(name, f))]
    if untrained:
        t0 = time.perf_counter()
        fit_folds(config, name, untrained)
        log(f"  [{name}] folds {[job.fold for job in untrained]} trained in {time.perf_counter() - t0:.1f}s")
    fold_reports, fold_models = [], []
    for fold in folds:
        adapter = layout.fold_adapter(name, fold)
        metrics = checkpoint_state(adapter)
        # Held-out folds are scored by the model resolver predict uses: the fold's adapter over the
        # run's base at the precision it was trained at (a QLoRA fold: nf4 base + adapter), and the run's TTA.
        fold_models.append(trained_model(config, name, adapter, f"{name}-fold{fold}", fold=fold))
        fold_reports.append({"fold": fold, **{k: metrics.get(k) for k in ("train_rows", "samples", "samples_per_s", "loss", "resumed_from_step",
                                                                        "peak_rss_gib", "rss_at_start_gib", "attention") if k in metrics},
                             **({} if any(j.fold == fold for j in untrained) else {"skipped": "already trained"})})
    write_table(all_battles.filter(pc.is_in(pc.field(schema.FOLD), pa.array(folds, all_battles.schema.field(schema.FOLD).type))), layout.heldout(name))
    # Every fold model scores its own fold's rows of one file: with score.pack_models all folds
    # in one pass (one job, one warm-up, one base with every fold's adapter), else one pass per fold.
    settings = train_run_score_settings(config, name)
    passes = score_plan(layout.heldout(name), [(model, settings) for model in fold_models], lambda label: layout.oof_scores(name, label))
    write_scoring_record(config, name)
    oof = gather_oof(config, name, [out for out, _ in passes.values()], {m.name: m.fold for m in fold_models})
    scored = dict(zip(*np.unique(oof.column(schema.FOLD).to_numpy(), return_counts=True), strict=True))
    for report in fold_reports:
        report["oof_scored"] = int(scored.get(report["fold"], 0))
    summary = {"name": name, "folds": fold_reports, "oof_path": layout.oof(name), "oof_rows": oof.num_rows, **oof_metrics(oof, all_battles),
               "actor_peak_rss_gib": max((result.get("actor_peak_rss_gib") or 0 for _, result in passes.values()), default=None)}
    if best:
        summary["tuned"] = best
    if run.average != "none" and len(folds) > 1:
        summary["averaged_model"] = averaged_model(config, name, [layout.fold_adapter(name, f) for f in folds], log)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def averaged_model(config: Config, name: str, adapters: list[str], log) -> dict[str, Any]:
    """The fold adapters averaged and merged into one model, by a Ray task that asks for the memory the
    plan gives a merge, beside the run's workers (where the base is cached); never in the driver."""
    import ray

    from prefscale.models.averaging import merge_average
    from prefscale.plan.resources import merge_task

    run, layout = config.train[name], config.layout
    if finished(layout.averaged(name)):  # written atomically: there means complete
        return {"path": layout.averaged(name), "skipped": "already merged"}
    base = train_run_model_config(config, name)
    need = merge_task(config, name)
    options: dict[str, Any] = {"num_cpus": 1, "memory": int(need.host_gib * 2**30)}
    if run.use_gpu and run.accelerator_type:
        options["resources"] = accelerator(run.accelerator_type)
    log(f"  [{name}] merging {len(adapters)} fold adapters ({run.average}) in a Ray task asking for {need.host_gib:g} GiB")
    task = ray.remote(merge_average).options(**options)
    try:
        return ray.get(task.remote(base.path, [absolute(a) for a in adapters], absolute(layout.averaged(name)), run.average, base.precision,
                                   base.trust_remote_code))
    except ray.exceptions.RayTaskError as exc:
        raise raised_prefscale_error(exc) or PrefscaleError(f"train.{name}: merging the fold adapters failed: {str(exc).splitlines()[-1]}") from None


def _searched(config: Config, name: str, job: FoldJob, log) -> dict[str, Any]:
    """The Ray Tune search's best lr and rank: searched once, then read back on reruns."""
    from prefscale.train.tune import tune_train_run

    path = config.layout.tune(name)
    if exists(path):
        return read_json(path)["best"]
    return tune_train_run(config, name, job, log)["best"]


def gather_oof(config: Config, name: str, score_dirs: list[str], fold_of_model: dict[str, int]) -> pa.Table:
    """The held-out passes' rows as the run's OOF table, each row's fold that of the model that scored it."""
    layout = config.layout
    scores = pa.concat_tables([read_parts(out) for out in score_dirs])
    folds = np.array([fold_of_model[m] for m in scores.column("model").to_pylist()], dtype=np.int8)
    scores = scores.set_column(scores.schema.get_field_index("model"), "model", pa.array([name] * scores.num_rows, pa.string()))
    oof = scores.append_column(schema.FOLD, pa.array(folds)).select(OOF_COLUMNS)
    if len(pc.unique(oof[schema.ID])) != oof.num_rows:
        raise PrefscaleError(f"OOF logits of {name} hold an id twice; delete {layout.oof(name).removesuffix('.parquet')} and rerun")
    write_table(oof, layout.oof(name))
    return oof
