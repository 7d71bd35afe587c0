"""Peak memory of the whole local Ray cluster while scoring 100k and 1M pairs of the dump.

The pairs come from the real AlpacaEval dump (`prefscale data pairs --max-instructions N`);
the scorer is the cheapest one that runs the full pipeline (a tiny random BERT, 32 tokens,
no TTA), so the figure is the pipeline's own memory: read -> format -> actor -> write.
Usage: python benchmarks/bench_score_memory.py [--sizes 50 496] [--single-row-group]   (instructions; x2016 pairs)
--single-row-group rewrites each input as one file with one row group (the worst layout for a
reader that reads a row group whole); results go to score_memory_single_row_group.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from common import SHARED_DATA, run_measured, write_result

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 496], help="instructions per run (2,016 pairs each)")
    parser.add_argument("--single-row-group", action="store_true", help="score each input rewritten as one row group")
    args = parser.parse_args()
    dump = SHARED_DATA / "alpacaeval_outputs.parquet"
    if not dump.exists():
        sys.exit(f"needs {dump}")
    from prefscale.smoke.models import tiny_model

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model("bert", str(tmp / "tiny_bert"))
        config = {
            "name": "bench-memory",
            "data": {"train": [str(dump)]},
            "score": {"models": [{"name": "tiny", "path": model, "max_length": 32}], "tta": False, "block_rows": 2048,
                      "max_tokens": 32768, "cpus_per_actor": 0.5, "format_cpus": 0.5, "part_rows": 200_000},
            "ray": {"num_cpus": 2, "object_store_mb": 1024},
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        for instructions in args.sizes:
            pairs = tmp / f"pairs_{instructions}.parquet"
            made, _, _ = run_measured([sys.executable, "-m", "prefscale.cli", "data", "pairs", str(dump), "--out", str(pairs),
                                       "--max-instructions", str(instructions), "--json"])
            if args.single_row_group:
                import pyarrow.parquet as pq

                table = pq.read_table(pairs)
                pq.write_table(table, pairs, row_group_size=table.num_rows, compression="zstd")
                assert pq.ParquetFile(pairs).metadata.num_row_groups == 1
                del table
            summary, memory, wall = run_measured([sys.executable, "-m", "prefscale.cli", "score", "--config", str(tmp / "config.yaml"),
                                                  "--input", str(pairs), "--out", str(tmp / f"scores_{instructions}"), "--json"])
            summary = summary["stages"]["score"]  # stage commands print every stage's summary under "stages"
            assert summary["unique_ids"] == made["pairs_written"], "every pair scored exactly once"
            runs.append({
                "pairs": made["pairs_written"],
                "wall_s": round(wall, 1),
                "rows_per_s": round(made["pairs_written"] / wall, 1),
                "pipeline_rows_per_s": summary["rows_per_s"],
                "peak_pss_gib": round(memory.peak_pss / GIB, 3),
                "peak_rss_sum_gib": round(memory.peak_rss / GIB, 3),
                "peak_processes": memory.peak_processes,
            })
            print(runs[-1], flush=True)
    record = {
        "benchmark": "peak memory of the whole Ray cluster scoring pairs of the alpacaeval dump",
        "command": "python benchmarks/bench_score_memory.py --sizes " + " ".join(map(str, args.sizes)) + (" --single-row-group" if args.single_row_group else ""),
        "layout": "one file, one row group" if args.single_row_group else "row groups of 8,192 rows (as `data pairs` writes)",
        "scorer": "tiny random BERT (hidden 32, 2 layers), max_length 32, no TTA, 1 actor",
        "runs": runs,
    }
    if len(runs) >= 2:
        record["pss_ratio_largest_to_smallest"] = round(runs[-1]["peak_pss_gib"] / runs[0]["peak_pss_gib"], 3)
        record["rss_sum_ratio_largest_to_smallest"] = round(runs[-1]["peak_rss_sum_gib"] / runs[0]["peak_rss_sum_gib"], 3)
        record["target_ratio"] = 1.25
    write_result("score_memory_single_row_group" if args.single_row_group else "score_memory", record)


if __name__ == "__main__":
    main()
