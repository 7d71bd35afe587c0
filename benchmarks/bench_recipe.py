"""Each step of the student recipe, measured beside its noise: CE only, distilled, distilled +
pseudolabels, and the averaged student against single fold models.

Reads a finished local run (`make demo`): its battles, the teacher's OOF logits and the
teacher's pseudolabels. Fold 4 is held out entirely (no model below trains on it). For each
variant and seed, the recipe's student (configs/local.yaml's `student` section, same budget)
trains fold models 0 and 1 on folds 0-3, which gives OOF rows on folds 0 and 1, and averages
them; then the averaged model and each fold model score fold 4. Variants change only the loss:
(a) CE only, (b) distilled from the teacher's OOF, (c) distilled plus pseudolabels.
Records OOF and held-out log loss (each battle under its label protocol) against the priors.
Usage: python benchmarks/bench_recipe.py [--run-dir runs/local] [--seeds 0 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
from common import REPO, write_result  # noqa: E402

VARIANTS = {"a_ce_only": {"distill": None, "pseudolabels": False}, "b_distilled": {"pseudolabels": False}, "c_distilled_pseudolabels": {}}
HELD_OUT_FOLD, TRAINED_FOLDS = 4, [0, 1]


def heldout_log_loss(config, model, battles_uri: str, truth) -> float:
    from prefscale.artifacts import read_parts
    from prefscale.data import schema
    from prefscale.metrics import log_loss
    from prefscale.score.engine import score_battles
    from prefscale.score.scoring_model import train_run_score_settings

    out = config.layout.scores(f"heldout-{model.name}")
    score_battles(battles_uri, out, [model], train_run_score_settings(config, "student"))
    probs = read_parts(out, [schema.ID, *schema.PROBS]).to_pandas().set_index(schema.ID).loc[truth["ids"]].to_numpy()
    return round(log_loss(truth["labels"], probs, truth["ties"]), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "local"), help="a finished local run (make demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one, deleted after)")
    args = parser.parse_args()

    import pyarrow.compute as pc

    from prefscale.config import load_config
    from prefscale.data import schema
    from prefscale.io import read_table, write_table
    from prefscale.layout import RunLayout
    from prefscale.metrics import class_prior, log_loss
    from prefscale.pipeline import run_stages
    from prefscale.score.scoring_model import trained_model

    source = RunLayout(args.run_dir)
    for needed in (source.config, source.battles, source.oof("teacher"), source.pseudolabels):
        if not os.path.exists(needed):
            sys.exit(f"needs a finished local run: {needed} is missing; run `make demo` first")
    base = load_config(source.config)
    work = args.work or tempfile.mkdtemp(prefix="prefscale-bench-recipe-")
    battles = read_table(source.battles)
    training = battles.filter(pc.not_equal(battles[schema.FOLD], HELD_OUT_FOLD))
    heldout = battles.filter(pc.equal(battles[schema.FOLD], HELD_OUT_FOLD))
    heldout_uri = os.path.join(work, "heldout.parquet")
    write_table(heldout, heldout_uri)
    truth = {"ids": heldout.column(schema.ID).to_numpy(), "labels": schema.label_matrix(heldout), "ties": schema.ties_allowed(heldout)}
    prior = np.broadcast_to(class_prior(schema.label_matrix(training), schema.ties_allowed(training)), truth["labels"].shape)
    record = {"benchmark": "student recipe steps: CE vs distilled vs distilled + pseudolabels; averaged vs fold models",
              "command": "python benchmarks/bench_recipe.py --run-dir " + os.path.relpath(args.run_dir, REPO) + " --seeds " + " ".join(map(str, args.seeds)),
              "student": base.train["student"].model_dump(mode="json", exclude_none=True), "trained_folds": TRAINED_FOLDS,
              "heldout_fold": HELD_OUT_FOLD, "heldout_rows": heldout.num_rows, "training_rows": training.num_rows,
              "heldout_prior_log_loss": round(log_loss(truth["labels"], prior, truth["ties"]), 4), "runs": {}}
    for variant, changes in VARIANTS.items():
        for seed in args.seeds:
            started = time.perf_counter()
            student = base.train["student"].model_copy(update={**changes, "seed": seed, "folds": TRAINED_FOLDS})
            config = base.model_copy(update={"output_dir": os.path.join(work, f"{variant}-{seed}"), "train": {"student": student}})
            layout = config.layout
            write_table(training, layout.battles)
            write_table(read_table(source.oof("teacher")), layout.oof("teacher"))
            write_table(read_table(source.pseudolabels), layout.pseudolabels)
            summary = run_stages(config, ["students"] if student.pseudolabels else ["train"], log=lambda line: None)["stages"]["train:student"]
            folds = {f"fold{k}": heldout_log_loss(config, trained_model(config, "student", path, f"student-{k}"), heldout_uri, truth)
                     for k, path in enumerate(layout.fold_models("student"))}
            averaged = heldout_log_loss(config, trained_model(config, "student", layout.averaged("student"), "student-averaged"), heldout_uri, truth)
            record["runs"][f"{variant}/seed{seed}"] = {
                "oof_log_loss": summary["oof_log_loss"], "oof_prior_log_loss": summary["oof_prior_log_loss"], "oof_rows": summary["oof_rows"],
                "heldout_averaged": averaged, "heldout_fold_models": folds, "seconds": round(time.perf_counter() - started, 1)}
            print(variant, seed, record["runs"][f"{variant}/seed{seed}"], flush=True)
    record["summary"] = {
        variant: {key: [record["runs"][f"{variant}/seed{s}"][key] for s in args.seeds] for key in ("oof_log_loss", "heldout_averaged")}
        | {"heldout_fold_models_mean": [round(float(np.mean(list(record["runs"][f"{variant}/seed{s}"]["heldout_fold_models"].values()))), 4)
                                        for s in args.seeds]}
        for variant in VARIANTS}
    write_result("recipe", record)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
