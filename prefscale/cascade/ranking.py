"""One command from an unlabeled dump to a leaderboard: pairs -> cascade -> Bradley-Terry.

`prefscale leaderboard --run-dir R --battles DUMP --out DIR` with a long table (instruction,
generator, output) makes every pair into DIR/pairs.parquet, scores them through the run's
cascade into DIR/cascade/ (resumable by id), then ranks the chatbots from those probabilities.
Battles already in the battle schema skip the first step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from prefscale.data.pairs import LONG_COLUMNS
from prefscale.io import exists, resolve


def is_long_table(uri: str) -> bool:
    fs, path = resolve(uri)
    return set(LONG_COLUMNS) <= set(pads.dataset(path, filesystem=fs, format="parquet").schema.names)


def rank_with_run(run_dir: str, battles_uri: str, out_dir: str, send_fraction: float | None, bootstrap: int, group_by: str, seed: int,
                  log: Callable[[str], None], style_control: str = "both") -> dict[str, Any]:
    from prefscale.cascade.run import run_cascade
    from prefscale.config import PairsConfig
    from prefscale.data.files import make_pairs
    from prefscale.leaderboard_files import write_leaderboard
    from prefscale.predict import load_run
    from prefscale.ray_runtime import ensure_ray

    config, stacked = load_run(run_dir)
    summary: dict[str, Any] = {}
    if is_long_table(battles_uri):
        pairs = os.path.join(out_dir, "pairs.parquet")
        if not exists(pairs):  # written atomically: present means complete
            log(f"[pairs] every pair of generators per instruction of {battles_uri}")
            summary["pairs"] = make_pairs(battles_uri, pairs, PairsConfig())
            pa.default_memory_pool().release_unused()  # the pairs' buffers go back before the cluster starts
        battles_uri = pairs
    ensure_ray(config.ray)
    log(f"[cascade] {' -> '.join(config.cascade.stages) if config.cascade else '(none)'} over {battles_uri}")
    summary["cascade"] = run_cascade(config, stacked, battles_uri, os.path.join(out_dir, "cascade"), send_fraction, log=log)
    log(f"[leaderboard] Davidson fit with bootstrap intervals (style control: {style_control})")
    summary["leaderboard"] = write_leaderboard(battles_uri, [os.path.join(out_dir, "cascade")], out_dir, bootstrap=bootstrap, group_by=group_by, seed=seed,
                                               style_control=style_control)
    return summary
