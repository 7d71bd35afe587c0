"""int8 against fp32 scoring on the local recipe's held-out folds: is quality kept?

Reads a finished local run (`make demo`, scored at fp32), copies it to a scratch run directory
with `score.precision: int8`, and rescores there the teacher's and the student's held-out folds
(each battle by its own fold's adapter, as the run did) through the same engine and resolver
predict uses. Then restacks the scratch run (nested CV) on the int8 OOF logits. Records, per
train run, the OOF log loss at fp32 and int8 and the largest absolute probability change of any
battle, and the stacked ensemble's nested-CV log loss both ways. Targets (issue 34): each train
run within 0.002, the ensemble within 0.001.
Usage: python benchmarks/bench_precision.py [--run-dir runs/local]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import REPO, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "local"), help="a finished local run, scored at fp32")
    args = parser.parse_args()
    import numpy as np
    import pyarrow.parquet as pq

    from prefscale.artifacts import oof_metrics
    from prefscale.config import load_config
    from prefscale.io import read_table
    from prefscale.layout import RunLayout
    from prefscale.pipeline import run_stages
    from prefscale.ray_runtime import ensure_ray
    from prefscale.train.kfold import train_run

    layout = RunLayout(args.run_dir)
    if not os.path.exists(layout.config):
        sys.exit(f"needs a finished run at {args.run_dir}: run `make demo` first")
    fp32 = load_config(layout.config).model_copy(update={"output_dir": args.run_dir})
    if fp32.score.precision not in (None, "fp32"):
        sys.exit(f"{args.run_dir} was scored at {fp32.score.precision}; this compares int8 against an fp32 run")
    scratch = tempfile.mkdtemp(prefix="prefscale-int8-", dir=str(REPO / "runs"))
    try:
        shutil.copytree(args.run_dir, scratch, dirs_exist_ok=True)
        int8 = fp32.model_copy(update={"output_dir": scratch, "score": fp32.score.model_copy(update={"precision": "int8"})})
        ensure_ray(int8.ray)
        battles = read_table(int8.layout.battles)
        runs = {}
        for name in int8.train_order():
            shutil.rmtree(int8.layout.oof_scores(name), ignore_errors=True)
            os.remove(int8.layout.oof(name))
            summary = train_run(int8, name, log=print)  # every fold is trained: only the held-out folds are scored again
            before = pq.read_table(fp32.layout.oof(name)).to_pandas().set_index("id").sort_index()
            after = pq.read_table(int8.layout.oof(name)).to_pandas().set_index("id").loc[before.index]
            columns = ["prob_a", "prob_b", "prob_tie"]
            gap = np.abs(before[columns].to_numpy() - after[columns].to_numpy()).max(axis=1)
            runs[name] = {"fp32_oof_log_loss": oof_metrics(pq.read_table(fp32.layout.oof(name)), battles)["oof_log_loss"],
                          "int8_oof_log_loss": summary["oof_log_loss"], "battles": len(before),
                          "largest_probability_change": round(float(gap.max()), 4), "p99_probability_change": round(float(np.quantile(gap, 0.99)), 4),
                          "mean_probability_change": round(float(gap.mean()), 5)}
            runs[name]["int8_minus_fp32"] = round(runs[name]["int8_oof_log_loss"] - runs[name]["fp32_oof_log_loss"], 4)
            print(name, runs[name], flush=True)
        stacked = {}
        for label, config in (("fp32", fp32.model_copy(update={"output_dir": scratch + "-fp32"})), ("int8", int8)):
            if label == "fp32":
                shutil.copytree(args.run_dir, config.run_dir, dirs_exist_ok=True)
            stacked[label] = run_stages(config, ["stack"], log=lambda line: None)["stages"]["stack"]["nested_cv"]["final"]
        record = {
            "benchmark": "int8 (PyTorch dynamic, CPU) vs fp32 scoring of the local recipe's held-out folds, and the ensemble restacked on them",
            "command": "python benchmarks/bench_precision.py --run-dir " + os.path.relpath(args.run_dir, REPO),
            "runs": runs,
            "ensemble_nested_cv": {"fp32": stacked["fp32"], "int8": stacked["int8"], "int8_minus_fp32": round(stacked["int8"] - stacked["fp32"], 4)},
            "targets": {"train_run": 0.002, "ensemble": 0.001},
            "met": all(abs(r["int8_minus_fp32"]) <= 0.002 for r in runs.values()) and abs(stacked["int8"] - stacked["fp32"]) <= 0.001,
        }
        write_result("precision", record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(scratch + "-fp32", ignore_errors=True)


if __name__ == "__main__":
    main()
