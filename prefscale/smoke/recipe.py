"""`--smoke`: a GPU recipe end to end on one machine, before a multi-day job is submitted.

Every key of the recipe is kept (LoRA, QLoRA nf4 / int8 through bitsandbytes, distillation,
pseudolabels, fold averaging, TTA, stacking); only sizes, devices, data and models change:
- the data are about a hundred generated battles (``prefscale.smoke.battles``) in 3 folds, the
  fewest that nested CV (the stack's calibration) works with;
- every hub id the recipe names is a tiny random model of the same architecture class,
  published under that id into a hub cache of the smoke run's own, so resolution runs too
  (the user's own cache is never touched: it would then hold a fake model under a real id);
- workers, actors and CPUs fit one machine without GPUs, and Ray starts locally;
- one exception beside sizes: the pseudolabel filters (confidence, entropy, agreement, class
  balance) are opened. A tiny random model is never confident and gives every battle the same
  top class, so they would reject every battle and the student would train on no pseudolabels;
- everything lives under ``runs/smoke/<name of output_dir>/``: the run directory ``run/``,
  the data, the hub cache and the tiny models; a teacher's and a student's smoke runs share
  it, as their recipes share ``output_dir``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from prefscale.config import Config, ModelConfig, ScoredModelConfig
from prefscale.errors import PrefscaleError
from prefscale.layout import RUNS_DIR
from prefscale.models.loading import HUB_ID

SMOKE_SCALE = 0.05  # of the generated data: 24 arena battles + 90 human pairs (three sources, one forced-choice)
MAX_LENGTH = 64  # tokens per battle
MAX_ROWS = 32  # training battles per fold
PSEUDOLABEL_ROWS = 32
# What a hub id's name says about its architecture (the real config.json is not fetched).
ARCHITECTURES = ((re.compile(r"gemma-?2", re.I), "gemma2"), (re.compile(r"qwen-?2", re.I), "qwen2"), (re.compile(r"llama", re.I), "llama"))


def smoke_root(config: Config) -> str:
    return os.path.join(RUNS_DIR, "smoke", os.path.basename((config.output_dir or config.name).rstrip("/")))


def smoke_environment(config: Config) -> dict[str, str]:
    """The smoke run's own hub cache, offline: set before huggingface_hub is imported and Ray starts."""
    return {"HF_HUB_CACHE": os.path.abspath(os.path.join(smoke_root(config), "hub")), "HF_HUB_OFFLINE": "1"}  # _tiny_in_cache publishes there


def enter_smoke_environment(config: Config) -> None:
    from prefscale.ray_runtime import FORWARDED_ENV

    environment = smoke_environment(config)
    FORWARDED_ENV.extend(name for name in environment if name not in FORWARDED_ENV)  # a cluster's workers resolve the tiny models too
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and constants.HF_HUB_CACHE != environment["HF_HUB_CACHE"]:
        raise PrefscaleError("--smoke must set the hub cache before huggingface_hub is imported; run it as its own command")
    os.environ.update(environment)


def _architecture(spec: str) -> str:
    for pattern, model_type in ARCHITECTURES:
        if pattern.search(spec):
            return model_type
    raise PrefscaleError(f"--smoke cannot tell the architecture of {spec} from its name (it knows Llama, Qwen2 and Gemma-2); "
                         f"point model.path at a small local model instead")


def _tiny_in_cache(spec: str, config: Config) -> str:
    """Publish a tiny model of ``spec``'s architecture under its hub id (and revision) in the smoke cache, once."""
    from prefscale.smoke.models import SMOKE_COMMIT, publish, snapshot_dir, tiny_model

    match = HUB_ID.match(spec)
    repo, revision = match["repo"], match["revision"] or "main"
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else SMOKE_COMMIT
    hub_cache = smoke_environment(config)["HF_HUB_CACHE"]
    if not os.path.exists(snapshot_dir(hub_cache, repo, commit)):
        folder = tiny_model(_architecture(spec), os.path.join(smoke_root(config), "tiny_models", repo.replace("/", "--")))
        publish(hub_cache, repo, folder, commit=commit, ref="main" if commit == revision else revision)
    return spec


