"""Which config and inputs made each output of a run: reuse only what the current config would make.

A run is split into units of work (``data``, ``pairs``, ``member:<name>``, ``train:<name>``,
``pseudolabel``, ``score``, ``stack``, ``report``). A unit's fingerprint hashes the config keys
that change its results (resource keys such as actors or CPUs do not) and its inputs: the
fingerprints of the units it reads, or the size and modification time of an outside file. It
is recorded in the run directory's ``fingerprints.json`` when the unit starts, so an
interrupted unit with the same fingerprint resumes from what it wrote; a unit whose
fingerprint changed has its outputs deleted first, with one line naming what changed.

A train run's parts have scopes: what changes the trained weights (its keys, with the effective
batch workers x batch_size x grad_accum in place of the three), what changes only its scoring
(``tta``, ``score.tta_space``) and what changes only its averaged model (``average``). A change
deletes only its scope's outputs: a scoring change rescores the held-out folds and keeps the
adapters and checkpoints; deleting anything trained asks for ``--allow-retrain``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from prefscale.config import Config
from prefscale.errors import PrefscaleError
from prefscale.io import exists, read_json, remove, resolve, write_json
from prefscale.layout import CHEAP_ENSEMBLE, input_stem

# Keys that set how fast or where work runs, never its result.
RESOURCE_KEYS = {"actors", "buffer_mb", "cpus_per_actor", "gpus_per_actor", "threads_per_actor", "format_cpus", "block_rows", "part_rows", "max_tokens",
                 "workers", "cpus_per_worker", "use_gpu", "max_failures", "checkpoint_every", "tune_cpus_per_trial", "output",
                 "gradient_checkpointing", "accelerator_type"}
SCORING, AVERAGING, TRAINING = "scoring", "averaging", "training"
RETRAIN_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("retrain_allowed", default=False)  # --allow-retrain


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(model: Any) -> str:
    data = model.model_dump(mode="json") if hasattr(model, "model_dump") else model
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in RESOURCE_KEYS}
    return _digest(data)


def file_identity(uri: str) -> str:
    """Size and modification time of a file, or of every file under a directory (not a content hash: inputs can be terabytes)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return _digest(sorted((e.path[len(path):], e.size, e.mtime_ns) for e in entries if e.type == pafs.FileType.File))
    return _digest([info.size, info.mtime_ns])


def unit_parts(config: Config, unit: str) -> dict[str, str]:
    """What a unit's outputs depend on, part by part (so a change can be named)."""
    kind, _, name = unit.partition(":")
    files = lambda uris: {f"file {u}": file_identity(u) for u in uris}  # noqa: E731
    upstream = lambda units: {f"output of {u}": fingerprint(config, u) for u in units}  # noqa: E731
    if kind == "data":
        return {"config data": _section(config.data.model_dump(mode="json", exclude={"unlabeled"})), **files(config.data.train)}
    if kind == "pairs":
        return {"config pairs": _section(config.pairs), **files([config.data.unlabeled] if config.data.unlabeled else [])}
    if kind == "member":
        return {f"config members.{name}": _section(config.members[name]), **upstream(["data"])}
    if kind == "train":
        run = config.train[name]
        teachers = [_model_unit(config, t) for t in (run.distill.teachers if run.distill else [])]
        trained = {k: v for k, v in run.model_dump(mode="json").items() if k not in ("tta", "average", "batch_size", "grad_accum")}
        trained["effective_batch"] = run.workers * run.batch_size * run.grad_accum
        return {f"config train.{name}": _section(trained), f"config train.{name} scoring": _digest({"tta": run.tta, "tta_space": config.score.tta_space,
                                                                                  "precision": config.score.precision}),
                f"config train.{name} average": _digest(run.average), "config model": _section(run.model or config.model),
                "config text": _section(config.text), **upstream(["data", *teachers, *(["pseudolabel"] if run.pseudolabels else [])]),
                **files(run.extra_train)}
    if kind == "pseudolabel":
        settings = config.pseudolabel
        scorers = [_model_unit(config, s) for s in config.pseudolabel_scorers() if s not in {m.name for m in config.score.models}]
        battles = files([settings.input]) if settings.input else upstream(["pairs"])
        scoring = {"tta": config.score.tta, "tta_space": config.score.tta_space, "models": config.score.model_dump(mode="json")["models"],
                   **({"precision": config.score.precision} if config.score.precision else {})}
        return {"config pseudolabel": _section(settings), "config score": _digest(scoring), "config model": _section(config.model),
                "config text": _section(config.text), **battles, **files(settings.scores), **upstream(scorers),
                **(upstream(["data"]) if settings.dedup_labeled else {})}  # the labeled set it deduplicates against
    if kind == "score":
        battles = files([config.score.input]) if config.score.input else upstream(["data"])
        return {"config score": _section(config.score), "config model": _section(config.model), "config text": _section(config.text), **battles}
    if kind == "stack":
        members = [f"train:{m}" if m in config.train else f"member:{m}" for m in config.stack_members()]
        cheap = {"cascade stage": CHEAP_ENSEMBLE} if config.cascade and CHEAP_ENSEMBLE in config.cascade.stages else {}
        return {"config stack": _section(config.stack), **cheap, **upstream(members)}
    if kind == "report":
        return {**upstream(["stack"]), **({"config cascade": _section(config.cascade)} if config.cascade else {})}
    raise ValueError(f"unknown unit {unit}")


