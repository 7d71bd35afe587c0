"""`prefscale compare` on one battle, as a user types it: the wall time of a fresh process.

A finished local run (`make demo`) is compared on one battle, --repeats times; each time is the
whole command (Python start, imports, the run's manifest check, the cheap members, the student
scored in this process without a Ray cluster, the stack). Target (issue 36): under 10 s here.
Usage: python benchmarks/bench_compare.py [--run-dir runs/local] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import REPO, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "local"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.run_dir, "manifest.json")):
        sys.exit(f"needs a finished run at {args.run_dir}: run `make demo` first")
    command = [sys.executable, "-m", "prefscale.cli", "compare", "--run-dir", args.run_dir, "--prompt", "Explain what a hash map is.",
               "--a", "A hash map stores key-value pairs and finds a value from its key in constant time on average, by hashing the key.",
               "--b", "It is a map.", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    seconds, answer = [], None
    for _ in range(args.repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=True)
        seconds.append(round(time.perf_counter() - started, 2))
        answer = json.loads(done.stdout.strip().splitlines()[-1])["battles"][0]
        print(seconds[-1], answer["ensemble"], flush=True)
    write_result("compare", {
        "benchmark": "prefscale compare on one battle of a finished local run, a fresh process each time (no Ray cluster started)",
        "command": f"python benchmarks/bench_compare.py --run-dir {os.path.relpath(args.run_dir, REPO)} --repeats {args.repeats}",
        "seconds": seconds, "median_s": statistics.median(seconds), "target_s": 10, "met": statistics.median(seconds) < 10,
        "ensemble": answer["ensemble"], "members": sorted(answer["members"]),
    })


if __name__ == "__main__":
    main()
