"""The driver's small fits with one BLAS thread (prefscale/blas.py) against a thread per core.

Same work both ways, alternating, on a finished run's real stacking inputs:
- one LR stacker fit (`LogisticStacker.fit` on every fold but fold 0: members' centred log-probs,
  per-source terms, both orders), its SoftmaxRegression with the one-thread limit and without it
  (the same method unwrapped); the largest difference in predicted probabilities on fold 0 is
  recorded beside the times (the optimiser stops at its tolerance either way);
- the whole stacking stage (`prefscale stack`: nested CV, leave one source out, the Ray Tune
  search, the cheap ensemble) on a copy of the run's inputs, in a fresh process each time;
  without the limit, the process replaces threadpoolctl's wrapper by the identity before
  prefscale is imported. Its OOF figures must come out the same.
Usage: python benchmarks/bench_small_fits.py [--run-dir runs/local] [--fits 5] [--stages 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from common import REPO, run_measured, write_result

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
STACK_INPUTS = ("battles.parquet", "config.yaml", "fingerprints.json", "manifest.json", "members", "models", "oof", "validated")
UNLIMITED = "import threadpoolctl; threadpoolctl.threadpool_limits.wrap = lambda **_: (lambda f: f); from prefscale.cli import main; main()"


def stacker_fits(run_dir: str, repeats: int) -> dict:
    """Seconds per LR stacker fit (every fold but fold 0), limited and unlimited, alternating ``repeats`` times."""
    from prefscale.config import load_config
    from prefscale.protocol_models import SoftmaxRegression
    from prefscale.stack.data import load_stack_data
    from prefscale.stack.stackers import LogisticStacker

    config = load_config(os.path.join(run_dir, "config.yaml")).model_copy(update={"output_dir": run_dir})
    data = load_stack_data(config.layout, config.stack_members())
    train, test = data.folds != 0, data.folds == 0
    limited = SoftmaxRegression.fit
    seconds: dict[str, list[float]] = {"one_thread": [], "thread_per_core": []}
    stackers = {}
    try:
        for _ in range(repeats):
            for name in seconds:
                SoftmaxRegression.fit = limited if name == "one_thread" else limited.__wrapped__
                started = time.perf_counter()
                stackers[name] = LogisticStacker().fit(data.logp[train], data.labels[train], data.ties[train], data.datasets[train])
                seconds[name].append(round(time.perf_counter() - started, 3))
    finally:
        SoftmaxRegression.fit = limited
    held = [stacker.predict_proba(data.logp[test], data.datasets[test]) for stacker in stackers.values()]
    medians = {name: float(np.median(s)) for name, s in seconds.items()}
    return {"design": [2 * int(train.sum()), int(stackers["one_thread"].model_.coef_.shape[0])], "seconds": seconds, "median_s": medians,
            "speedup": round(medians["thread_per_core"] / medians["one_thread"], 2),
            "max_probability_difference": float(f"{np.abs(held[0] - held[1]).max():.2g}")}


def stack_stage(run_dir: str, limited: bool) -> dict:
    """`prefscale stack` on a fresh copy of the run's inputs: its stage seconds, wall time and OOF figures."""
    with tempfile.TemporaryDirectory(prefix="bench-small-fits-") as tmp:
        for name in STACK_INPUTS:
            source, target = os.path.join(run_dir, name), os.path.join(tmp, name)
            if os.path.isdir(source):
                shutil.copytree(source, target)
            elif os.path.exists(source):
                shutil.copy2(source, target)
        entry = ["-m", "prefscale.cli"] if limited else ["-c", UNLIMITED]
        summary, _, wall = run_measured([sys.executable, *entry, "stack", "--config", os.path.join(tmp, "config.yaml"), "--run-dir", tmp, "--json"])
    stack = summary["stages"]["stack"]
    return {"stack_s": summary["timings_s"]["stack"], "wall_s": round(wall, 1), "nested_cv_final": stack["nested_cv"]["final"],
            "leave_one_source_out_mean": stack.get("leave_one_source_out", {}).get("mean")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "local"), help="run directory of a finished local run")
    parser.add_argument("--fits", type=int, default=5, help="stacker fits per contender")
    parser.add_argument("--stages", type=int, default=1, help="stacking stages per contender (about 3 minutes each)")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.run_dir, "stack", "summary.json")):
        sys.exit(f"needs a finished run at {args.run_dir}: run `make demo` first")
    fits = stacker_fits(args.run_dir, args.fits)
    print("stacker fit", fits, flush=True)
    stages: dict[str, list[dict]] = {"one_thread": [], "thread_per_core": []}
    for _ in range(args.stages):
        for name in stages:
            stages[name].append(stack_stage(args.run_dir, limited=name == "one_thread"))
            print(name, stages[name][-1], flush=True)
    median = {name: float(np.median([run["stack_s"] for run in runs])) for name, runs in stages.items()}
    write_result("small_fits", {
        "benchmark": "the driver's small fits (LR stacker, calibrators, leaderboard) with one BLAS thread vs a thread per core",
        "command": f"python benchmarks/bench_small_fits.py --run-dir {os.path.relpath(args.run_dir, REPO)} --fits {args.fits} --stages {args.stages}",
        "stacker_fit": fits,
        "stack_stage": {"runs": stages, "median_stack_s": median, "speedup": round(median["thread_per_core"] / median["one_thread"], 2),
                        "same_figures": all(run["nested_cv_final"] == stages["one_thread"][0]["nested_cv_final"] for runs in stages.values() for run in runs)},
    })


if __name__ == "__main__":
    main()
