"""Score battles with one or more models through Ray Data, resumably, at bounded memory.

read_parquet (id + text only) -> skip ids already scored -> format + tokenize (CPU tasks
feeding GPU actors; on CPU, inside the first actor pool) -> one actor pool per model (each
actor holds one replica; score.pack_models: one pool whose actors hold them all) -> the driver
writes small output rows as Parquet parts, each renamed into place when complete.

Resume: the output directory's parts are the manifest. A rerun reads their ids and scores
only the rest, so an interrupted job finishes without rescoring or duplicating anything.
Rows come back in any order; ``id`` carries identity. A row that cannot be formatted goes
to ``_rejects/`` with its reason, so scored + rejected = input.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from prefscale.artifacts import SCORE_SCHEMA, SWAP_FLIP, read_parts
from prefscale.config import ScoreConfig
from prefscale.data import schema
from prefscale.devices import raised_prefscale_error
from prefscale.errors import PrefscaleError
from prefscale.io import ParquetSink, exists, read_head, resolve, write_json
from prefscale.progress import bar
from prefscale.ray_runtime import session
from prefscale.scaling import accelerator, await_resources
from prefscale.score.encode import ERROR, encode_battles
from prefscale.score.scorer import ACTOR_RSS, ModelScorer
from prefscale.score.scoring_model import ScoringModel
from prefscale.score.tta import softmax

REJECTS_DIR = "_rejects"
DONE_FILE = "_SUCCESS.json"


def _read_rejects(output: str) -> pa.Table:
    fs, path = resolve(os.path.join(output, REJECTS_DIR))
    if not exists(os.path.join(output, REJECTS_DIR)):
        return schema.ID_REJECT_SCHEMA.empty_table()
    return pads.dataset(path, filesystem=fs, format="parquet", schema=schema.ID_REJECT_SCHEMA).to_table()


class _PartWriter:
    """Buffers small output rows and writes them as atomic Parquet parts."""

    def __init__(self, directory: str, part_rows: int) -> None:
        self.directory = directory
        self.part_rows = part_rows
        self.session = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
        if self.pending_rows >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        with ParquetSink(os.path.join(self.directory, f"part-{self.session}-{self.parts:05d}.parquet")) as sink:
            sink.write(table)
        self.parts += 1
        self.rows += table.num_rows
        self.pending, self.pending_rows = [], 0


def _drop_done(batch: pa.Table, done: np.ndarray) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch.column(schema.ID), value_set=pa.array(done, pa.int64()))))


def _stream(ds):
    """The job's output blocks; a PrefscaleError raised in a task or actor comes back as itself, one line."""
    try:
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)
    except Exception as exc:
        raised = raised_prefscale_error(exc)
        if raised is None:
            raise
        raise raised from None


def _no_extra_args() -> dict[str, Any]:
    return {}


def _long_rows(batch: pa.Table, models: list[ScoringModel]) -> pa.Table:
    """Wide per-model columns -> one row per (id, model); a fold model's row only for its fold's battles."""
    tables = []
    wide = batch
    for m in models:
        batch = wide if m.fold is None else wide.filter(pc.equal(wide.column(schema.FOLD), m.fold))
        logits = np.stack([batch.column(m.column(c)).to_numpy(zero_copy_only=False) for c in schema.LOGITS], axis=1)
        probs = softmax(logits.astype(np.float64))
        columns = {schema.ID: batch.column(schema.ID), "model": pa.array([m.name] * batch.num_rows, pa.string())}
        columns |= {c: pa.array(logits[:, i], pa.float32()) for i, c in enumerate(schema.LOGITS)}
        columns |= {c: pa.array(probs[:, i], pa.float32()) for i, c in enumerate(schema.PROBS)}
        columns |= {SWAP_FLIP: batch.column(m.column(SWAP_FLIP)), "tokens": batch.column(m.column("tokens")), "computed_tokens": batch.column(m.column("computed_tokens"))}
        tables.append(pa.table(columns, schema=SCORE_SCHEMA))
    return pa.concat_tables(tables)


READ_BATCH_ROWS = 8192  # a row group bigger than this is streamed in record batches, never read whole
READ_CPUS = 0.25  # what Ray reserves per read task: reading is light beside tokenizing and the model
REPARTITION_CPUS = 1.0  # Ray 2.60 runs Dataset.repartition as tasks of one whole CPU, not configurable


def _read_row_groups(items: pa.Table, columns: list[str], batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    for uri, group in zip(items.column("uri").to_pylist(), items.column("row_group").to_pylist(), strict=True):
        fs, path = resolve(uri)
        with fs.open_input_file(path) as handle:
            # pre_buffer off + a read buffer: a row group's column chunks stream in 4 MiB reads
            # instead of being loaded whole (hundreds of MB for a 1M-row group of plain text).
            parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=4 << 20)
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                yield pa.Table.from_batches([batch])


