"""`prefscale predict` on 2,000 battles with a finished local run, and what packing a run's neural
models into one pass buys.

Reads a finished run (`make demo`, configs/local.yaml) and the first N battles of its unlabeled
pairs (real AlpacaEval answers). Two measurements, one after the other on the same machine:
1. every neural model of the run (the teacher's 5 fold models and the student: what the held-out
   and pseudolabel passes score) one pass per model and then all in one pass (score.pack_models),
   in one process with Ray already started, so only the packing differs;
2. `prefscale predict` end to end as a user runs it (a fresh process: imports, Ray start-up,
   validation, every member, the stack), at the run's own settings.
Each measurement gets a fresh copy of the input, so no scores from an earlier pass are reused.
Usage: python benchmarks/bench_predict.py [--run-dir runs/local] [--rows 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from common import REPO, write_result  # noqa: E402


def neural_pass_seconds(run_dir: str, battles_uri: str, work: str, pack: bool) -> dict:
    """Seconds to score every train run's models on the battles, packed or one pass per model."""
    from prefscale.predict import load_run, neural_probs
    from prefscale.score.scoring_model import scoring_plan

    config, _ = load_run(run_dir)
    config = config.model_copy(update={"score": config.score.model_copy(update={"pack_models": pack})})
    runs = list(config.train)
    started = time.perf_counter()
    neural_probs(config, runs, battles_uri, os.path.join(work, f"pack-{pack}"))
    return {"seconds": round(time.perf_counter() - started, 1), "runs": runs,
            "models": sum(len(scoring_plan(config, r)) for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "local"), help="a finished local run (make demo)")
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()

    from prefscale.config import RayConfig
    from prefscale.io import read_head, write_table
    from prefscale.predict import load_run
    from prefscale.ray_runtime import ensure_ray

    config, _ = load_run(args.run_dir)
    work = tempfile.mkdtemp(prefix="bench-predict-")
    try:
        battles = read_head(config.layout.unlabeled_pairs, args.rows)
        inputs = {name: os.path.join(work, f"{name}.parquet") for name in ("one_pass_per_model", "packed", "cli")}
        for path in inputs.values():
            write_table(battles, path)
        ensure_ray(RayConfig(num_cpus=config.ray.num_cpus, object_store_mb=config.ray.object_store_mb))
        passes = {name: neural_pass_seconds(args.run_dir, inputs[name], work, pack=name == "packed") for name in ("one_pass_per_model", "packed")}
        import ray

        ray.shutdown()
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "prefscale.cli", "predict", "--run-dir", args.run_dir, "--input", inputs["cli"],
                                 "--out", os.path.join(work, "submission.csv"), "--json"], capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - started
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        predicted = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("predict", {
        "benchmark": f"prefscale predict on {battles.num_rows} battles of a finished local run; a run's neural models packed vs one pass per model",
        "command": f"python benchmarks/bench_predict.py --run-dir {os.path.relpath(args.run_dir, REPO)} --rows {args.rows}",
        "rows": battles.num_rows,
        "pack_models_in_run_config": config.score.pack_models,
        "neural_models": passes,
        "packed_speedup": round(passes["one_pass_per_model"]["seconds"] / passes["packed"]["seconds"], 2),
        "predict_cli": {"wall_s": round(wall, 1), "rows_per_s": round(battles.num_rows / wall, 1), "predicted": predicted["predicted"],
                        "members": predicted["members"]},
    })


if __name__ == "__main__":
    main()
