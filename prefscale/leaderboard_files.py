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

FILES = ("leaderboard.parquet", "leaderboard.csv", "leaderboard.md", "leaderboard.png", "win_rate.parquet", "rejects.parquet",
         "style_coefficients.csv")
STYLE_CONTROL = ("off", "on", "both")
FEW_BATTLES = 30  # a chatbot with fewer is ranked, and named in the summary's notes: its interval is wide


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

    key = "rating" if "rating" in table else "style_rating"
    ordered = table.sort_values(key)
    figure, axis = plt.subplots(figsize=(7, max(3, 0.22 * len(ordered))))
    for prefix, label, marker, offset in (("", "plain", "o", -0.15), ("style_", "style-controlled", "s", 0.15)):
        if f"{prefix}rating" not in ordered:
            continue
        rating = ordered[f"{prefix}rating"]
        axis.errorbar(rating, np.arange(len(ordered)) + offset, xerr=np.clip([rating - ordered[f"{prefix}rating_low"], ordered[f"{prefix}rating_high"] - rating], 0, None),
                      fmt=marker, markersize=3, capsize=2, label=label)
    axis.set_yticks(range(len(ordered)), ordered["model"], fontsize=7)
    axis.set_xlabel("rating (Davidson Bradley-Terry, Elo scale; 95% bootstrap interval)")
    if "rating" in ordered and "style_rating" in ordered:
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as (fs, tmp):
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


def battle_style(battles_uri: str) -> np.ndarray:
    """(battles, features) normalised style differences of A's and B's answers, in file order, read a
    record batch at a time (the answers' text is never held whole: 1.6M battles are gigabytes of it)."""
    import pyarrow.dataset as pads

    from prefscale.io import resolve
    from prefscale.style import STYLE_FEATURES, style_differences

    fs, path = resolve(battles_uri)
    answers = [schema.RESPONSE_A, schema.RESPONSE_B]
    # Dictionary-encoded: a dump's answer recurs in every battle of its instruction, so each distinct
    # answer is counted once per batch; no readahead: a few batches of text in memory, not gigabytes.
    parquet = pads.ParquetFileFormat(read_options=pads.ParquetReadOptions(dictionary_columns=answers))
    dataset = pads.dataset(path, filesystem=fs, format=parquet)
    if missing := [c for c in answers if c not in dataset.schema.names]:
        raise PrefscaleError(f"{battles_uri} lacks {', '.join(missing)}, which style control reads; give battles with their answers, "
                             f"or --style-control off")
    parts = [style_differences(*(_answer_style(b.column(c)) for c in answers))
             for b in dataset.to_batches(columns=answers, batch_size=65_536, batch_readahead=1, fragment_readahead=1)]
    return np.concatenate(parts) if parts else np.zeros((0, len(STYLE_FEATURES)))


def _answer_style(answers: pa.Array) -> np.ndarray:
    """answer_style per row, computed once per distinct answer of a dictionary-encoded column."""
    from prefscale.style import answer_style

    if not pa.types.is_dictionary(answers.type):
        return answer_style(answers)
    if answers.null_count:  # a missing answer counts as empty, as answer_style reads it
        return answer_style(answers.dictionary_decode())
    return answer_style(answers.dictionary)[np.asarray(answers.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]


def _style_table(battles_uri: str, keep: np.ndarray, first: np.ndarray, second: np.ndarray, outcomes: np.ndarray, names: list[str],
                 groups: np.ndarray, bootstrap: int, seed: int, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The style-controlled ratings and the fitted style coefficients, each with its bootstrap interval."""
    from prefscale.style import STYLE_FEATURES, standardized, style_fit

    covariates, kept, dropped = standardized(battle_style(battles_uri)[keep], list(STYLE_FEATURES))
    notes += [f"style feature '{name}' has no variance across these battles: dropped from style control" for name in dropped]
    fit = style_fit(first, second, outcomes, covariates, len(names), groups, bootstrap, seed)
    ratings = _table({"names": names, "theta": fit["theta"], "low": fit["theta_low"], "high": fit["theta_high"]}, "style_")
    coefficients = pd.DataFrame({"feature": kept, "coefficient": fit["beta"], "low": fit["beta_low"], "high": fit["beta_high"]})
    return ratings, coefficients


def write_leaderboard(battles_uri: str, score_dirs: list[str], out_dir: str, bootstrap: int = 200, group_by: str = schema.PROMPT,
                      seed: int = 0, style_control: str = "both") -> dict[str, Any]:
    """The leaderboard of ``battles_uri``: plain Davidson strengths, style-controlled ones (``style_control``
    on or both), or both side by side, with bootstrap intervals and the style coefficients."""
    if style_control not in STYLE_CONTROL:
        raise PrefscaleError(f"unknown style control '{style_control}'; use one of {', '.join(STYLE_CONTROL)}")
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
    outcomes = _outcomes(battles, score_dirs)
    fit = leaderboard(first, second, outcomes, names, groups, bootstrap, seed)
    table = _table(fit)
    notes = [f"{name} has {int(n)} battles (fewer than {FEW_BATTLES}): its interval is wide" for name, n in zip(names, fit["battles"], strict=True)
             if n < FEW_BATTLES]
    summary: dict[str, Any] = {"battles": len(battles), "rejected": rejects.num_rows, "models": len(names), "groups": fit["groups"],
                               "bootstrap": bootstrap, "tie_parameter": round(fit["nu"], 4),
                               "outcomes": "scores" if score_dirs else "labels", "style_control": style_control}
    coefficients = None
    if style_control != "off":
        styled, coefficients = _style_table(battles_uri, reason == "", first, second, outcomes, names, groups, bootstrap, seed, notes)
        table = table.merge(styled, on="model")
        summary["style_coefficients"] = coefficients.round(4).to_dict(orient="records")
        if style_control == "on":
            table = table.drop(columns=["rating", "rating_low", "rating_high"])
    if score_dirs and labeled:
        human = leaderboard(first, second, battles[list(schema.LABEL_COLUMNS)].to_numpy(dtype=float), names, groups, bootstrap, seed)
        table = table.merge(_table(human, "human_"), on="model")
        summary["spearman_vs_human"] = round(float(table["rating"].rank().corr(table["human_rating"].rank())), 4)
    table["battles"] = fit["battles"]
    key = "rating" if style_control != "on" else "style_rating"
    table = table.sort_values(key, ascending=False).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    if style_control == "both":
        table.insert(1, "style_rank", table["style_rating"].rank(ascending=False, method="min").astype(int))
        summary["spearman_plain_vs_style"] = round(float(table["rating"].rank().corr(table["style_rating"].rank())), 4)
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
    if coefficients is not None:
        write_bytes(coefficients.to_csv(index=False).encode(), path("style_coefficients.csv"))
    _plot(table, path("leaderboard.png"))
    summary.update({"top": table["model"].head(5).tolist(), "notes": notes, "output": out_dir, "seconds": round(time.perf_counter() - started, 2)})
    if style_control == "both":
        summary["top_style_controlled"] = table.sort_values("style_rating", ascending=False)["model"].head(5).tolist()
    return summary
