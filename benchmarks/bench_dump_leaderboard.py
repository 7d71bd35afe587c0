"""The whole AlpacaEval dump to a leaderboard of its 64 chatbots in one command, through the cascade.

Runs `prefscale leaderboard --run-dir RUN --battles alpacaeval_outputs.parquet --out TMP` (pairs ->
cascade -> Davidson fit with bootstrap intervals) and records wall time, the peak memory (PSS) of
the whole process tree (the in-process Ray cluster included), how many battles each stage
decided, and the ranking's rank correlation with the naive baseline (mean answer length).

It also measures what the later cascade stages cost per battle on a slice of the dump (every
battle stopped at stage 1, then every battle sent through), which turns the OOF log-loss curve
of the run's report (report/cascade.json) into log loss against seconds for the whole dump: the
measured cascade time, plus or minus the battles sent on at that price.

Usage: python benchmarks/bench_dump_leaderboard.py --run-dir runs/local [--send-fraction 0.005]
       [--instructions N] [--curve-rows 2000]
The run must be finished with a `cascade` section (configs/local.yaml has one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from common import REPO, RESULTS, SHARED_DATA, run_measured, write_result

GIB = 2**30


def stage_costs(run_dir: str, dump: Path, rows: int, tmp: Path) -> dict:
    """Seconds per battle of stage 1 alone and of every stage, from two cascade runs on one slice."""
    pairs = tmp / "slice_pairs.parquet"
    run_measured([sys.executable, "-m", "prefscale.cli", "data", "pairs", str(dump), "--out", str(pairs), "--max-instructions", "2", "--json"])
    costs = {}
    for label, fraction in (("first_stage_only", None), ("every_stage", "1.0")):
        command = [sys.executable, "-m", "prefscale.cli", "cascade", "--run-dir", run_dir, "--input", str(pairs), "--out", str(tmp / label),
                   "--rows", str(rows), "--json"]
        if fraction:
            command += ["--send-fraction", fraction]
        else:
            command += ["--send-fraction", str(1 / rows / 2)]  # rounds to nobody sent on
        summary, _, wall = run_measured(command)
        costs[label] = {"rows": summary["scored"], "pipeline_s": summary["seconds"], "wall_s": round(wall, 1),
                        "decided_by_stage": summary["decided_by_stage"]}
    first = costs["first_stage_only"]["pipeline_s"] / rows
    every = costs["every_stage"]["pipeline_s"] / rows
    return {**costs, "first_stage_s_per_battle": round(first, 6), "later_stages_s_per_battle": round(max(every - first, 0.0), 6)}


def length_baseline(dump: Path, board: pd.DataFrame) -> dict:
    lengths = pd.read_parquet(dump, columns=["generator", "output"])
    mean_length = lengths.assign(chars=lengths["output"].str.len()).groupby("generator")["chars"].mean()
    joined = board.set_index("model").join(mean_length.rename("mean_chars"))
    found = {"spearman_rating_vs_mean_length": round(float(joined["rating"].rank().corr(joined["mean_chars"].rank())), 4),
             "length_ranking_top5": mean_length.sort_values(ascending=False).index[:5].tolist()}
    if "style_rating" in joined:
        found["spearman_style_rating_vs_mean_length"] = round(float(joined["style_rating"].rank().corr(joined["mean_chars"].rank())), 4)
    return found


def style_control(board: pd.DataFrame, summary: dict) -> dict:
    """The two rankings' top 10 side by side, with ratings and intervals, and the style coefficients."""
    def top(key: str) -> list[dict]:
        ranked = board.sort_values(key, ascending=False).head(10)
        return [{"model": r["model"], "rating": round(r[key], 1), "low": round(r[f"{key}_low"], 1), "high": round(r[f"{key}_high"], 1)}
                for _, r in ranked.iterrows()]

    return {"top10_plain": top("rating"), "top10_style_controlled": top("style_rating"),
            "coefficients": summary["style_coefficients"], "spearman_plain_vs_style": summary["spearman_plain_vs_style"],
            "notes": summary["notes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/local", help="a finished run with a cascade section")
    parser.add_argument("--send-fraction", type=float, default=0.005, help="compute budget: share of each block sent on at every boundary")
    parser.add_argument("--instructions", type=int, help="only the first N instructions of the dump (a quick check)")
    parser.add_argument("--curve-rows", type=int, default=2000, help="battles of the slice that prices each stage")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    args = parser.parse_args()
    dump = SHARED_DATA / "alpacaeval_outputs.parquet"
    if not dump.exists():
        sys.exit(f"needs {dump}")
    fitted = json.loads((Path(args.run_dir) / "report" / "cascade.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = dump
        if args.instructions:
            long = pd.read_parquet(dump)
            source = tmp / "dump.parquet"
            long[long["instruction"].isin(long["instruction"].unique()[: args.instructions])].to_parquet(source)
        costs = stage_costs(args.run_dir, dump, args.curve_rows, tmp)
        print(json.dumps(costs), flush=True)
        out = tmp / "ranked"
        summary, memory, wall = run_measured([sys.executable, "-m", "prefscale.cli", "leaderboard", "--run-dir", args.run_dir, "--battles", str(source),
                                              "--out", str(out), "--send-fraction", str(args.send_fraction), "--bootstrap", str(args.bootstrap), "--json"])
        board = pd.read_parquet(out / "leaderboard.parquet")
        cascade = summary["cascade"]
        assert cascade["output_rows"] == cascade["unique_ids"] == summary["pairs"]["pairs_written"], "every battle decided exactly once"
        suffix = "" if not args.instructions else f"_{args.instructions}_instructions"
        for name in ("leaderboard.md", "leaderboard.png"):
            shutil.copy(out / name, RESULTS / f"dump_{name.replace('.', suffix + '.')}")
    battles = summary["pairs"]["pairs_written"]
    later = costs["later_stages_s_per_battle"]
    # The measured whole-dump cascade, with more or fewer battles sent on at the slice's price of the later stages.
    curve = [{"sent_past_first": p["reached"][1], "oof_log_loss": p["log_loss"],
              "projected_dump_cascade_s": round(cascade["seconds"] + (p["reached"][1] - cascade["sent_past_first"]) * battles * later, 1)}
             for p in fitted["curve"] if p["fraction"] in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0) or p["fraction"] == fitted["chosen"]["fraction"]]
    record = {
        "benchmark": "the whole alpacaeval dump to a leaderboard through the cascade, one command",
        "command": f"python benchmarks/bench_dump_leaderboard.py --run-dir {args.run_dir} --send-fraction {args.send_fraction}"
                   + (f" --instructions {args.instructions}" if args.instructions else ""),
        "battles": battles,
        "models": summary["leaderboard"]["models"],
        "wall_s": round(wall, 1), "target_wall_s": 1800,
        "peak_pss_gib": round(memory.peak_pss / GIB, 3), "target_peak_gib": 4.0, "peak_processes": memory.peak_processes,
        "seconds": {"pairs": summary.get("pairs", {}).get("seconds"), "cascade": cascade["seconds"], "leaderboard": summary["leaderboard"]["seconds"]},
        "cascade_rows_per_s": cascade["rows_per_s"],
        "cascade": {"stages": cascade["stages"], "routing": cascade["routing"], "decided_by_stage": cascade["decided_by_stage"],
                    "sent_past_first": cascade["sent_past_first"]},
        "oof_fit": {"stage_alone_log_loss": fitted["stage_alone_log_loss"], "tolerance": fitted["tolerance"], "max_sent": fitted["max_sent"],
                    "chosen": {k: fitted["chosen"][k] for k in ("fraction", "log_loss", "sent_past_first", "met")}},
        "stage_costs": costs,
        "log_loss_vs_compute": curve,
        "top5": board["model"].head(5).tolist(), "bottom5": board["model"].tail(5).tolist(),
        "tie_parameter": summary["leaderboard"]["tie_parameter"],
        **length_baseline(source, board),
        "style_control": style_control(board, summary["leaderboard"]),
    }
    write_result("dump_leaderboard" + suffix, record)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