def _row_group_dataset(uri: str, columns: list[str], batch_rows: int = READ_BATCH_ROWS, concurrency: int | None = None):
    """A dataset with one read task per Parquet row group.

    ray.data.read_parquet reads a file as one block, so a single large file would be read
    whole by one task (memory grows with the file, one actor works). Row groups bound both.
    """
    import pyarrow.parquet as pq
    import ray

    fs, path = resolve(uri)
    items, total = [], 0
    for fragment in pads.dataset(path, filesystem=fs, format="parquet").get_fragments():
        file_uri = fragment.path if "://" not in uri else f"{uri.split('://')[0]}://{fragment.path}"
        with fs.open_input_file(fragment.path) as handle:
            meta = pq.ParquetFile(handle).metadata
        items += [{"uri": file_uri, "row_group": g} for g in range(meta.num_row_groups)]
        total += meta.num_rows
    ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
    return ds.map_batches(_read_row_groups, fn_kwargs={"columns": columns, "batch_rows": batch_rows}, batch_size=1, batch_format="pyarrow", num_cpus=READ_CPUS,
                          concurrency=concurrency), total


def _input_dataset(input_uri: str, settings: ScoreConfig, done: np.ndarray, columns: list[str] | None = None, repartition: bool = True):
    import ray

    columns = columns or [schema.ID, *schema.TEXT_COLUMNS]
    if settings.rows is not None:
        # A fixed head of the file (not Dataset.limit, whose rows can differ between runs).
        head = read_head(input_uri, settings.rows, columns)
        ds, total = ray.data.from_arrow(head), head.num_rows
    else:
        # Without the repartition (the cascade), blocks are the reads' own batches, and one read task keeps up.
        ds, total = _row_group_dataset(input_uri, columns, *((READ_BATCH_ROWS, None) if repartition else (settings.block_rows, 1)))
    if len(done):
        ds = ds.map_batches(_drop_done, fn_kwargs={"done": done}, batch_format="pyarrow", batch_size=None, num_cpus=settings.format_cpus)
    if not repartition:
        return ds, total
    # One Parquet file reads as one block, which only one actor could work on: cut the stream
    # into blocks of block_rows (a streaming repartition, nothing is materialized).
    return ds.repartition(target_num_rows_per_block=settings.block_rows), total


def pools_fit(models: int, settings: ScoreConfig, cluster: dict[str, float]) -> str | None:
    """Why the models' actor pools (one per model, or one in all with score.pack_models) cannot all
    be placed at once (they would wait forever), or None."""
    pools = min(models, 1) if settings.pack_models else models
    actors = pools * settings.actors
    # Beside the pools, at least the largest of the other tasks must fit, or blocks never reach them.
    cpus = actors * settings.cpus_per_actor + max(settings.format_cpus, READ_CPUS, REPARTITION_CPUS)
    gpus = actors * settings.gpus_per_actor
    if cpus > cluster.get("CPU", 0) or gpus > cluster.get("GPU", 0):
        return (f"{pools} actor pools x {settings.actors} actors need {cpus:g} CPUs and {gpus:g} GPUs at once but the cluster has "
                f"{cluster.get('CPU', 0):g} and {cluster.get('GPU', 0):g}; score fewer models per pass, pack them (score.pack_models), or "
                "lower score.cpus_per_actor / score.actors (a whole CPU stays free for cutting blocks)")
    return None


def score_plan(input_uri: str, plan: list[tuple[ScoringModel, ScoreConfig]], output_for: Callable[[str], str]) -> dict[str, tuple[str, dict]]:
    """Score every model of a plan (scoring_model.scoring_plan's steps): one pass per model, or with
    score.pack_models one pass per group of models at the same settings. Returns {pass name:
    (output directory, summary)}; a pass's name joins its models' names, and output_for(name)
    places it, so a pass with other models never resumes into another's output."""
    passes: dict[str, tuple[list[ScoringModel], ScoreConfig]] = {}
    for model, settings in plan:
        key = settings.model_dump_json() if settings.pack_models else model.name
        passes.setdefault(key, ([], settings))[0].append(model)
    done = {}
    for models, settings in passes.values():
        name = "+".join(m.name for m in models)
        if len(name) > 120:  # a directory name: many packed models are named by their digest
            name = f"{models[0].name}+{len(models) - 1}-more-{hashlib.blake2b(name.encode(), digest_size=6).hexdigest()}"
        out = output_for(name)
        done[name] = (out, score_battles(input_uri, out, models, settings))
    return done


