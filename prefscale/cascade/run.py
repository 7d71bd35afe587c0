"""Apply a finished run's uncertainty cascade to battles: one streaming Ray Data job, resumable by id.

read (id, texts, protocol columns) -> skip ids already written -> stage 1 decider (an actor: a
cheap member predicts a whole block at once) -> for each later stage: one actor holding every
neural model it needs, which tokenizes and scores only the rows routed to it (rows not routed
cost nothing there), then its decider -> the driver writes one row per battle: the final probabilities, the stage
that decided them, and every stage's probabilities (null past the stage a battle reached).

A battle goes on when its prediction is at least as uncertain as the stage's threshold fitted
on OOF (report/cascade.json), or, under a compute budget (``send_fraction``), when it is among
the most uncertain share of its block. A routed row the next stage cannot score (its text
cannot be tokenized) keeps the last prediction it had, with the reason in ``error``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from prefscale.cascade.fit import most_uncertain, uncertainty
from prefscale.config import Config
from prefscale.data import schema
from prefscale.errors import PrefscaleError
from prefscale.io import exists, read_json, remove, resolve, write_json
from prefscale.layout import CHEAP_ENSEMBLE, ENSEMBLE
from prefscale.locks import exclusive
from prefscale.progress import bar

ROUTE = "_route"  # index of the stage a row waits for; -1 once decided
ERROR = "error"
STAGE = "stage"
DONE_FILE = "_SUCCESS.json"
FINGERPRINT_FILE = "_fingerprint.json"
DECIDER_CPUS = 0.1  # what Ray reserves for a decider; it works in bursts between the model actors


def stage_columns(stage: str) -> list[str]:
    return [f"{stage}_{c}" for c in schema.PROBS]


def member_columns(member: str) -> list[str]:
    """Working columns of one stacked member's probabilities, reused by later stages, never written."""
    return [f"_member.{member}.{c}" for c in schema.PROBS]


def output_schema(stages: list[str]) -> pa.Schema:
    fields = [pa.field(schema.ID, pa.int64()), *(pa.field(c, pa.float32()) for c in schema.PROBS), pa.field(STAGE, pa.string())]
    fields += [pa.field(c, pa.float32()) for s in stages for c in stage_columns(s)]
    return pa.schema([*fields, pa.field(ERROR, pa.string())])


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    members: tuple[str, ...]  # what it predicts from, in the stacker's order: cheap members and train runs
    cheap: tuple[str, ...]  # of those, members predicted with their fitted estimators
    runs: tuple[str, ...]  # of those, train runs whose neural probabilities it reads
    threshold: float | None  # fitted: routed on when uncertainty >= threshold (None: nothing goes on)
    fraction: float | None  # budget: the block's most uncertain share goes on
    last: bool
    carried: tuple[str, ...] = ()  # of its members, those a later stage reads: kept as working columns


def plan_stages(config: Config, stacked: list[str], thresholds: list[float | None], fraction: float | None) -> list[StagePlan]:
    stages = config.cascade.stages
    needs = [{ENSEMBLE: stacked, CHEAP_ENSEMBLE: [m for m in stacked if m in config.members]}.get(name, [name]) for name in stages]
    plans = []
    for k, name in enumerate(stages):
        later = {m for after in needs[k + 1:] for m in after}
        plans.append(StagePlan(k, name, tuple(needs[k]), tuple(m for m in needs[k] if m in config.members),
                               tuple(m for m in needs[k] if m in config.train), None if k == len(stages) - 1 else thresholds[k], fraction,
                               k == len(stages) - 1, tuple(m for m in needs[k] if m in later)))
    return plans


