"""K-fold training on Ray Train, then out-of-fold logits from the scoring engine.

For each fold: a TorchTrainer trains on the other folds (plus any pseudolabels), its adapters
are merged into a plain model, and the held-out fold is scored by the same Ray Data engine
that produces every logit in the project. Every training battle gets exactly one OOF row.
Reruns skip finished folds; an interrupted fold resumes from its latest Ray Train checkpoint.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefscale.config import Config, TrainRunConfig
from prefscale.data import schema as S
from prefscale.errors import PrefscaleError
from prefscale.io import absolute, exists, read_json, read_table, write_table
from prefscale.models.lora import LoraSettings
from prefscale.oof import OOF_COLUMNS, oof_metrics, oof_path
from prefscale.score.engine import run_score_job
from prefscale.score.jobs import score_job
from prefscale.score.models import ScoringModel
from prefscale.train.loop import TrainSettings, train_loop_per_worker
from prefscale.train.tune import tuned



def _settings(config: Config, name: str, run: TrainRunConfig, battles: str, fold: int) -> TrainSettings:
    model = run.model or config.model
    text = config.text.model_dump()
    if run.max_length:
        text["max_length"] = run.max_length
    teachers, weights = [], []
    if run.distill:
        teachers = [oof_path(config.run_dir, t) for t in run.distill.teachers]
        missing = [t for t, p in zip(run.distill.teachers, teachers, strict=True) if not exists(p)]
        if missing:
            raise PrefscaleError(f"train.{name} distills from {missing} whose OOF logits are missing; train them first (list them earlier under train)")
        weights = run.distill.weights or [1.0] * len(teachers)
    model_path = os.path.abspath(model.path) if os.path.isdir(model.path) else model.path
    return TrainSettings(
        model_path=model_path, train_path=absolute(battles), fold=fold, precision=model.precision, lora=asdict(LoraSettings(**run.lora.model_dump())),
        text=text, trust_remote_code=model.trust_remote_code, extra_train=[absolute(p) for p in run.extra_train],
        teachers=[absolute(p) for p in teachers], teacher_weights=weights,
        ce_weight=run.distill.ce_weight if run.distill else 1.0, temperature=run.distill.temperature if run.distill else 1.0,
        cosine_weight=run.distill.cosine_weight if run.distill else 0.0, epochs=run.epochs, lr=run.lr, weight_decay=run.weight_decay,
        batch_size=run.batch_size, grad_accum=run.grad_accum, warmup_ratio=run.warmup_ratio, schedule=run.schedule,
        swap_prob=run.swap_prob, autocast=run.autocast, max_rows=run.max_rows, checkpoint_every=run.checkpoint_every, seed=run.seed + fold,
        use_gpu=run.use_gpu, gradient_checkpointing=run.gradient_checkpointing, fsdp=run.fsdp, head_init=run.head_init,
    )


def fit_fold(config: Config, name: str, run: TrainRunConfig, settings: TrainSettings, fold: int) -> tuple[str, dict]:
    """Train one fold on Ray Train; returns its final checkpoint directory and metrics."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if run.use_gpu and not ray.cluster_resources().get("GPU"):
        raise PrefscaleError(f"train.{name} asks for GPUs but the Ray cluster has none; set use_gpu: false or add GPU nodes")
    if run.fsdp and not run.use_gpu:
        raise PrefscaleError(f"train.{name}: fsdp needs GPUs (use_gpu: true)")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(settings),
        scaling_config=ray.train.ScalingConfig(num_workers=run.workers, use_gpu=run.use_gpu, resources_per_worker={"CPU": run.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=f"{name}-fold{fold}",
            storage_path=os.path.abspath(os.path.join(config.run_dir, "ray_train")),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1]
        raise PrefscaleError(f"train.{name} fold {fold} failed on its workers: {last.strip()}") from None
    if result.checkpoint is None:
        raise PrefscaleError(f"train.{name} fold {fold} finished without a checkpoint")
    return result.checkpoint.path, result.metrics


def train_run(config: Config, name: str, log=print) -> dict[str, Any]:
    """Train every fold of one named run and write its OOF logits."""
    from prefscale.train.export import export_average, export_merged
    from safetensors.torch import load_file

    run = config.train[name]
    battles = os.path.join(config.run_dir, "battles.parquet")
    if not exists(battles):
        raise PrefscaleError(f"{battles} not found; run the data stages first (prefscale run, or data validate + split)")
    all_battles = read_table(battles)
    table = all_battles.select([S.ID, S.FOLD, *S.LABEL_COLUMNS])
    folds = run.folds if run.folds is not None else sorted(set(table.column(S.FOLD).to_pylist()))
    started = time.perf_counter()
    best = _searched(config, name, _settings(config, name, run, battles, folds[0]), log) if run.tune_samples else None
    fold_reports = []
    for fold in folds:
        fold_dir = os.path.join(config.run_dir, "models", name, f"fold{fold}")
        model_dir, adapter = os.path.join(fold_dir, "model"), os.path.join(fold_dir, "adapter")
        settings = _settings(config, name, run, battles, fold)
        if best:
            settings = tuned(settings, best)
        lora = LoraSettings(**settings.lora)
        metrics: dict = {"skipped": "already trained"}
        if not exists(os.path.join(model_dir, "config.json")):
            t0 = time.perf_counter()
            checkpoint, metrics = fit_fold(config, name, run, settings, fold)
            if os.path.exists(adapter):
                shutil.rmtree(adapter)
            shutil.copytree(checkpoint, adapter)
            export_merged(settings.model_path, lora, load_file(os.path.join(adapter, "trainable.safetensors")), model_dir, settings.trust_remote_code,
                          settings.precision)
            log(f"  [{name}] fold {fold} trained in {time.perf_counter() - t0:.1f}s")
        heldout = os.path.join(fold_dir, "heldout.parquet")
        write_table(all_battles.filter(pc.equal(pc.field(S.FOLD), fold)), heldout)
        # held-out folds are scored at the training precision: a QLoRA teacher's merged model is requantized, never fp32
        model = ScoringModel(name, model_dir, settings_text(settings), settings.precision, settings.trust_remote_code)
        scored = run_score_job(score_job(config, heldout, os.path.join(config.run_dir, "oof", name, f"fold{fold}"), [model], tta=run.oof_tta, rows=None))
        fold_reports.append({"fold": fold, "oof_scored": scored["output_rows"],
                             **{k: metrics.get(k) for k in ("train_rows", "samples", "samples_per_s", "loss", "skipped") if k in metrics}})
    oof = gather_oof(config, name, folds)
    summary = {"name": name, "folds": fold_reports, "oof_path": oof_path(config.run_dir, name), "oof_rows": oof.num_rows, **oof_metrics(oof, table)}
    if best:
        summary["tuned"] = best
    if run.average != "none" and len(folds) > 1:
        adapters = [os.path.join(config.run_dir, "models", name, f"fold{f}", "adapter") for f in folds]
        summary["averaged_model"] = export_average(settings.model_path, lora, adapters, os.path.join(config.run_dir, "models", name, "averaged"),
                                                   run.average, settings.trust_remote_code, settings.precision)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _searched(config: Config, name: str, settings: TrainSettings, log) -> dict[str, Any]:
    """The Ray Tune search's best lr and rank: searched once, then read back on reruns."""
    from prefscale.train.tune import tune_train_run

    path = os.path.join(config.run_dir, "tune", f"{name}.json")
    if exists(path):
        return read_json(path)["best"]
    return tune_train_run(config, name, settings, log)["best"]


def settings_text(settings: TrainSettings):
    from prefscale.text.formatter import TextOptions

    return TextOptions(**{**settings.text, "weights": tuple(settings.text.get("weights", (1.0, 1.0, 1.0)))})


def gather_oof(config: Config, name: str, folds: list[int]) -> pa.Table:
    from prefscale.score.engine import read_parts

    parts = []
    for fold in folds:
        scores = read_parts(os.path.join(config.run_dir, "oof", name, f"fold{fold}"))
        parts.append(scores.append_column(S.FOLD, pa.array(np.full(scores.num_rows, fold, dtype=np.int8))).select(OOF_COLUMNS))
    oof = pa.concat_tables(parts)
    if len(pc.unique(oof[S.ID])) != oof.num_rows:
        raise PrefscaleError(f"OOF logits of {name} hold an id twice; delete {config.run_dir}/oof/{name} and rerun")
    write_table(oof, oof_path(config.run_dir, name))
    return oof
