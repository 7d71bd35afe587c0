"""Rows/s and peak RSS of `prefscale data pairs` over the whole AlpacaEval dump (1,622,880 pairs).

Runs the real CLI in a child process and reads the child's peak resident memory from the
kernel (getrusage), so the figure covers everything the command allocated.
Usage: python benchmarks/bench_pairs.py [--swap]   (writes benchmarks/results/pairs[_swap].json)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DUMP = REPO.parent / "shared" / "data" / "alpacaeval_outputs.parquet"
TARGET_RSS_GIB = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--swap", action="store_true")
    args = parser.parse_args()
    if not DUMP.exists():
        sys.exit(f"needs {DUMP} (../shared/data beside the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pairs.parquet"
        command = [sys.executable, "-m", "prefscale.cli", "data", "pairs", str(DUMP), "--out", str(out), "--json"] + (["--swap"] if args.swap else [])
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
        wall = time.perf_counter() - started
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        size = out.stat().st_size
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    record = {
        "benchmark": "data pairs (alpacaeval dump)",
        "command": "prefscale data pairs ../shared/data/alpacaeval_outputs.parquet --out OUT --json" + (" --swap" if args.swap else ""),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, no GPU",
        "pairs_written": summary["pairs_written"],
        "wall_s": round(wall, 2),
        "rows_per_s": round(summary["pairs_written"] / wall, 1),
        "peak_rss_gib": round(peak_gib, 3),
        "target_rss_gib": TARGET_RSS_GIB,
        "within_target": peak_gib < TARGET_RSS_GIB,
        "output_mib": round(size / 2**20, 1),
    }
    print(json.dumps(record, indent=2))
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"pairs{'_swap' if args.swap else ''}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
