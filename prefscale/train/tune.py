"""Ray Tune search of a train run's learning rate and LoRA rank, with ASHA stopping.

Each trial fine-tunes one fold in its own process (no DDP: trials are the parallelism), takes
a fraction of a CPU (or a GPU on a GPU run) and reports the held-out fold's log loss at every
checkpoint, so ASHA stops poor settings after their first checkpoints. The best lr and rank
replace the run's for the K-fold training that follows.
"""

from __future__ import annotations

import tempfile
from typing import Any

from prefscale.config import Config
from prefscale.errors import PrefscaleError
from prefscale.io import write_json
from prefscale.tracking import tune_callbacks
from prefscale.train.loop import FoldJob, run_training


def _trial(params: dict[str, Any], base: dict[str, Any]) -> None:
    from ray import tune

    job = tuned(FoldJob.model_validate(base), {"lr": float(params["lr"]), "r": int(params["r"])})
    run_training(job, report=lambda metrics, _directory: tune.report({k: v for k, v in metrics.items() if v is not None}))


def tune_train_run(config: Config, name: str, job: FoldJob, log=print) -> dict[str, Any]:
    """Best {lr, r} of ``tune_samples`` Optuna trials on the run's first fold; writes run_dir/tune/<name>.json."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    run = config.train[name]
    reports = max(1, run.max_rows // (run.batch_size * run.checkpoint_every)) if run.max_rows else 4
    base = job.model_copy(update={"eval_rows": run.tune_eval_rows}).model_dump()
    resources = {"cpu": run.tune_cpus_per_trial, **({"gpu": 1} if run.use_gpu else {})}
    space = {"lr": tune.loguniform(run.lr / 10, run.lr * 10), "r": tune.choice(run.tune_ranks)}
    log(f"  [{name}] Ray Tune: {run.tune_samples} trials of lr x LoRA rank on fold {job.fold}, {resources} each")
    with tempfile.TemporaryDirectory(prefix="prefscale-tune-") as scratch:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, base=base), resources),
            param_space=space,
            tune_config=tune.TuneConfig(metric="heldout_log_loss", mode="min", num_samples=run.tune_samples, search_alg=OptunaSearch(seed=run.seed),
                                        scheduler=ASHAScheduler(max_t=reports + 1, grace_period=1, reduction_factor=2)),
            run_config=tune.RunConfig(name=f"train-{name}", storage_path=scratch, verbose=0, callbacks=tune_callbacks()),
        )
        results = tuner.fit()
    trials = [{"lr": r.config["lr"], "r": int(r.config["r"]), "heldout_log_loss": r.metrics.get("heldout_log_loss"),
               "reports": r.metrics.get("training_iteration")} for r in results if r.metrics]
    if not trials:
        raise PrefscaleError(f"train.{name}: no Ray Tune trial reported; see the Ray logs")
    most = max(t["reports"] for t in trials)
    best = min((t for t in trials if t["reports"] == most), key=lambda t: t["heldout_log_loss"])  # ASHA-stopped trials saw fewer steps
    summary = {"best": {"lr": best["lr"], "r": best["r"]}, "best_heldout_log_loss": best["heldout_log_loss"], "fold": job.fold,
               "trials": sorted(trials, key=lambda t: t["heldout_log_loss"])}
    write_json(summary, config.layout.tune(name))
    return summary


def tuned(job: FoldJob, best: dict[str, Any]) -> FoldJob:
    """The fold's job with the searched lr and LoRA rank (alpha kept at twice the rank)."""
    lora = job.run.lora.model_copy(update={"r": best["r"], "alpha": 2 * best["r"]})
    return job.model_copy(update={"run": job.run.model_copy(update={"lr": best["lr"], "lora": lora})})
