"""Experiment tracking: what is logged, and that tracking trouble never fails a job."""

import pytest

from prefscale.config import Config, TrackingConfig
from prefscale.tracking import Tracker, metrics_of, params_of, tracking_uri


def _config(tmp_path, **tracking) -> Config:
    return Config(name="t", output_dir=str(tmp_path / "run"), data={"train": ["x.parquet"]}, tracking=TrackingConfig(**tracking))


def test_metrics_are_the_summary_numbers_under_mlflow_safe_keys():
    summary = {"stages": {"report": {"table": {"class prior (out of fold)": {"log_loss": 0.92}}}, "split": {"folds": 5, "swap": False}},
               "name": "local", "fold_sizes": [1, 2]}
    assert metrics_of(summary) == {"stages/report/table/class prior _out of fold_/log_loss": 0.92, "stages/split/folds": 5.0}


def test_params_are_the_dotted_config(tmp_path):
    params = params_of(_config(tmp_path))
    assert params["data.folds"] == "5" and params["tracking.experiment"] == "prefscale" and params["stack"] == "None"


def test_default_store_is_sqlite_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = _config(tmp_path)
    assert tracking_uri(config) == f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(config) == "http://tracking:5000"
    assert tracking_uri(_config(tmp_path, uri="sqlite:////srv/mlflow.db")) == "sqlite:////srv/mlflow.db"  # the config wins
    assert tracking_uri(_config(tmp_path, enabled=False)) is None


def test_switched_off_tracks_nothing(tmp_path):
    tracker = Tracker(_config(tmp_path, enabled=False), "run", print)
    with tracker.stage("data"):
        tracker.stage_results({"split": {"rows": 3}})
    tracker.finish({"elapsed_s": 1.0}, [])
    assert not tracker.on and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_unreachable_server_costs_one_line_not_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    lines = []
    tracker = Tracker(_config(tmp_path, uri="http://127.0.0.1:9"), "run", lines.append)  # port 9: nothing listens
    with tracker.stage("data"):
        tracker.stage_results({"split": {"rows": 3}})
    tracker.finish({"elapsed_s": 1.0}, [])
    assert not tracker.on
    assert len(lines) == 1 and lines[0].startswith("tracking: off for the rest of this command (")
