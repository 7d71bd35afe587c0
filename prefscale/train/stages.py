"""The training stage as the CLI, pipeline and Ray jobs call it: every named run, in order."""

from __future__ import annotations

import os
from typing import Any

from prefscale.config import Config
from prefscale.errors import PrefscaleError
from prefscale.io import exists
from prefscale.ray_runtime import ensure_ray
from prefscale.train.kfold import train_run


def train_stage(config: Config, only: str | None = None, log=print) -> dict[str, Any]:
    if not config.train:
        raise PrefscaleError("the config has no train section; add one (see configs/local.yaml)")
    if only and only not in config.train:
        raise PrefscaleError(f"no train run named '{only}'; the config has {', '.join(config.train)}")
    summary: dict[str, Any] = {}
    if not exists(os.path.join(config.run_dir, "battles.parquet")):
        from prefscale.pipeline import prepare_battles

        log("[data] validate + split (no battles.parquet in the run directory yet)")
        summary["data"] = prepare_battles(config, {}, log)
    ensure_ray(config.ray.address, config.ray.num_cpus, config.ray.object_store_mb)
    runs = {}
    for name in [only] if only else config.train_order():
        log(f"[train:{name}] ...")
        runs[name] = train_run(config, name, log)
        log(f"[train:{name}] OOF log loss {runs[name]['oof_log_loss']} (class prior {runs[name]['prior_log_loss']}, out-of-fold prior {runs[name]['oof_prior_log_loss']}) in {runs[name]['seconds']}s")
    return {**summary, "runs": runs}
