"""Experiment tracking: every `prefscale run` and stage command is one MLflow run.

A run directory holds files; MLflow lets an engineer compare today's run with last week's in a UI.
The command's run gets the config as parameters, every number of the summary as metrics, and
the config, summary and report as artifacts. Nested runs hold each stage, each fold of a train
run, and each Ray Tune trial (through Ray's own ``MLflowLoggerCallback``). The default store is a
SQLite database inside the run directory (no server); ``tracking.uri`` or ``MLFLOW_TRACKING_URI``
points it at a tracking server. Tracking never fails a job: the first tracking error is reported
in one line and tracking stops for the rest of the command.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefscale.config import Config

Log = Callable[[str], None]

_UNSAFE_KEY = re.compile(r"[^\w./\- :]")  # MLflow accepts alphanumerics, _ . / - space and colon in keys
_MAX_KEY, _MAX_PARAM = 250, 6000
_METRICS_PER_CALL, _PARAMS_PER_CALL = 1000, 100

_active: Tracker | None = None  # the command being tracked, for Ray Tune's callbacks


def flatten(tree: Any, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Leaves of nested dicts keyed by their path (lists stay leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{sep}{key}" if prefix else str(key), sep))
    return flat


def _key(key: str) -> str:
    return _UNSAFE_KEY.sub("_", key)[:_MAX_KEY]


def metrics_of(tree: Any) -> dict[str, float]:
    """Every number in a summary (booleans and strings are not metrics)."""
    return {_key(k): float(v) for k, v in flatten(tree).items() if isinstance(v, int | float) and not isinstance(v, bool)}


def params_of(config: Config) -> dict[str, str]:
    """The config as dotted parameters (``train.teacher.lr``), values as text."""
    flat = flatten(config.model_dump(mode="json"), sep=".")
    return {_key(k): str(v)[:_MAX_PARAM] for k, v in flat.items()}


def tracking_uri(config: Config) -> str | None:
    """Where this config's runs are tracked; None when tracking is off or nowhere is writable."""
    if not config.tracking.enabled:
        return None
    if uri := config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    if "://" in config.run_dir:
        return None  # an object-store run directory cannot hold a SQLite file; name a server in tracking.uri
    return f"sqlite:///{os.path.abspath(config.layout.mlflow_db)}"


class Tracker:
    """One tracked command: its MLflow run and the nested runs under it. Inert when tracking is off."""

    def __init__(self, config: Config, command: str, log: Log) -> None:
        self.uri: str | None = None
        self.experiment = config.tracking.experiment
        self.run_id: str | None = None
        self.parent_for_trials: str | None = None
        self._stage_run: str | None = None
        self._log = log
        self._guard(self._start, config, command)

    @property
    def on(self) -> bool:
        return self.run_id is not None

    def _start(self, config: Config, command: str) -> None:
        self.uri = tracking_uri(config)  # guarded too: a vanished working directory fails os.path.abspath
        if self.uri is None:
            return
        from mlflow import MlflowClient

        if self.uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.uri.removeprefix("sqlite:///")), exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            local = self.uri.startswith("sqlite:///") and self.uri.endswith(os.path.abspath(config.layout.mlflow_db))
            location = Path(os.path.abspath(config.layout.mlflow_artifacts)).as_uri() if local else None
            self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        run = self.client.create_run(self.experiment_id, run_name=f"{config.name}:{command}",
                                     tags={"prefscale.command": command, "prefscale.run_dir": config.run_dir})
        self.run_id = run.info.run_id
        self.log_values(self.run_id, params=params_of(config))
        self._log(f"tracking: MLflow run {self.run_id} in {self.uri}")

    def _guard(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a tracking call; the first failure turns tracking off for this command, with one line why."""
        try:
            return action(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking outage must not end a multi-day job
            self._log(f"tracking: off for the rest of this command ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
            self.run_id = None
            return None

    def log_values(self, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param

        metric_items, param_items = list((metrics or {}).items()), list((params or {}).items())
        for start in range(0, len(metric_items), _METRICS_PER_CALL):
            chunk = metric_items[start:start + _METRICS_PER_CALL]
            self.client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in chunk])
        for start in range(0, len(param_items), _PARAMS_PER_CALL):
            chunk = param_items[start:start + _PARAMS_PER_CALL]
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])

    def _child(self, parent: str, name: str, metrics: dict[str, float]) -> str:
        """A finished nested run (a fold of a train run): its numbers, and an end, like its parent's."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent})
        self.log_values(run.info.run_id, metrics=metrics)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """A nested run for one stage; Ray Tune trials started inside it nest under it."""
        if not self.on:
            yield
            return
        stage_run = self._guard(lambda: self.client.create_run(self.experiment_id, run_name=name,
                                                               tags={"mlflow.parentRunId": self.run_id}).info.run_id)
        self.parent_for_trials, self._stage_run = stage_run, stage_run
        try:
            yield
        except BaseException:
            self._end(stage_run, "FAILED")
            raise
        finally:
            self.parent_for_trials = None

    def stage_results(self, results: dict[str, Any]) -> None:
        """A stage's summary entries: numbers on the stage's run, one nested run per fold of a train run."""
        if not self.on or self._stage_run is None:
            return
        stage_run = self._stage_run

        def log() -> None:
            self.log_values(stage_run, metrics=metrics_of(results))
            for key, result in results.items():
                folds = result.get("folds") if isinstance(result, dict) else None
                for fold in folds if isinstance(folds, list) else []:  # a train run's folds (split's `folds` is a count)
                    if isinstance(fold, dict):
                        self._child(stage_run, f"{key} fold {fold.get('fold')}", metrics_of(fold))
            self.client.set_terminated(stage_run, "FINISHED")

        self._guard(log)

    def finish(self, summary: dict[str, Any], artifacts: list[str]) -> None:
        """The command's summary as metrics and its files as artifacts; ends the run."""
        if not self.on:
            return

        def log() -> None:
            self.log_values(self.run_id, metrics=metrics_of(summary))
            for path in artifacts:
                if os.path.isfile(path):
                    self.client.log_artifact(self.run_id, path)
            self.client.set_terminated(self.run_id, "FINISHED")

        self._guard(log)

    def _end(self, run_id: str | None, status: str) -> None:
        if run_id is not None and self.on:
            self._guard(self.client.set_terminated, run_id, status)

    def fail(self, interrupted: bool) -> None:
        self._end(self.run_id, "KILLED" if interrupted else "FAILED")


@contextlib.contextmanager
def tracked(config: Config, command: str, log: Log) -> Iterator[Tracker]:
    """Track one command; the run ends FAILED (or KILLED on Ctrl-C) when the command raises."""
    global _active
    tracker = Tracker(config, command, log)
    _active = tracker
    try:
        yield tracker
    except BaseException as exc:
        tracker.fail(isinstance(exc, KeyboardInterrupt))
        raise
    finally:
        _active = None


def tune_callbacks() -> list[Any]:
    """Ray's MLflow logger for a Tune search inside a tracked stage: one nested run per trial."""
    tracker = _active
    if tracker is None or not tracker.on or tracker.parent_for_trials is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=tracker.uri, experiment_name=tracker.experiment,
                                 tags={"mlflow.parentRunId": tracker.parent_for_trials})]