class StageDecider:
    """One cascade stage's prediction for the rows routed to it, and where each goes next."""

    def __init__(self, config: Config, stacked: list[str], plan: StagePlan, uncertainty_kind: str) -> None:
        from prefscale.predict import StackedEnsemble
        from prefscale.score.scoring_model import scoring_plan

        self.plan, self.uncertainty = plan, uncertainty_kind
        self.estimators = {m: config.layout.member_model(m) for m in plan.cheap}  # loaded when a block first needs one
        self.models = {run: [model.name for model, _ in scoring_plan(config, run)] for run in plan.runs}
        self.ensemble = StackedEnsemble(config.layout, list(plan.members), plan.name) if plan.name in (ENSEMBLE, CHEAP_ENSEMBLE) else None

    def _member_probs(self, name: str, rows: pa.Table) -> np.ndarray:
        if member_columns(name)[0] in rows.column_names:  # an earlier stage predicted it
            return np.stack([rows.column(c).to_numpy(zero_copy_only=False) for c in member_columns(name)], axis=1).astype(np.float64)
        if name in self.estimators:
            if isinstance(self.estimators[name], str):
                from prefscale.members.store import load_estimator

                self.estimators[name] = load_estimator(self.estimators[name])
            return self.estimators[name].predict_proba(rows)
        from prefscale.score.tta import softmax

        logits = [np.stack([rows.column(f"{model}.{c}").to_numpy(zero_copy_only=False) for c in schema.LOGITS], axis=1) for model in self.models[name]]
        return np.mean([softmax(x.astype(np.float64)) for x in logits], axis=0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        plan = self.plan
        if ROUTE not in batch.column_names:  # stage 1: every row starts here
            n = batch.num_rows
            batch = batch.append_column(ROUTE, pa.array(np.zeros(n, dtype=np.int8)))
            for c in schema.PROBS:
                batch = batch.append_column(c, pa.nulls(n, pa.float32()))
            batch = batch.append_column(STAGE, pa.nulls(n, pa.string())).append_column(ERROR, pa.nulls(n, pa.string()))
        route = batch.column(ROUTE).to_numpy().copy()
        rows = np.flatnonzero(route == plan.index)
        routed = batch.take(rows)
        by_member = {m: self._member_probs(m, routed) if len(rows) else np.empty((0, 3)) for m in plan.members}
        if not len(rows):  # nothing of this block reached this stage
            probs = np.empty((0, 3))
        elif self.ensemble is not None:
            probs = self.ensemble.predict_proba(routed, by_member)
        else:
            from prefscale.metrics import without_ties

            probs = without_ties(by_member[plan.name], schema.ties_allowed(routed))
        scored = ~np.isnan(probs).any(axis=1)
        decided = rows[scored]
        route[rows] = -1
        if not plan.last and len(decided):
            u = uncertainty(probs[scored], self.uncertainty)
            if plan.fraction is not None:
                route[decided[most_uncertain(u, plan.fraction)]] = plan.index + 1
            elif plan.threshold is not None:
                route[decided[u >= plan.threshold]] = plan.index + 1
        batch = _set_rows(batch, stage_columns(plan.name), rows, probs, pa.float32())
        batch = _set_rows(batch, list(schema.PROBS), decided, probs[scored], pa.float32())
        batch = _set_rows(batch, [STAGE], decided, np.full((len(decided), 1), plan.name, dtype=object), pa.string())
        if (~scored).any():
            batch = _set_rows(batch, [ERROR], rows[~scored], np.full((int((~scored).sum()), 1), f"stage {plan.name} could not score it"), pa.string())
        for member in plan.carried:
            probs_m = by_member[member]
            if member_columns(member)[0] not in batch.column_names:
                batch = _set_rows(batch, member_columns(member), rows, probs_m, pa.float32())
        batch = batch.set_column(batch.schema.get_field_index(ROUTE), ROUTE, pa.array(route))
        # Decided rows' texts are no longer needed: later stages move only what they work on.
        gone = pa.array(route < 0)
        for column in schema.TEXT_COLUMNS:
            if column in batch.column_names:
                batch = batch.set_column(batch.schema.get_field_index(column), column,
                                         pc.if_else(gone, pa.nulls(batch.num_rows, batch.schema.field(column).type), batch.column(column)))
        return batch


def _set_rows(batch: pa.Table, columns: list[str], rows: np.ndarray, values: np.ndarray, kind: pa.DataType) -> pa.Table:
    """Write ``values`` (rows x columns) into ``rows`` of each column (NaN and None become null), adding absent columns."""
    floating = pa.types.is_floating(kind)
    for j, column in enumerate(columns):
        if column in batch.column_names:
            current = batch.column(column).to_numpy(zero_copy_only=False)
            current = current.astype(np.float64) if floating else current.astype(object)
        else:
            current = np.full(batch.num_rows, np.nan) if floating else np.full(batch.num_rows, None, dtype=object)
        current[rows] = values[:, j]
        array = pa.array(current, kind, from_pandas=True)
        if column in batch.column_names:
            batch = batch.set_column(batch.schema.get_field_index(column), column, array)
        else:
            batch = batch.append_column(column, array)
    return batch


def encode_routed(batch: pa.Table, models: list, tta: bool, stage: int) -> pa.Table:
    """The batch with token ids for the rows routed to ``stage`` (empty lists elsewhere: the scorers skip them)."""
    from prefscale.score.encode import ERROR as ENCODE_ERROR
    from prefscale.score.encode import encode_battles

    encoded = encode_battles(batch, models, tta, rows=np.flatnonzero(batch.column(ROUTE).to_numpy() == stage))
    for column in encoded.column_names:
        if column not in (schema.ID, schema.FOLD, ENCODE_ERROR):
            batch = batch.append_column(column, encoded.column(column))
    return batch


class NeuralStage:
    """A cascade stage's neural models in one actor that also tokenizes the rows routed to it.

    Few rows reach a neural stage, so tokenizing them here costs the models little and spares
    the cluster a pool of tokenizing workers (each holding its own copy of the tokenizers)."""

    def __init__(self, groups: list[tuple[list, bool]], stage: int, **scorer: Any) -> None:
        from prefscale.score.scorer import ModelScorer

        self.groups, self.stage = groups, stage
        self.scorer = ModelScorer([m for models, _ in groups for m in models], **scorer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        for models, tta in self.groups:
            batch = encode_routed(batch, models, tta, self.stage)
        return self.scorer(batch)


def _fingerprint(config: Config, input_uri: str, thresholds: list[float | None], fraction: float | None) -> dict[str, str]:
    from prefscale.fingerprints import file_identity

    sealed = read_json(config.layout.manifest) if exists(config.layout.manifest) else None  # any filesystem, not only local
    manifest = hashlib.sha256(json.dumps(sealed, sort_keys=True).encode()).hexdigest()[:16]
    return {"run": manifest, "input": file_identity(input_uri), "stages": ",".join(config.cascade.stages),
            "uncertainty": config.cascade.uncertainty, "routing": f"fraction {fraction}" if fraction is not None else f"thresholds {thresholds}"}


def read_cascade(output: str, stages: list[str], columns: list[str] | None = None) -> pa.Table:
    """Every battle a cascade output holds so far (an empty table when none)."""
    parts = output_schema(stages)
    if not exists(output):
        return parts.empty_table().select(columns or parts.names)
    fs, path = resolve(output)
    return pads.dataset(path, filesystem=fs, format="parquet", schema=parts).to_table(columns=columns)


def run_cascade(config: Config, stacked: list[str], input_uri: str, output: str, send_fraction: float | None = None,
                rows: int | None = None, log=print) -> dict[str, Any]:
    """Score every id of ``input_uri`` not yet in ``output`` through the cascade; a JSON-ready summary."""
    import ray

    from prefscale.score.engine import (
        _input_dataset,
        _PartWriter,
        _stream,
    )
    from prefscale.score.scoring_model import scoring_plan

    started = time.perf_counter()
    settings = config.cascade
    if settings is None:
        raise PrefscaleError(f"{config.run_dir} has no cascade section; add one to its config (see configs/local.yaml) and rerun its report stage")
    if not exists(config.layout.cascade_fit):
        raise PrefscaleError(f"{config.layout.cascade_fit} is missing; run `prefscale stack --config {config.layout.config} --run-dir {config.run_dir}`")
    if not exists(input_uri):
        raise PrefscaleError(f"input not found: {input_uri}; make the battles first (prefscale data pairs) or fix --input")
    fitted = read_json(config.layout.cascade_fit)
    if fitted["stages"] != list(settings.stages):
        raise PrefscaleError(f"{config.layout.cascade_fit} was fitted for stages {fitted['stages']}, the config names {settings.stages}; rerun the stack stage")
    fraction = send_fraction if send_fraction is not None else settings.send_fraction
    thresholds = fitted["chosen"]["thresholds"]
    plans = plan_stages(config, stacked, thresholds, fraction)
    with exclusive(output, log):
        record = _fingerprint(config, input_uri, thresholds, fraction)
        record_file = f"{output.rstrip('/')}/{FINGERPRINT_FILE}"
        if exists(record_file) and read_json(record_file) != record:
            log(f"  [cascade] {output} was made from a different run, input or routing; deleting it and starting over")
            remove(output)
        write_json(record, record_file)
        done = pc.unique(read_cascade(output, settings.stages, [schema.ID]).column(schema.ID)).to_numpy()
        fs, path = resolve(input_uri)
        present = pads.dataset(path, filesystem=fs, format="parquet").schema.names
        columns = [schema.ID, *schema.TEXT_COLUMNS, *(c for c in (schema.SOURCE, schema.TIES) if c in present)]
        score = config.score.model_copy(update={"rows": rows, "block_rows": settings.block_rows})
        # Row groups stream as blocks of at most cascade.block_rows: no repartition task (it would hold a whole CPU).
        ds, total = _input_dataset(input_uri, score, done, columns, repartition=False)

        # Each stage's neural models share one actor (one Python and torch runtime for all of them).
        seen: set[str] = set()
        neural = {plan.index: [(m, s) for run in plan.runs for m, s in scoring_plan(config, run) if not (m.name in seen or seen.add(m.name))]
                  for plan in plans}
        pools = sum(1 for models in neural.values() if models)
        cluster = ray.cluster_resources()
        spare = cluster.get("CPU", 1) - DECIDER_CPUS * len(plans) - 0.25  # 0.25: the read task
        cpus_each = max(0.05, min(score.cpus_per_actor, spare / max(pools * score.actors, 1)))
        needed_cpus = DECIDER_CPUS * len(plans) + cpus_each * pools * score.actors + 0.25
        needed_gpus = score.gpus_per_actor * pools * score.actors
        if needed_cpus > cluster.get("CPU", 0) + 1e-9 or needed_gpus > cluster.get("GPU", 0) + 1e-9:
            raise PrefscaleError(f"the cascade's {pools} neural stages need {needed_cpus:g} CPUs and {needed_gpus:g} GPUs at once, the cluster "
                                 f"has {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs; lower score.gpus_per_actor or "
                                 "score.actors, or use a bigger cluster")
        threads = score.threads_per_actor or max(1, int(os.cpu_count() or 1) // max(pools, 1))
        for plan in plans:
            mine = neural[plan.index]
            if mine:
                groups = [([m for m, s in mine if s.tta == tta], tta) for tta in sorted({s.tta for _, s in mine})]
                ds = ds.map_batches(NeuralStage, fn_constructor_kwargs={"groups": groups, "stage": plan.index, "max_tokens": score.max_tokens,
                                                                        "threads": threads, "use_gpu": score.gpus_per_actor > 0,
                                                                        "tta_space": score.tta_space},
                                    batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=score.actors),
                                    num_cpus=cpus_each, num_gpus=score.gpus_per_actor)
            ds = ds.map_batches(StageDecider, fn_constructor_kwargs={"config": config, "stacked": stacked, "plan": plan,
                                                                     "uncertainty_kind": settings.uncertainty},
                                batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=DECIDER_CPUS)

        # Reads run ahead of the stage-1 actor; without a cap, queued blocks fill the object store as the input grows.
        context = ray.data.DataContext.get_current()
        limits = context.execution_options.resource_limits
        context.execution_options.resource_limits = limits.copy(object_store_memory=settings.buffer_mb << 20)
        out_schema = output_schema(list(settings.stages))
        writer = _PartWriter(output, config.score.part_rows)
        decided = dict.fromkeys(settings.stages, 0)
        with bar(max(total - len(done), 0), "cascade") as progress:
            for batch in _stream(ds):
                table = batch.select(out_schema.names).cast(out_schema)
                for name, count in zip(*np.unique(table.column(STAGE).to_numpy(zero_copy_only=False).astype(str), return_counts=True), strict=True):
                    decided[name] = decided.get(name, 0) + int(count)
                writer.add(table)
                progress.update(batch.num_rows)
        writer.flush()
        context.execution_options.resource_limits = limits
    seconds = time.perf_counter() - started
    final = read_cascade(output, settings.stages, [schema.ID, STAGE])
    new = sum(decided.values())
    summary = {
        "input": input_uri, "output": output, "stages": list(settings.stages), "routing": record["routing"], "input_rows": total,
        "already_done": int(len(done)), "scored": new, "decided_by_stage": decided,
        "sent_past_first": round(1 - decided[settings.stages[0]] / new, 4) if new else None,
        "output_rows": final.num_rows, "unique_ids": len(pc.unique(final.column(schema.ID))),
        "seconds": round(seconds, 2), "rows_per_s": round(new / seconds, 2) if seconds else None,
    }
    write_json(summary, f"{output.rstrip('/')}/{DONE_FILE}")
    return summary