def smoke_config(config: Config, cluster: str | None = None) -> Config:
    """The recipe as a smoke run: same keys, small sizes, CPU devices, generated data, tiny models.
    ``cluster``: run on that Ray cluster instead of a local one, keeping the recipe's GPU and
    accelerator-type asks (computed on CPU where a node has no CUDA): its placement and autoscaling
    rehearsed at smoke size."""
    from prefscale.smoke.battles import generate

    root = smoke_root(config)
    run_dir = os.path.join(root, "run")
    data_dir = generate(Path(root) / "data", scale=SMOKE_SCALE)

    def moved(path: str | None) -> str | None:
        """A path inside the recipe's output_dir, inside the smoke run's instead."""
        if path and config.output_dir and path.startswith(config.output_dir.rstrip("/") + "/"):
            return os.path.join(run_dir, path[len(config.output_dir.rstrip("/")) + 1 :])
        return path

    def model(section: ModelConfig | ScoredModelConfig) -> ModelConfig | ScoredModelConfig:
        is_hub_id = HUB_ID.match(section.path) and not os.path.exists(section.path)
        return section.model_copy(update={"path": _tiny_in_cache(section.path, config) if is_hub_id else moved(section.path)})

    def shorter(length: int | None) -> int | None:
        return min(length, MAX_LENGTH) if length else None

    data = config.data.model_copy(update={
        "train": [str(data_dir / "arena_kaggle_sample.parquet"), str(data_dir / "human_pairs.parquet")],
        "unlabeled": str(data_dir / "alpacaeval_outputs.parquet") if config.data.unlabeled else None, "folds": 3})
    train = {name: run.model_copy(update={
        "model": model(run.model) if run.model else None, "max_length": shorter(run.max_length), "max_rows": MAX_ROWS,
        "batch_size": min(run.batch_size, 4), "grad_accum": min(run.grad_accum, 2), "checkpoint_every": 2,
        "workers": min(run.workers, 2), "use_gpu": run.use_gpu and bool(cluster), "accelerator_type": run.accelerator_type if cluster else None,
        "cpus_per_worker": 0.5, "tune_samples": min(run.tune_samples, 2),
        "extra_train": [moved(p) for p in run.extra_train]}) for name, run in config.train.items()}
    score = config.score.model_copy(update={
        "models": [model(m) for m in config.score.models], "input": moved(config.score.input), "output": moved(config.score.output),
        "actors": 1, "gpus_per_actor": min(config.score.gpus_per_actor, 1.0) if cluster else 0.0,
        "accelerator_type": config.score.accelerator_type if cluster else None, "cpus_per_actor": 0.5, "format_cpus": 0.5, "threads_per_actor": None,
        "max_tokens": min(config.score.max_tokens, 2048)})
    pseudolabel = config.pseudolabel.model_copy(update={
        "input": moved(config.pseudolabel.input), "output": moved(config.pseudolabel.output),
        "scores": [moved(p) for p in config.pseudolabel.scores], "rows": min(config.pseudolabel.rows or PSEUDOLABEL_ROWS, PSEUDOLABEL_ROWS),
        "min_confidence": 0.0, "max_entropy": None, "min_agreement": 0.0, "balance": "none"})
    updates = {
        "output_dir": run_dir, "data": data, "train": train, "score": score, "pseudolabel": pseudolabel, "model": model(config.model),
        "text": config.text.model_copy(update={"max_length": shorter(config.text.max_length)}),
        "ray": config.ray.model_copy(update={"address": "local", "num_cpus": 2, "num_gpus": None, "object_store_mb": 1024} if not cluster else
                                     {"address": cluster, "rehearse_gpus": True}),
        "tracking": config.tracking.model_copy(update={"uri": None}),  # never the team's tracking server
    }
    if config.stack:
        updates["stack"] = config.stack.model_copy(update={"tune_samples": min(config.stack.tune_samples, 20)})
    return Config.model_validate(config.model_copy(update=updates).model_dump())
