"""Soft labels for unlabeled battles from one or more scored models, or from a cascade's output.

Model probabilities are averaged per battle; confidence (top probability), entropy and
agreement (share of models whose top class matches the ensemble's) describe each label.
Filters drop unsure battles and can rebalance classes; every dropped battle goes to the
rejects with its reason. The output is the battle schema with the soft label in the winner
columns, so the training stage reads it as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from prefscale.artifacts import read_parts
from prefscale.config import PseudolabelConfig
from prefscale.data import schema
from prefscale.data.dedup import battle_key
from prefscale.data.readers import open_battles
from prefscale.data.schema import PROBS
from prefscale.errors import PrefscaleError
from prefscale.io import ParquetSink
from prefscale.progress import bar

QUALITY_COLUMNS = ("pl_confidence", "pl_entropy", "pl_agreement", "pl_models")
IN_LABELED_SET = "in_labeled_set"


def _model_probs(directory: str) -> pd.DataFrame:
    """(id, model, probabilities) of a score directory; a cascade output (`prefscale cascade`,
    `score --cascade`) counts as one model, "cascade", its final prediction per battle."""
    import pyarrow.dataset as pads

    from prefscale.cascade.run import STAGE
    from prefscale.io import exists, resolve

    if exists(directory):
        fs, path = resolve(directory)
        parts = pads.dataset(path, filesystem=fs, format="parquet")
        if STAGE in parts.schema.names:
            return parts.to_table(columns=[schema.ID, *PROBS]).to_pandas().assign(model="cascade")
    return read_parts(directory, [schema.ID, "model", *PROBS]).to_pandas()


def ensemble(score_dirs: list[str]) -> pd.DataFrame:
    """Per id: mean probabilities over every model in every directory, plus quality columns."""
    frames = [_model_probs(d) for d in score_dirs]
    scores = pd.concat(frames, ignore_index=True).dropna(subset=list(PROBS))
    if scores.empty:
        raise PrefscaleError(f"no scores found in {', '.join(score_dirs)}; run `prefscale score` first")
    probs = scores.groupby(schema.ID)[list(PROBS)].mean()
    top = probs.to_numpy().argmax(axis=1)
    scores["top"] = scores[list(PROBS)].to_numpy().argmax(axis=1)
    scores["ensemble_top"] = pd.Series(top, index=probs.index).reindex(scores[schema.ID]).to_numpy()
    agreement = (scores["top"] == scores["ensemble_top"]).groupby(scores[schema.ID]).mean()
    p = probs.to_numpy()
    return probs.assign(
        pl_confidence=p.max(axis=1),
        pl_entropy=-(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1),
        pl_agreement=agreement.reindex(probs.index).to_numpy(),
        pl_models=scores.groupby(schema.ID)["model"].nunique().reindex(probs.index).to_numpy(),
    )


def labeled_repeats(battles_uri: str, labeled_uri: str) -> pd.Series:
    """The labeled battle (its id) that each unlabeled battle repeats, in either order, by id.

    Such a battle is already labeled by people, and a teacher's pseudolabel of it would carry the
    teacher's view of a labeled (possibly held-out) battle into a student's training."""
    known: dict[bytes, int] = {}
    for id_, key in _battle_keys(labeled_uri):
        known.setdefault(key, id_)
    repeats = {id_: known[key] for id_, key in _battle_keys(battles_uri) if key in known}
    return pd.Series(repeats, dtype="int64")


def _battle_keys(uri: str) -> Iterator[tuple[int, bytes]]:
    """(id, swap-aware content key) of every battle in the file, streamed."""
    for batch in open_battles(uri).batches(batch_rows=65_536, columns=[schema.ID, *schema.TEXT_COLUMNS]):
        cells = [batch.column(c).to_pylist() for c in (schema.ID, *schema.TEXT_COLUMNS)]
        for id_, prompt, a, b in zip(*cells, strict=True):
            yield id_, battle_key(prompt, a, b, "swap")[0]


def _reasons(table: pd.DataFrame, options: PseudolabelConfig, repeats: pd.Series) -> pd.Series:
    """Why each battle is dropped (None when kept), filters applied in order."""
    reason = pd.Series(None, index=table.index, dtype=object)
    reason[table.index.isin(repeats.index)] = IN_LABELED_SET
    reason[reason.isna() & (table.pl_confidence < options.min_confidence)] = "low_confidence"
    if options.max_entropy is not None:
        reason[reason.isna() & (table.pl_entropy > options.max_entropy)] = "high_entropy"
    reason[reason.isna() & (table.pl_agreement < options.min_agreement)] = "low_agreement"
    if options.balance != "none":
        shares = np.full(3, 1 / 3) if options.balance == "uniform" else np.asarray(options.prior, dtype=float)
        if options.balance == "prior" and (shares is None or len(shares) != 3):
            raise PrefscaleError("balance: prior needs pseudolabel.prior as three class shares")
        kept = reason.isna()
        top = table.loc[kept, list(PROBS)].to_numpy().argmax(axis=1)
        counts = np.bincount(top, minlength=3)
        total = min(counts[c] / shares[c] for c in range(3) if shares[c] > 0)
        rng = np.random.default_rng(options.seed)
        kept_index = table.index[kept]
        for c in range(3):
            members = np.sort(kept_index[top == c].to_numpy())
            surplus = len(members) - int(np.floor(total * shares[c]))
            if surplus > 0:
                reason[rng.choice(members, surplus, replace=False)] = "class_balance"
    return reason


def write_pseudolabels(battles_uri: str, score_dirs: list[str], out_uri: str, rejects_uri: str, options: PseudolabelConfig = PseudolabelConfig(),
                       labeled_uri: str | None = None) -> dict[str, Any]:
    """Stream the battles once, writing labeled rows or rejects (battles + rejects = input).
    With ``labeled_uri``, battles that repeat a labeled one are rejected (in_labeled_set)."""
    started = time.perf_counter()
    table = ensemble(score_dirs)
    repeats = labeled_repeats(battles_uri, labeled_uri) if labeled_uri else pd.Series([], dtype="int64")
    reason = _reasons(table, options, repeats)
    source = open_battles(battles_uri)
    missing = [c for c in (*schema.LABEL_COLUMNS, schema.FLAGS) if c not in source.schema.names]
    if missing:
        raise PrefscaleError(f"{battles_uri} lacks {', '.join(missing)}; pseudolabel battles from `prefscale data pairs` or `data validate`")
    counts: dict[str, int] = {}
    with ParquetSink(out_uri, empty_schema=schema.BATTLE_SCHEMA) as sink, ParquetSink(rejects_uri, empty_schema=schema.ID_REJECT_SCHEMA) as rejects, \
            bar(source.num_rows, "pseudolabel") as progress:
        for batch in source.batches(batch_rows=65_536):
            ids = batch.column(schema.ID).to_numpy()
            known = pd.Series(ids).isin(table.index).to_numpy()
            why = np.where(known, reason.reindex(ids).to_numpy(), "unscored")
            for r in why[pd.notna(why)]:
                counts[r] = counts.get(r, 0) + 1
            dropped = pd.notna(why)
            if dropped.any():
                rejects.write(pa.table({schema.ID: pa.array(ids[dropped], pa.int64()), schema.REJECT_REASON: pa.array(why[dropped].astype(str)),
                                        schema.REJECT_DETAIL: pa.array(_details(ids[dropped], why[dropped], repeats), pa.string())},
                                       schema=schema.ID_REJECT_SCHEMA))
            keep = ~dropped
            if keep.any():
                sink.write(_labeled(batch.filter(pa.array(keep)), table))
            progress.update(batch.num_rows)
    kept = sink.rows
    shares = table.loc[reason.isna(), list(PROBS)].to_numpy().argmax(axis=1)
    return {
        "input": battles_uri,
        "scores": score_dirs,
        "output": out_uri,
        "rejects_path": rejects_uri,
        "battles": kept + rejects.rows,
        "deduplicated_against": labeled_uri,
        "pseudolabeled": kept,
        "rejected": dict(sorted(counts.items())),
        "top_class_share": dict(zip(schema.CLASSES, np.round(np.bincount(shares, minlength=3) / max(len(shares), 1), 4).tolist(), strict=True)),
        "mean_confidence": round(float(table.loc[reason.isna(), "pl_confidence"].mean()), 4) if kept else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _details(ids: np.ndarray, why: np.ndarray, repeats: pd.Series) -> list[str | None]:
    return [f"same battle as labeled id {repeats[i]}" if r == IN_LABELED_SET else None for i, r in zip(ids, why, strict=True)]


def _labeled(batch: pa.RecordBatch, table: pd.DataFrame) -> pa.Table:
    rows = table.reindex(batch.column(schema.ID).to_numpy())
    out = pa.Table.from_batches([batch])
    for column, prob in zip(schema.LABEL_COLUMNS, PROBS, strict=True):
        out = out.set_column(out.schema.get_field_index(column), column, pa.array(rows[prob].to_numpy(), pa.float32()))
    flags = [",".join(filter(None, [f, "pseudolabel"])) for f in out.column(schema.FLAGS).to_pylist()]
    out = out.set_column(out.schema.get_field_index(schema.FLAGS), schema.FLAGS, pa.array(flags, pa.string()))
    for column in QUALITY_COLUMNS:
        out = out.append_column(column, pa.array(rows[column].to_numpy(), pa.float32()))
    return out