def score_battles(input_uri: str, output_uri: str, models: list[ScoringModel], settings: ScoreConfig = ScoreConfig()) -> dict[str, Any]:
    """Score every id of ``input_uri`` not yet in ``output_uri`` (a directory of Parquet parts,
    readable as one table by pandas, Spark, Ray) with each model; returns a JSON-ready summary.
    ``settings`` is the config's score section (its input, output and models are not read here)."""
    import ray

    started = time.perf_counter()
    if not exists(input_uri):
        raise PrefscaleError(f"input not found: {input_uri}; run the data stages first or pass --input")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise PrefscaleError(f"model names must be unique, got {names}")
    pools = [models] if settings.pack_models else [[m] for m in models]  # packed: each actor holds every model
    if session()["joined"]:  # a cluster that may grow: ask its autoscaler for the pools, and wait
        pools_count = 1 if settings.pack_models else len(models)
        await_resources([{"CPU": settings.cpus_per_actor, "GPU": settings.gpus_per_actor,
                          **(accelerator(settings.accelerator_type) if settings.gpus_per_actor else {})}] * (pools_count * settings.actors),
                        f"the scoring pools of {', '.join(names)}")
    elif problem := pools_fit(len(models), settings, ray.cluster_resources()):
        raise PrefscaleError(problem)
    previous = read_parts(output_uri, [schema.ID, "model"])
    previous_rejects = _read_rejects(output_uri).column(schema.ID).to_numpy()
    done = np.union1d(pc.unique(previous.column(schema.ID)).to_numpy(), previous_rejects)
    routed = any(m.fold is not None for m in models)
    ds, total = _input_dataset(input_uri, settings, done, [schema.ID, *([schema.FOLD] if routed else []), *schema.TEXT_COLUMNS])

    use_gpu = settings.gpus_per_actor > 0
    if use_gpu:
        # ray_remote_args_fn keeps tokenization in its own CPU tasks: without it Ray fuses this
        # stage into the model actors, and the GPU would wait on the tokenizer.
        ds = ds.map_batches(encode_battles, fn_kwargs={"models": models, "tta": settings.tta}, batch_format="pyarrow",
                            batch_size=settings.block_rows, num_cpus=settings.format_cpus, ray_remote_args_fn=_no_extra_args)
    threads = settings.threads_per_actor or max(1, (os.cpu_count() or 1) // settings.actors)
    for k, group in enumerate(pools):
        # On CPU the first pool tokenizes its own blocks: tokenizer tasks beside the model's
        # threads would take cores from it mid-pass (a 2,000-battle job ran at 0.84 of a bare loop).
        encode = (models, settings.tta) if not use_gpu and k == 0 else None
        ds = ds.map_batches(
            ModelScorer,
            fn_constructor_kwargs={"models": group, "max_tokens": settings.max_tokens, "threads": threads,
                                   "use_gpu": use_gpu, "tta_space": settings.tta_space, "encode": encode, "rehearse": session()["rehearse_gpus"]},
            batch_size=settings.block_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=settings.actors),
            num_cpus=settings.cpus_per_actor,
            num_gpus=settings.gpus_per_actor,
            accelerator_type=settings.accelerator_type if use_gpu else None,
        )

    scores = _PartWriter(output_uri, settings.part_rows)
    rejects = _PartWriter(os.path.join(output_uri, REJECTS_DIR), settings.part_rows)
    tokens = {m.name: [0, 0] for m in models}
    actor_rss = 0
    remaining = max(total - len(done), 0)
    scored = 0
    first_batch_s = None  # the wait before rows flow: actors started, models loaded, the first actor task's blocks scored
    with bar(remaining, f"score {','.join(names)}") as progress:
        for batch in _stream(ds):
            first_batch_s = first_batch_s or round(time.perf_counter() - started, 2)
            actor_rss = max(actor_rss, pc.max(batch.column(ACTOR_RSS)).as_py() or 0)
            failed = pc.invert(pc.is_null(batch.column(ERROR)))
            bad = batch.filter(failed)
            if bad.num_rows:
                rejects.add(pa.table({schema.ID: bad.column(schema.ID), schema.REJECT_REASON: pa.array(["format_error"] * bad.num_rows),
                                      schema.REJECT_DETAIL: bad.column(ERROR)}, schema=schema.ID_REJECT_SCHEMA))
            good = batch.filter(pc.invert(failed))
            for m in models:
                tokens[m.name][0] += pc.sum(good.column(m.column("tokens"))).as_py() or 0
                tokens[m.name][1] += pc.sum(good.column(m.column("computed_tokens"))).as_py() or 0
            scores.add(_long_rows(good, models))
            scored += good.num_rows
            progress.update(batch.num_rows)
    scores.flush()
    rejects.flush()

    seconds = time.perf_counter() - started
    new_rows = scored
    final = read_parts(output_uri, [schema.ID, "model"])
    summary = {
        "input": input_uri,
        "output": output_uri,
        "models": names,
        "tta": settings.tta,
        "input_rows": total,
        "already_done": int(len(done)),
        "scored": new_rows,
        "rejected": rejects.rows,
        "output_rows": final.num_rows,
        "unique_ids": len(pc.unique(final.column(schema.ID))),
        "padding_efficiency": {n: round(t[0] / t[1], 4) if t[1] else None for n, t in tokens.items()},
        "seconds": round(seconds, 2),
        "first_batch_s": first_batch_s,
        "rows_per_s": round(new_rows / seconds, 2) if seconds else None,
        "actor_peak_rss_gib": round(actor_rss / 2**30, 3) if actor_rss else None,  # the largest actor's, to read against the plan
    }
    write_json(summary, os.path.join(output_uri, DONE_FILE))
    return summary
