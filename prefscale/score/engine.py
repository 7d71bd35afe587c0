"""Score battles with a classifier through a Ray Data actor pool.

Each actor loads one model replica once and formats, tokenizes and scores the blocks it is
sent. Batches inside a block are cut from length-sorted rows, so little compute goes to
padding. Rows come back in any order; ``id`` carries the identity.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from prefscale.data import schema as S
from prefscale.io import ParquetSink, resolve
from prefscale.text.formatter import TextOptions

LOGIT_COLUMNS = ("logit_a", "logit_b", "logit_tie")
PROB_COLUMNS = ("prob_a", "prob_b", "prob_tie")
SCORE_SCHEMA = pa.schema(
    [pa.field(S.ID, pa.int64()), pa.field("model", pa.string())]
    + [pa.field(c, pa.float32()) for c in (*LOGIT_COLUMNS, *PROB_COLUMNS)]
    + [pa.field("tokens", pa.int32()), pa.field("truncated", pa.bool_())]
)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class BattleScorer:
    """A Ray Data actor: one model replica, called on pyarrow batches of battles."""

    def __init__(self, model_path: str, model_name: str, text: TextOptions, batch_size: int, threads: int, trust_remote_code: bool = False) -> None:
        import torch

        from prefscale.models.loading import load_classifier, load_tokenizer
        from prefscale.text.formatter import BattleFormatter

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model = load_classifier(model_path, trust_remote_code).eval()
        self.formatter = BattleFormatter(self.tokenizer, text)
        self.model_name = model_name
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        encoded = self.formatter.encode(*(batch.column(c).to_pylist() for c in S.TEXT_COLUMNS))
        lengths = np.array([len(ids) for ids in encoded.input_ids])
        order = np.argsort(lengths, kind="stable")
        logits = np.zeros((len(lengths), 3), dtype=np.float32)
        pad = self.tokenizer.pad_token_id
        with self.torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = int(lengths[rows].max())
                ids = self.torch.full((len(rows), width), pad, dtype=self.torch.long)
                mask = self.torch.zeros((len(rows), width), dtype=self.torch.long)
                for k, row in enumerate(rows):
                    ids[k, : lengths[row]] = self.torch.tensor(encoded.input_ids[row])
                    mask[k, : lengths[row]] = 1
                logits[rows] = self.model(input_ids=ids, attention_mask=mask).logits.float().numpy()
        probs = softmax(logits)
        columns = {S.ID: batch.column(S.ID), "model": pa.array([self.model_name] * len(lengths), pa.string())}
        columns |= {c: pa.array(logits[:, i]) for i, c in enumerate(LOGIT_COLUMNS)}
        columns |= {c: pa.array(probs[:, i]) for i, c in enumerate(PROB_COLUMNS)}
        columns |= {"tokens": pa.array(lengths, pa.int32()), "truncated": pa.array(encoded.truncated)}
        return pa.table(columns, schema=SCORE_SCHEMA)


@dataclass
class ScoreSummary:
    rows: int
    output: str
    seconds: float

    def as_dict(self) -> dict:
        return {"rows": self.rows, "output": self.output, "seconds": round(self.seconds, 2), "rows_per_s": round(self.rows / self.seconds, 1)}


def score_battles(
    input_uri: str,
    output_uri: str,
    model_path: str,
    model_name: str,
    text: TextOptions,
    *,
    rows: int | None = None,
    batch_size: int = 16,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    threads_per_actor: int | None = None,
    trust_remote_code: bool = False,
) -> ScoreSummary:
    """Read battles with Ray Data, score them on an actor pool, write Parquet atomically."""
    import ray

    started = time.perf_counter()
    fs, path = resolve(input_uri)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=[S.ID, *S.TEXT_COLUMNS])
    if rows is not None:
        ds = ds.limit(rows)
    ds = ds.map_batches(
        BattleScorer,
        fn_constructor_kwargs={
            "model_path": model_path,
            "model_name": model_name,
            "text": text,
            "batch_size": batch_size,
            "threads": threads_per_actor or max(1, (os.cpu_count() or 1) // actors),
            "trust_remote_code": trust_remote_code,
        },
        batch_size=batch_size * 8,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    with ParquetSink(output_uri, empty_schema=SCORE_SCHEMA) as sink:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            sink.write(batch)
    return ScoreSummary(sink.rows, output_uri, time.perf_counter() - started)
