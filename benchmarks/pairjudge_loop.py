"""The peer's scoring loop, run in its own virtual environment (`make bench-pairjudge-venv`).

pairjudge 0.3.0 (the published 4th-place library) is not a dependency of prefscale: this
script runs under `.venv-pairjudge/bin/python`, called by bench_score_throughput.py, and
prints one JSON line. It wraps the same MiniLM checkpoint in pairjudge's own judge (its packer
at max_length, its swap averaging, its default batch of 4, single process) and times packing
plus the forward passes (and the JSON decoding of the cells), as its `predict_proba(swap_debias=True)` does them.
Usage: python pairjudge_loop.py --battles B.parquet --model DIR --max-length 512 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--battles", required=True)
    parser.add_argument("--model", required=True, help="a local model folder")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4, help="pairjudge's default")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from importlib.metadata import version

    import numpy as np
    import pandas as pd
    import torch
    from pairjudge import PairwiseJudge
    from pairjudge.packing import PackerConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    frame = pd.read_parquet(args.battles, columns=["id", "prompt", "response_a", "response_b"])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=3).eval()
    judge = PairwiseJudge(model, tokenizer, PackerConfig(max_length=args.max_length))

    started = time.perf_counter()
    # Cells are Kaggle JSON lists of turns; pairjudge takes Python lists, null turns as "".
    for column in ("prompt", "response_a", "response_b"):
        frame[column] = [[turn or "" for turn in json.loads(cell)] for cell in frame[column]]
    judge.predict_proba(frame, swap_debias=True, batch_size=args.batch_size)
    seconds = time.perf_counter() - started

    # The tokens it computed: each pass is sorted by length and cut into batches of batch_size.
    real = computed = 0
    for packed in (judge._pack_frame(frame), judge._pack_frame(judge._swap(frame))):
        lengths = np.sort(packed["length"].to_numpy())[::-1]
        real += int(lengths.sum())
        computed += int(sum(lengths[s : s + args.batch_size].max() * len(lengths[s : s + args.batch_size])
                            for s in range(0, len(lengths), args.batch_size)))
    print(json.dumps({
        "pairjudge_version": version("pairjudge"),
        "rows": len(frame),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(frame) / seconds, 2),
        "real_tokens_per_battle_and_pass": round(real / (2 * len(frame)), 1),
        "real_tokens_per_s": round(real / seconds, 1),
        "padding_efficiency": round(real / computed, 4),
        "batch_size": args.batch_size,
    }))


if __name__ == "__main__":
    main()
