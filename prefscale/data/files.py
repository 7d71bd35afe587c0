"""The data operations on whole files: validate, split, pairs, stats (the CLI and the pipeline call them).

Each reads its inputs, writes Parquet atomically and returns a JSON-ready summary.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefscale.config import PairsConfig, ValidationConfig
from prefscale.data import schema
from prefscale.data.dedup import DedupMode, deduplicate, reject_repeated_ids
from prefscale.data.folds import assign_folds
from prefscale.data.pairs import count_distinct_pairs, generate_pairs, load_long_table
from prefscale.data.readers import open_battles
from prefscale.data.validate import Validator
from prefscale.errors import PrefscaleError
from prefscale.io import ParquetSink, read_table, write_table
from prefscale.progress import bar


def validate_file(input_uri: str, out_uri: str, rejects_uri: str, options: ValidationConfig = ValidationConfig(),
                  predicting: bool = False) -> dict[str, Any]:
    """Validate one input into clean and rejects files; clean + rejected = input rows (``predicting``: see check_row)."""
    source = open_battles(input_uri)
    validator = Validator(options, predicting)
    started = time.perf_counter()
    with ParquetSink(out_uri, empty_schema=schema.BATTLE_SCHEMA) as clean_sink, ParquetSink(rejects_uri, empty_schema=_reject_schema(source.schema)) as reject_sink, bar(source.num_rows, f"validate {os.path.basename(input_uri)}") as progress:
        for clean, rejects in validator.validate(source.batches()):
            clean_sink.write(clean)
            reject_sink.write(rejects)
            progress.update(clean.num_rows + rejects.num_rows)
    stats = validator.stats.as_dict()
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return {"input": input_uri, "format": source.format, "arena_layout": source.is_arena, "clean_path": out_uri, "rejects_path": rejects_uri, **stats}


def _reject_schema(raw: pa.Schema) -> pa.Schema:
    return raw.append(pa.field(schema.REJECT_REASON, pa.string())).append(pa.field(schema.REJECT_DETAIL, pa.string()))


def split(inputs: list[str], out_uri: str, rejects_uri: str, *, folds: int, seed: int = 0, dedup: DedupMode = "swap", merge_labels: bool = True) -> dict[str, Any]:
    """Concatenate clean inputs, deduplicate, and assign prompt-grouped folds.

    Works on whole tables: training sets (tens to hundreds of thousands of battles) fit in
    memory, and swap-aware dedup needs to see every row anyway.
    """
    started = time.perf_counter()
    with bar(len(inputs) + 3, "split", unit="steps") as progress:  # read each input, dedup, folds, write
        tables = []
        for uri in inputs:
            tables.append(read_table(uri))
            if missing := [c for c in schema.CORE_COLUMNS if c not in tables[-1].column_names]:
                raise PrefscaleError(f"{uri} is not validated (no {', '.join(missing)}); run `prefscale data validate` on it and split its clean output")
            progress.update()
        table = pa.concat_tables(tables, promote_options="permissive")
        if table.num_rows == 0:
            raise PrefscaleError(f"nothing to split: {', '.join(inputs)} hold no battles; check the validation rejects beside them")
        table, repeated_ids = reject_repeated_ids(table)
        kept, duplicates, dedup_summary = deduplicate(table, dedup, merge_labels)
        duplicates = pa.concat_tables([repeated_ids, duplicates], promote_options="permissive")
        progress.update()
        kept = assign_folds(kept, folds, seed)
        progress.update()
        write_table(kept, out_uri)
        write_table(duplicates, rejects_uri)
        progress.update()
    sizes = np.bincount(kept.column(schema.FOLD).to_numpy(), minlength=folds).tolist()
    return {
        "inputs": inputs,
        "rows": table.num_rows,
        "kept": kept.num_rows,
        "duplicates": duplicates.num_rows,
        "duplicate_ids": repeated_ids.num_rows,
        "dedup": dedup_summary,
        "folds": folds,
        "fold_sizes": sizes,
        "output": out_uri,
        "rejects_path": rejects_uri,
        "seconds": round(time.perf_counter() - started, 3),
    }


def make_pairs(input_uri: str, out_uri: str, options: PairsConfig = PairsConfig()) -> dict[str, Any]:
    """Stream every unlabeled battle between generators on one instruction to Parquet."""
    started = time.perf_counter()
    long = load_long_table(input_uri)
    distinct = count_distinct_pairs(long)
    expected = distinct * (2 if options.swap else 1) if options.sample_fraction == 1.0 and not options.max_pairs_per_instruction and not options.max_instructions else None
    # Rows repeat each answer ~60 times inside a row group: a large dictionary page lets
    # Parquet store each answer once per row group instead of once per pair. Row groups of
    # 8k rows are what downstream readers (the scoring engine) stream one at a time.
    with ParquetSink(out_uri, empty_schema=schema.BATTLE_SCHEMA, row_group_rows=8192, dictionary_pagesize_limit=64 << 20) as sink, bar(expected, "pairs") as progress:
        for battles in generate_pairs(long, options):
            sink.write(battles)
            progress.update(battles.num_rows)
    seconds = time.perf_counter() - started
    return {
        "input": input_uri,
        "instructions": min(len(pc.unique(long.column("instruction"))), options.max_instructions or len(long)),  # the ones paired
        "instructions_in_input": len(pc.unique(long.column("instruction"))),
        "outputs": long.num_rows,
        "distinct_pairs": distinct,
        "pairs_written": sink.rows,
        "swap": options.swap,
        "output": out_uri,
        "seconds": round(seconds, 3),
        "rows_per_s": round(sink.rows / seconds, 1) if seconds else None,
    }


def stats(input_uri: str) -> dict[str, Any]:
    """Counts a user checks before training: rows, label balance, flags, folds, turns."""
    source = open_battles(input_uri)
    validator = Validator()
    labels = np.zeros(3)
    unlabeled = 0
    folds: dict[int, int] = {}
    datasets: dict[str, int] = {}
    with bar(source.num_rows, f"stats {os.path.basename(input_uri)}") as progress:
        for clean, rejects in validator.validate(source.batches()):
            matrix = schema.label_matrix(clean)
            known = ~np.isnan(matrix).any(axis=1)
            labels += matrix[known].sum(axis=0)
            unlabeled += int((~known).sum())
            if schema.FOLD in clean.column_names:
                for value, count in zip(*np.unique(np.asarray(clean.column(schema.FOLD).to_pylist(), dtype=object).astype(str), return_counts=True), strict=True):
                    folds[value] = folds.get(value, 0) + int(count)
            # Each row's source as the report names it: a row without a dataset is the arena's (schema.DEFAULT_SOURCE)
            for value, count in zip(*np.unique(schema.battle_sources(clean).astype(str), return_counts=True), strict=True):
                datasets[value] = datasets.get(value, 0) + int(count)
            progress.update(clean.num_rows + rejects.num_rows)
    labeled = float(labels.sum())
    shares = (labels / labeled) if labeled else np.full(3, np.nan)
    prior_loss = float(-(shares * np.log(np.clip(shares, 1e-12, 1))).sum()) if labeled else None
    return {
        "input": input_uri,
        **{k: v for k, v in validator.stats.as_dict().items() if k in ("rows", "clean", "rejected", "reasons", "flags")},
        "labeled": int(round(labeled)),
        "unlabeled": unlabeled,
        "label_share": dict(zip(schema.CLASSES, [round(float(x), 4) for x in shares], strict=True)) if labeled else None,
        "prior_log_loss": round(prior_loss, 4) if prior_loss is not None else None,
        "folds": folds or None,
        "datasets": datasets or None,
    }
