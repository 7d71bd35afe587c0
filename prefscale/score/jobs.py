"""Build scoring jobs from a config, so the CLI, the pipeline and Ray jobs agree."""

from __future__ import annotations

import os
from dataclasses import replace

from prefscale.config import Config
from prefscale.score.engine import ScoreJob
from prefscale.score.models import ScoringModel
from prefscale.text.formatter import TextOptions


def text_options(config: Config, max_length: int | None = None) -> TextOptions:
    options = TextOptions(**config.text.model_dump())
    return replace(options, max_length=max_length) if max_length else options


def scoring_models(config: Config) -> list[ScoringModel]:
    if not config.score.models:
        return [ScoringModel("base", config.model.path, text_options(config), config.model.precision, config.model.trust_remote_code)]
    return [
        ScoringModel(m.name, m.path, text_options(config, m.max_length), m.precision, m.trust_remote_code)
        for m in config.score.models
    ]


def score_job(config: Config, input_uri: str | None = None, output_uri: str | None = None, models: list[ScoringModel] | None = None, **overrides) -> ScoreJob:
    s = config.score
    models = models or scoring_models(config)
    job = ScoreJob(
        input=input_uri or s.input or os.path.join(config.run_dir, "battles.parquet"),
        output=output_uri or s.output or os.path.join(config.run_dir, "scores", "-".join(m.name for m in models)),
        models=models,
        tta=s.tta,
        tta_space=s.tta_space,
        rows=s.rows,
        max_tokens=s.max_tokens,
        block_rows=s.block_rows,
        actors=s.actors,
        cpus_per_actor=s.cpus_per_actor,
        gpus_per_actor=s.gpus_per_actor,
        threads_per_actor=s.threads_per_actor,
        format_cpus=s.format_cpus,
        part_rows=s.part_rows,
    )
    return replace(job, **overrides)
