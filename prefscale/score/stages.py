"""The scoring and pseudolabelling stages as the CLI, pipeline and Ray jobs call them."""

from __future__ import annotations

import os
from typing import Any

from prefscale.config import Config
from prefscale.io import read_table, write_table
from prefscale.ray_runtime import ensure_ray
from prefscale.score.engine import run_score_job
from prefscale.score.jobs import score_job
from prefscale.score.models import ScoringModel
from prefscale.score.pseudolabel import PseudolabelOptions, default_paths, write_pseudolabels


def score_stage(config: Config, input_uri: str | None = None, out_uri: str | None = None, **overrides: Any) -> dict[str, Any]:
    job = score_job(config, input_uri, out_uri, **overrides)
    ensure_ray(config.ray.address, config.ray.num_cpus, config.ray.object_store_mb)
    return run_score_job(job)


def pseudolabel_stage(config: Config, input_uri: str | None = None, score_dirs: list[str] | None = None, out_uri: str | None = None,
                      rows: int | None = None, models: list[ScoringModel] | None = None) -> dict[str, Any]:
    """Score the unlabeled battles (unless score directories are given), then write soft labels."""
    p = config.pseudolabel
    battles = input_uri or p.input or os.path.join(config.run_dir, "unlabeled_pairs.parquet")
    rows = rows or p.rows
    if rows:
        head = os.path.join(config.run_dir, "pseudolabel_input.parquet")
        write_table(read_table(battles).slice(0, rows), head)
        battles = head
    summary: dict[str, Any] = {}
    score_dirs = score_dirs or p.scores
    if not score_dirs:
        names = [m.name for m in models] if models else [m.name for m in config.score.models] or ["base"]
        out = os.path.join(config.run_dir, "scores", "unlabeled-" + "-".join(names))
        summary["scoring"] = score_stage(config, battles, out, rows=None, **({"models": models} if models else {}))
        score_dirs = [out]
    output, rejects = default_paths(config.run_dir)
    output = out_uri or p.output or output
    options = PseudolabelOptions(p.min_confidence, p.max_entropy, p.balance, p.prior, p.seed)
    return {**write_pseudolabels(battles, score_dirs, output, rejects, options), **summary}
