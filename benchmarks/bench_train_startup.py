"""Fixed cost of one Ray Train fit on this machine: what every fold pays before its first step.

Runs TorchTrainer fits (2 workers x 1 CPU, gloo, as configs/local.yaml) whose loop only imports
the libraries the real loop needs, and records the seconds until the loop starts, until the
imports are done, and for the whole fit. The local recipe runs ten fits (5 folds x teacher and
student), so this measures the case for training all folds in one fit.
Usage: python benchmarks/bench_train_startup.py [--fits 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from common import write_result  # noqa: E402


def _loop(config: dict) -> None:
    import json

    import ray.train

    started = time.time()
    import peft  # noqa: F401
    import transformers  # noqa: F401

    if ray.train.get_context().get_world_rank() == 0:  # one machine: a local file is the simplest channel back
        with open(config["times"], "w") as handle:
            json.dump({"loop_start_s": started - config["t0"], "imports_done_s": time.time() - config["t0"]}, handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fits", type=int, default=3)
    args = parser.parse_args()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    fits = []
    with tempfile.TemporaryDirectory() as storage:
        for i in range(args.fits):
            t0 = time.time()
            times = os.path.join(storage, f"times{i}.json")
            TorchTrainer(_loop, train_loop_config={"t0": t0, "times": times},
                                  scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                                  run_config=ray.train.RunConfig(name=f"startup{i}", storage_path=storage)).fit()
            fit_s = time.time() - t0
            with open(times) as handle:
                fits.append({k: round(v, 1) for k, v in {**json.load(handle), "fit_s": fit_s}.items()})
            print(fits[-1], flush=True)
    write_result("train_startup", {
        "benchmark": "seconds per Ray Train fit (2 CPU workers) with an empty loop that imports transformers and peft",
        "command": "python benchmarks/bench_train_startup.py",
        "fits": fits,
        "median_fit_s": statistics.median(f["fit_s"] for f in fits),
        "median_loop_start_s": statistics.median(f["loop_start_s"] for f in fits),
    })


if __name__ == "__main__":
    main()
