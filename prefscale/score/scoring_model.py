"""What to score with, and the one place that decides it for every stage.

A ``ScoringModel`` is a named model directory with the precision and text options it is
scored at. ``train_run_models`` resolves "the scoring model of train run X" for held-out
folds, pseudolabels and predict alike (a run an earlier config trained on the same run
directory, such as a student's teacher, through the scoring record written beside its models): the run's own precision, text options and TTA, so a
stacker fitted on a QLoRA run's OOF logits is applied to logits made the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefscale.config import Config, ModelConfig, ScoreConfig, TextConfig
from prefscale.errors import PrefscaleError
from prefscale.io import absolute, exists, finished, read_json, write_json
from prefscale.models.lora import is_adapter


@dataclass(frozen=True)
class ScoringModel:
    name: str
    path: str  # the model, or the base an adapter goes over
    text: TextConfig = TextConfig()
    precision: str = "fp32"
    trust_remote_code: bool = False
    fold: int | None = None  # score only the rows of this fold: a fold model on its held-out rows, all folds in one job
    adapter: str | None = None  # a peft adapter directory over ``path`` (a fold's model); None: ``path`` alone

    def column(self, field: str) -> str:
        """Per-model column in the wide intermediate table, e.g. 'base.logit_a'."""
        return f"{self.name}.{field}"


def text_for(config: Config, max_length: int | None) -> TextConfig:
    """The config's text section with a model's own max_length, when it sets one."""
    return config.text.model_copy(update={"max_length": max_length}) if max_length else config.text


def configured_models(config: Config) -> list[ScoringModel]:
    """`score.models`, else the top-level model under the name 'base'."""
    if not config.score.models:
        return [ScoringModel("base", config.model.path, config.text, config.model.precision, config.model.trust_remote_code)]
    return [ScoringModel(m.name, m.path, text_for(config, m.max_length), m.precision, m.trust_remote_code) for m in config.score.models]


def train_run_model_config(config: Config, name: str) -> ModelConfig:
    return config.train[name].model or config.model


def trained_model(config: Config, name: str, path: str, label: str | None = None, fold: int | None = None) -> ScoringModel:
    """Train run ``name``'s model at ``path`` (a fold adapter, or the averaged model) at the run's
    precision and text options (``fold``: its held-out rows only)."""
    run, model = config.train[name], train_run_model_config(config, name)
    path = absolute(path) if path else path  # actors on other nodes run in other directories
    adapter = path if path and is_adapter(path) else None
    return ScoringModel(label or name, model.path if adapter else path, text_for(config, run.max_length), scoring_precision(config, model.precision),
                        model.trust_remote_code, fold, adapter)


def scoring_precision(config: Config, trained: str) -> str:
    """What a train run's models are scored at: score.precision when set (the config refuses it for runs
    trained quantized), else as trained."""
    return config.score.precision or trained


def _run_model_paths(layout, name: str) -> list[tuple[str, str]]:
    """(label, directory) of a finished train run's scoring models: its averaged model, else every fold's adapter."""
    if finished(layout.averaged(name)):
        return [(name, layout.averaged(name))]
    folds = layout.fold_adapters(name)
    if not folds:
        raise PrefscaleError(f"train run '{name}' has no models under {layout.run_models(name)}; rerun its training")
    return [(f"{name}-{k}", path) for k, path in folds.items()]


def train_run_models(config: Config, name: str) -> list[ScoringModel]:
    """The scoring models of a finished train run of this config."""
    return [trained_model(config, name, path, label) for label, path in _run_model_paths(config.layout, name)]


def write_scoring_record(config: Config, name: str) -> None:
    """How train run ``name``'s models are scored, kept beside them: a later config on the same run
    directory (a student's, pseudolabeling with its teachers) scores them the same way, and
    `prefscale doctor` sizes them from the run and base model recorded here."""
    model = trained_model(config, name, "")
    write_json({"text": model.text.model_dump(mode="json"), "precision": model.precision, "trust_remote_code": model.trust_remote_code,
                "tta": config.train[name].tta, "run": config.train[name].model_dump(mode="json"),
                "model": train_run_model_config(config, name).model_dump(mode="json")}, config.layout.run_scoring(name))


def read_scoring_record(config: Config, name: str) -> dict | None:
    """The scoring record of a run an earlier config trained on this run directory, if there is one."""
    path = config.layout.run_scoring(name)
    return read_json(path) if exists(path) else None


def _earlier_run_plan(config: Config, name: str) -> list[tuple[ScoringModel, ScoreConfig]]:
    """A train run of an earlier config on this run directory, scored as its scoring record says."""
    record = read_json(config.layout.run_scoring(name))
    settings = config.score.model_copy(update={"tta": record["tta"], "rows": None})
    text = TextConfig.model_validate(record["text"])
    base = record["model"]["path"]
    return [(ScoringModel(label, base if is_adapter(path) else absolute(path), text, _earlier_precision(config, record), record["trust_remote_code"],
                          adapter=absolute(path) if is_adapter(path) else None), settings)
            for label, path in _run_model_paths(config.layout, name)]


def _earlier_precision(config: Config, record: dict) -> str:
    trained = record.get("model", {}).get("precision", record["precision"])
    return record["precision"] if trained in ("int8", "nf4") else scoring_precision(config, trained)


def train_run_score_settings(config: Config, name: str) -> ScoreConfig:
    """The score section with the run's own TTA, over every row: how a train run's models are scored."""
    return config.score.model_copy(update={"tta": config.train[name].tta, "rows": None})


def scoring_plan(config: Config, name: str) -> list[tuple[ScoringModel, ScoreConfig]]:
    """Each model of a train run or a score.models entry with the settings it is scored at.

    Predict and pseudolabels score each model in its own pass: every actor pool then has the
    CPUs to itself, so pools never wait on each other."""
    if name in config.train:
        settings = train_run_score_settings(config, name)
        return [(model, settings) for model in train_run_models(config, name)]
    configured = {m.name: m for m in configured_models(config)}
    if name in configured:
        return [(configured[name], config.score.model_copy(update={"rows": None}))]
    if exists(config.layout.run_scoring(name)):
        return _earlier_run_plan(config, name)
    raise PrefscaleError(f"'{name}' is neither a train run nor a score model ({', '.join([*config.train, *configured])}), nor a run "
                         f"an earlier config trained in {config.run_dir}; train it first, or fix the name")
