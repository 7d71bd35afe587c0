"""The scorer actor's class driven in-process (no Ray) on 2,000 battles in the engine's blocks, both
orders, under cProfile, beside the bare loop on the same rows: how much of what `prefscale score`
loses to its bare loop (score_throughput.json) is the actor's own code.
Usage: python benchmarks/bench_scorer_profile.py
"""
import cProfile
import pstats
import time

import torch
from bench_score_throughput import MODEL, bare_loop, battles
from common import write_result

from prefscale.config import ScoreConfig, TextConfig
from prefscale.score.scorer import ModelScorer
from prefscale.score.scoring_model import ScoringModel

record = {"benchmark": "the scorer actor's work in-process vs the bare loop, cProfile", "command": "python benchmarks/bench_scorer_profile.py",
          "rows": 2000, "runs": {}}
torch.set_num_threads(2)
table = battles(2000)
text = TextConfig(max_length=512)
for precision in ("fp32", "int8"):
    bare = bare_loop(table, text, ScoreConfig().max_tokens, precision)
    model = ScoringModel("minilm", MODEL, text, precision)
    started = time.perf_counter()
    scorer = ModelScorer([model], max_tokens=ScoreConfig().max_tokens, threads=2, encode=([model], True))
    loaded = time.perf_counter() - started
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for offset in range(0, table.num_rows, ScoreConfig().block_rows):
        scorer(table.slice(offset, ScoreConfig().block_rows))
    profile.disable()
    steady = time.perf_counter() - started
    stats = pstats.Stats(profile)
    def cum(fragment):
        return sum(v[3] for k, v in stats.stats.items() if fragment in f"{k[0]}:{k[2]}")
    record["runs"][precision] = {"bare_loop_s": bare["seconds"], "actor_load_s": round(loaded, 2), "actor_blocks_s": round(steady, 2),
                                 "actor_over_bare": round(steady / bare["seconds"], 3), "tokenizing_s": round(cum("encode.py:encode_battles"), 2),
                                 "forward_s": round(cum("scorer.py:_logits"), 2)}
    print(precision, record["runs"][precision], flush=True)
write_result("scorer_profile", record)
