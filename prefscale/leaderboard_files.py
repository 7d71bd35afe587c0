"""`prefscale leaderboard`: battles (and their scores) in, a ranked table of chatbots out.

Outcomes are the scores' predicted probabilities when score directories are given, else the
battles' own labels (human votes, or the soft labels of pseudolabeled battles). With both, the
same model is also fitted on the human labels, so the predicted and the human leaderboards sit
side by side with their rank correlation. Battles without two distinct model names cannot rank
anyone: they go to a rejects file with a reason, counted in the summary.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from prefscale.artifacts import read_parts
from prefscale.data import schema
from prefscale.errors import PrefscaleError
from prefscale.io import (
    ParquetSink,
    atomic_path,
    read_present_columns,
    write_bytes,
    write_table,
)
from prefscale.leaderboard import ELO_SCALE, leaderboard

FILES = ("leaderboard.parquet", "leaderboard.csv", "leaderboard.md", "leaderboard.png", "win_rate.parquet", "rejects.parquet")


def _outcomes(battles: pd.DataFrame, score_dirs: list[str]) -> np.ndarray:
    if not score_dirs:
        return battles[list(schema.LABEL_COLUMNS)].to_numpy(dtype=float)
    scores = pd.concat([read_parts(d, [schema.ID, *schema.PROBS]).to_pandas() for d in score_dirs]).groupby(schema.ID).mean()
    missing = ~battles[schema.ID].isin(scores.index)
    if missing.any():
        raise PrefscaleError(f"{int(missing.sum())} battles have no score in {', '.join(score_dirs)}; score them first (prefscale score)")
    return scores.loc[battles[schema.ID], list(schema.PROBS)].to_numpy(dtype=float)


def _table(fit: dict, prefix: str = "") -> pd.DataFrame:
    return pd.DataFrame({
        "model": fit["names"],
        f"{prefix}rating": 1000 + ELO_SCALE * fit["theta"],
        f"{prefix}rating_low": 1000 + ELO_SCALE * fit["low"],
        f"{prefix}rating_high": 1000 + ELO_SCALE * fit["high"],
    })


def _markdown(table: pd.DataFrame) -> str:
    cell = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = table.sort_values("rating")
    figure, axis = plt.subplots(figsize=(7, max(3, 0.22 * len(ordered))))
    axis.errorbar(ordered["rating"], range(len(ordered)), xerr=np.clip([ordered["rating"] - ordered["rating_low"], ordered["rating_high"] - ordered["rating"]], 0, None),
                  fmt="o", markersize=3, capsize=2)
    axis.set_yticks(range(len(ordered)), ordered["model"], fontsize=7)
    axis.set_xlabel("rating (Davidson Bradley-Terry, Elo scale; 95% bootstrap interval)")
    figure.tight_layout()
    with atomic_path(path) as (fs, tmp):
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


def write_leaderboard(battles_uri: str, score_dirs: list[str], out_dir: str, bootstrap: int = 200, group_by: str = schema.PROMPT,
                      seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    columns = [schema.ID, schema.MODEL_A, schema.MODEL_B, group_by, *schema.LABEL_COLUMNS]
    table = read_present_columns(battles_uri, columns)
    if group_by in table.column_names:  # groups as integer codes: 1.6M prompt strings in pandas would cost ~1 GB
        codes = pc.dictionary_encode(table.column(group_by).combine_chunks(), null_encoding="encode").indices
        table = table.set_column(table.schema.get_field_index(group_by), group_by, codes)
    battles = table.to_pandas()
    if missing := [c for c in (schema.ID, schema.MODEL_A, schema.MODEL_B, group_by) if c not in battles.columns]:
        raise PrefscaleError(f"{battles_uri} lacks {', '.join(missing)}; a leaderboard needs battles with model_a, model_b and --group-by")
    reason = np.where(battles[schema.MODEL_A].isna() | battles[schema.MODEL_B].isna(), "no_model_names",
                      np.where(battles[schema.MODEL_A] == battles[schema.MODEL_B], "same_model", ""))
    rejects = pa.Table.from_pandas(battles.loc[reason != "", [schema.ID]].assign(reject_reason=reason[reason != ""]), preserve_index=False)
    battles = battles[reason == ""].reset_index(drop=True)
    labeled = all(c in battles.columns for c in schema.LABEL_COLUMNS) and battles[list(schema.LABEL_COLUMNS)].notna().all(axis=1).all()
    if not score_dirs and not labeled:
        raise PrefscaleError(f"{battles_uri} has unlabeled battles and no --scores were given; score them (prefscale score) and pass --scores")
    if battles.empty:
        raise PrefscaleError(f"no battle in {battles_uri} names two different models; nothing to rank")
    names = sorted(set(battles[schema.MODEL_A]) | set(battles[schema.MODEL_B]))
    index = {name: k for k, name in enumerate(names)}
    first, second = battles[schema.MODEL_A].map(index).to_numpy(), battles[schema.MODEL_B].map(index).to_numpy()
    groups = battles[group_by].to_numpy()
    fit = leaderboard(first, second, _outcomes(battles, score_dirs), names, groups, bootstrap, seed)
    table = _table(fit)
    summary: dict[str, Any] = {"battles": len(battles), "rejected": rejects.num_rows, "models": len(names), "groups": fit["groups"],
                               "bootstrap": bootstrap, "tie_parameter": round(fit["nu"], 4),
                               "outcomes": "scores" if score_dirs else "labels"}
    if score_dirs and labeled:
        human = leaderboard(first, second, battles[list(schema.LABEL_COLUMNS)].to_numpy(dtype=float), names, groups, bootstrap, seed)
        table = table.merge(_table(human, "human_"), on="model")
        summary["spearman_vs_human"] = round(float(table["rating"].rank().corr(table["human_rating"].rank())), 4)
    table["battles"] = fit["battles"]
    table = table.sort_values("rating", ascending=False).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    os.makedirs(out_dir, exist_ok=True) if "://" not in out_dir else None
    path = lambda name: f"{out_dir.rstrip('/')}/{name}"  # noqa: E731
    write_table(pa.Table.from_pandas(table, preserve_index=False), path("leaderboard.parquet"))
    write_bytes(table.to_csv(index=False).encode(), path("leaderboard.csv"))
    write_bytes(_markdown(table).encode(), path("leaderboard.md"))
    rate = pd.DataFrame(fit["win_rate"], index=names, columns=names).stack(future_stack=True).rename("win_rate").reset_index()
    rate.columns = ["model", "opponent", "win_rate"]
    write_table(pa.Table.from_pandas(rate.dropna(), preserve_index=False), path("win_rate.parquet"))
    with ParquetSink(path("rejects.parquet"), empty_schema=pa.schema([(schema.ID, pa.int64()), ("reject_reason", pa.string())])) as sink:
        sink.write(rejects)
    _plot(table, path("leaderboard.png"))
    summary.update({"top": table["model"].head(5).tolist(), "output": out_dir, "seconds": round(time.perf_counter() - started, 2)})
    return summary
