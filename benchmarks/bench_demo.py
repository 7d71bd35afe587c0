"""`make demo` end to end, scoring at int8 (configs/local.yaml as shipped) and at fp32 (the same
config with `score.precision: fp32`), one after the other on one machine, each in a fresh run
directory. Wall time is the driver's, from start to the sealed report; stage times and the OOF
figures come from each run's summary.json.
Usage: python benchmarks/bench_demo.py [--precisions int8 fp32]
Leaves runs/local (the shipped config's run, what the other benchmarks read) and runs/local-<other precision>.
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

import yaml
from common import REPO, write_result

CONFIG = "configs/local.yaml"
PRECISIONS = ("int8", "fp32")


def run_dir_for(precision: str) -> str:
    shipped = yaml.safe_load(open(REPO / CONFIG))["score"].get("precision")
    return "runs/local" if precision == shipped else f"runs/local-{precision}"


def config_at(precision: str, scratch: str) -> str:
    """The shipped config when it already scores at this precision, else a copy differing only in it."""
    settings = yaml.safe_load(open(REPO / CONFIG))
    if settings["score"].get("precision") == precision:
        return CONFIG
    settings["score"]["precision"] = precision
    path = os.path.join(scratch, f"local-{precision}.yaml")
    with open(path, "w") as out:
        yaml.safe_dump(settings, out, sort_keys=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precisions", nargs="+", default=["int8", "fp32"], choices=PRECISIONS)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="prefscale-bench-demo-")
    record = {"benchmark": "make demo end to end: the local recipe scoring at int8 vs fp32, one after the other",
              "command": "python benchmarks/bench_demo.py --precisions " + " ".join(args.precisions), "runs": {}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for precision in args.precisions:
        run_dir = REPO / run_dir_for(precision)
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "prefscale"), "run", "--config", config_at(precision, scratch),
                        "--run-dir", str(run_dir)], cwd=REPO, env=env, check=True)
        wall = round(time.perf_counter() - started, 1)
        summary = json.load(open(run_dir / "summary.json"))
        report = json.load(open(run_dir / "report" / "report.json"))
        record["runs"][precision] = {
            "run_dir": run_dir_for(precision), "wall_s": wall, "stage_seconds": {k: round(v, 1) for k, v in summary["timings_s"].items()},
            "oof_log_loss": {k.split(":", 1)[1]: v["oof_log_loss"] for k, v in summary["stages"].items() if k.startswith("train:")},
            "ensemble_log_loss": report["table"]["ensemble (final)"]["log_loss"]}
        print(precision, record["runs"][precision], flush=True)
    if {"int8", "fp32"} <= record["runs"].keys():
        runs = record["runs"]
        record["int8_speedup_end_to_end"] = round(runs["fp32"]["wall_s"] / runs["int8"]["wall_s"], 3)
        record["int8_seconds_saved_by_stage"] = {stage: round(seconds - runs["int8"]["stage_seconds"].get(stage, 0.0), 1)
                                                for stage, seconds in runs["fp32"]["stage_seconds"].items()}
    write_result("demo", record)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
