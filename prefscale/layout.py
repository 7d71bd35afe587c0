"""Every path inside a run directory, named once.

Stages talk only through files in the run directory, so this is the map they share: no other
module joins a run-directory path. A rerun, `prefscale predict` and a reader with pandas all
find an artefact by the same name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RUNS_DIR = "runs"  # where a config without output_dir puts its run: runs/<name>

# Every top-level entry of a run directory and what it holds (the README's table is tested against this).
TOP_LEVEL = {
    "config.yaml": "the config the run was made with (what predict reloads)",
    "summary.json": "every stage's summary and timings",
    "manifest.json": "sha256 of every file predict loads, written when the run finishes; predict refuses a run whose files changed",
    "fingerprints.json": "per unit of work, the config keys and inputs its outputs were made from (a changed one is recomputed)",
    "validated": "clean rows of each training input",
    "rejects": "rejected rows with reasons: per input, duplicates, pseudolabels",
    "battles.parquet": "validated, deduplicated battles with their fold",
    "unlabeled_pairs.parquet": "unlabeled battles from the long dump",
    "members": "all-data fits of the cheap members (skops)",
    "oof": "out-of-fold logits per member and train run (and each fold's score parts)",
    "tune": "Ray Tune results of train runs, read back on reruns",
    "models": "per train run: each fold's adapter (scored over the base), the held-out battles, the averaged and merged model",
    "ray_train": "Ray Train checkpoints",
    "scores": "score outputs (directories of Parquet parts)",
    "pseudolabel_input.parquet": "the head of the unlabeled battles when pseudolabel.rows caps them",
    "pseudolabels.parquet": "soft-labeled battles",
    "stack": "stacker, calibrator, rules (skops), nested-CV OOF, summary",
    "report": "report.md, report.json, reliability.png",
    "predict": "predict's scratch space per input (clean rows, scores)",
    "mlflow": "MLflow tracking store of the run's commands: mlflow.db (SQLite) and artifacts/",
}


ENSEMBLE = "ensemble"  # the run's stacked ensemble (every stacked member); also a cascade stage
CHEAP_ENSEMBLE = "cheap_ensemble"  # the same stacker over the cheap members only (no neural model): a cascade's first stage


def input_stem(uri: str) -> str:
    """How an input file is named inside the run directory (validated/<stem>, rejects/<stem>)."""
    return os.path.basename(uri.rstrip("/")).split(".")[0]


def default_run_dir(name: str) -> str:
    return os.path.join(RUNS_DIR, name)


@dataclass(frozen=True)
class RunLayout:
    root: str

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # data
    @property
    def config(self) -> str:
        return self._path("config.yaml")

    @property
    def summary(self) -> str:
        return self._path("summary.json")

    @property
    def manifest(self) -> str:
        """The sealed bundle: sha256 of every file predict loads (prefscale/manifest.py)."""
        return self._path("manifest.json")

    @property
    def fingerprints(self) -> str:
        """Per unit of work (data, member:<name>, train:<name>, ...), what its outputs were made from."""
        return self._path("fingerprints.json")

    def validated(self, source: str) -> str:
        """Clean rows of one training input (``source``: the input's file stem)."""
        return self._path("validated", f"{source}.parquet")

    def rejects(self, source: str) -> str:
        """Rejected rows with reasons: one file per input stem, plus 'duplicates' and 'pseudolabels'."""
        return self._path("rejects", f"{source}.parquet")

    @property
    def battles(self) -> str:
        """Validated, deduplicated battles with their fold: what every model trains on."""
        return self._path("battles.parquet")

    @property
    def unlabeled_pairs(self) -> str:
        return self._path("unlabeled_pairs.parquet")

    # models and their out-of-fold predictions
    def oof(self, name: str) -> str:
        """OOF logits of a member or train run, one row per battle (artifacts.OOF_COLUMNS)."""
        return self._path("oof", f"{name}.parquet")

    def oof_scores(self, name: str, scoring_pass: str = "") -> str:
        """Score parts of a train run's held-out folds (one directory per scoring pass), gathered into oof(name)."""
        return self._path("oof", name, scoring_pass) if scoring_pass else self._path("oof", name)

    def member_model(self, name: str) -> str:
        return self._path("members", f"{name}.skops")

    def tune(self, name: str) -> str:
        """A train run's Ray Tune result, read back on reruns."""
        return self._path("tune", f"{name}.json")

    def run_models(self, name: str) -> str:
        return self._path("models", name)

    def fold_adapter(self, name: str, fold: int) -> str:
        """The fold's model: peft adapter files (LoRA and head) over the run's base, scored at the
        precision it was trained at; a full fine-tune's (lora.r 0) whole model."""
        return self._path("models", name, f"fold{fold}", "adapter")

    def run_scoring(self, name: str) -> str:
        """How a train run's models are scored (precision, text, TTA): read by later configs on this run directory."""
        return self._path("models", name, "scoring.json")

    def heldout(self, name: str) -> str:
        """The battles of a train run's trained folds, each scored by its own fold's model."""
        return self._path("models", name, "heldout.parquet")

    def averaged(self, name: str) -> str:
        return self._path("models", name, "averaged")

    def fold_adapters(self, name: str) -> dict[int, str]:
        """{fold: adapter directory} of the folds trained so far, in fold order."""
        from prefscale.io import finished, listdir

        folds = sorted(int(d[4:]) for d in listdir(self.run_models(name)) if d.startswith("fold") and d[4:].isdigit())
        return {k: self.fold_adapter(name, k) for k in folds if finished(self.fold_adapter(name, k))}

    @property
    def checkpoints(self) -> str:
        """Ray Train storage (absolute: workers on other nodes resolve it too; a URI as it is)."""
        path = self._path("ray_train")
        return path if "://" in path else os.path.abspath(path)

    # scoring and pseudolabels
    def scores(self, label: str) -> str:
        return self._path("scores", label)

    @property
    def pseudolabels(self) -> str:
        return self._path("pseudolabels.parquet")

    @property
    def pseudolabel_input(self) -> str:
        """The head of the unlabeled battles when pseudolabel.rows caps them."""
        return self._path("pseudolabel_input.parquet")

    # ensemble
    @property
    def stack(self) -> str:
        return self._path("stack")

    def stack_file(self, name: str, ensemble: str = ENSEMBLE) -> str:
        """stacker.skops, calibrator.skops, rules.skops (what predict applies) and oof.parquet; a
        cascade's cheap_ensemble keeps its own under stack/cheap_ensemble/."""
        return self._path("stack", name) if ensemble == ENSEMBLE else self._path("stack", ensemble, name)

    @property
    def stack_summary(self) -> str:
        """The stacking stage's summary; its member list is what predict stacks."""
        return self._path("stack", "summary.json")

    @property
    def report(self) -> str:
        return self._path("report")

    def report_file(self, name: str) -> str:
        """report.json, report.md, reliability.png, cascade.png."""
        return self._path("report", name)

    @property
    def cascade_fit(self) -> str:
        """The cascade's thresholds chosen on OOF at the report stage, with its log loss against compute curve."""
        return self._path("report", "cascade.json")

    # experiment tracking
    @property
    def mlflow_db(self) -> str:
        """The default MLflow store (SQLite): one tracked run per command on this run directory."""
        return self._path("mlflow", "mlflow.db")

    @property
    def mlflow_artifacts(self) -> str:
        return self._path("mlflow", "artifacts")

    def predict_work(self, key: str, *parts: str) -> str:
        """Scratch space of one `prefscale predict` input: clean.parquet, scores/<model>."""
        return self._path("predict", key, *parts)