def scope(part: str) -> str:
    """What a part of a unit's fingerprint changes: its scoring, its averaged model, or its trained weights."""
    return SCORING if part.endswith(" scoring") else AVERAGING if part.endswith(" average") else TRAINING


def outputs_of(config: Config, unit: str, score_output: str | None = None, scopes: set[str] = frozenset({TRAINING})) -> list[str]:
    """What a unit writes, partial work included, in the given scopes: what a changed fingerprint deletes."""
    kind, _, name = unit.partition(":")
    layout = config.layout
    if kind == "train" and TRAINING not in scopes:
        return [*([layout.oof(name), layout.oof_scores(name)] if SCORING in scopes else []),
                *([layout.averaged(name)] if AVERAGING in scopes else [])]
    if kind == "data":
        return [layout.battles, layout.rejects("duplicates"), *(p for uri in config.data.train for p in (layout.validated(input_stem(uri)), layout.rejects(input_stem(uri))))]
    if kind == "pairs":
        return [layout.unlabeled_pairs]
    if kind == "member":
        return [layout.oof(name), layout.member_model(name)]
    if kind == "train":
        return [layout.oof(name), layout.oof_scores(name), layout.run_models(name), layout.tune(name),
                *_children(layout.checkpoints, f"{name}-fold")]
    if kind == "pseudolabel":
        return [config.pseudolabel.output or layout.pseudolabels, layout.pseudolabel_input, layout.rejects("pseudolabels"),
                *_children(layout.scores(""), "unlabeled-")]
    if kind == "score":
        return [score_output] if score_output else []
    if kind == "stack":
        return [layout.stack]
    if kind == "report":
        return [layout.report]
    raise ValueError(f"unknown unit {unit}")



def _children(directory: str, prefix: str) -> list[str]:
    fs, path = resolve(directory)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return [f"{directory.rstrip('/')}/{e.base_name}" for e in fs.get_file_info(pafs.FileSelector(path)) if e.base_name.startswith(prefix)]


def _model_unit(config: Config, name: str) -> str:
    """The unit that made member or train run ``name``: this config's, else one an earlier config on this run directory recorded."""
    if name in config.members:
        return f"member:{name}"
    if name in config.train or f"member:{name}" not in _records(config):
        return f"train:{name}"
    return f"member:{name}"


def _records(config: Config) -> dict[str, Any]:
    return read_json(config.layout.fingerprints) if exists(config.layout.fingerprints) else {}


def fingerprint(config: Config, unit: str) -> str:
    """A unit's fingerprint as the units that read it see it (a train run's averaging is not part of
    its OOF logits); for a run or member an earlier config made on this run directory (a student's
    teachers), the one recorded when it was made ("missing" if it never was)."""
    kind, _, name = unit.partition(":")
    if (kind == "train" and name not in config.train) or (kind == "member" and name not in config.members):
        recorded = _records(config).get(unit)
        return _digest(_read_by_others(recorded)) if recorded else "missing"
    return _digest(_read_by_others(unit_parts(config, unit)))


def _read_by_others(parts: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in parts.items() if scope(k) != AVERAGING}


def ensure_fresh(config: Config, unit: str, log: Callable[[str], None], score_output: str | None = None) -> None:
    """Before a unit runs: delete its outputs when they were made from another config or input,
    naming what changed, then record the current fingerprint (an interrupted rerun resumes)."""
    # A score output (often outside the run directory, shared by runs) carries its own record;
    # pyarrow skips "_"-prefixed files when it reads the parts.
    record_file = f"{score_output.rstrip('/')}/_fingerprint.json" if unit == "score" and score_output else config.layout.fingerprints
    records = read_json(record_file) if exists(record_file) else {}
    parts, recorded = unit_parts(config, unit), records.get(unit)
    if recorded == parts:
        return
    changed = sorted(k for k in parts.keys() | recorded.keys() if parts.get(k) != recorded.get(k)) if recorded else ["(no record: made by an older prefscale)"]
    scopes = {scope(k) for k in changed} if recorded else {TRAINING}
    stale = [path for path in outputs_of(config, unit, score_output, scopes) if exists(path)]
    kind, _, name = unit.partition(":")
    trained = kind == "train" and TRAINING in scopes and (exists(config.layout.run_models(name)) or bool(_children(config.layout.checkpoints, f"{name}-fold")))
    if trained and not RETRAIN_ALLOWED.get():
        raise PrefscaleError(f"[{unit}] was trained from a different {', '.join(changed)}; going on deletes its trained models and checkpoints "
                             f"(days of GPU time at real size): rerun with --allow-retrain to retrain, or restore the config")
    if stale:
        what = "rescoring" if scopes == {SCORING} else "recomputing"
        log(f"  [{unit}] its outputs were made from a different {', '.join(changed)}; deleting {'them' if TRAINING in scopes else 'what that changes'} "
            f"and {what}")
        for path in stale:
            remove(path)
    write_json({**records, unit: parts}, record_file)
