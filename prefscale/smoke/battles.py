"""Generated battles with the real data's files, columns and quirks: the data of smoke runs
(`prefscale run --smoke`), and the tests' stand-in for ../shared/data where it is absent.

- ``arena_kaggle_sample.parquet``: Kaggle layout, JSON-list text cells (written as Kaggle
  writes them), about a quarter of the rows cut at 512 characters by the "publisher" (their
  JSON no longer parses; ``text_truncated_512`` says so), a third ties;
- ``human_pairs.parquet``: ``dataset`` and ``source`` columns, the forced-choice
  ``hh_rlhf_harmless_test`` (never a tie) beside two sources with ties, empty soft labels;
- ``alpacaeval_outputs.parquet``: the long (instruction, dataset, generator, output) dump.

Preferences carry learnable signal (longer, more helpful-sounding answers win more often), so
members and the stack have something to find. Deterministic: the same bytes every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prefscale.data.kaggle_json import encode_turns

WORDS = ("the model answer explains data python list sort error value function plan steps result test code user question "
         "reason example simple clear because first then finally note check input output number text file").split()
HELPFUL = ("here is a clear step by step answer with an example", "sure, the short version is", "in summary, the key idea is")
REFUSAL = "I'm sorry, but I can't help with that request."


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=max(words, 1)))


GOOD = "clearly precise correct detailed accurate thorough helpful specific concrete verified".split()
POOR = "maybe unsure vague wrong unclear somehow guess probably whatever unknown".split()


def _answer(rng: np.random.Generator, quality: float) -> str:
    """Longer, more helpful and better worded with quality in [0, 1]; a poor answer sometimes refuses."""
    if quality < 0.15 and rng.random() < 0.5:
        return REFUSAL
    words = int(10 + 120 * quality + rng.integers(0, 20))
    tone = rng.choice(GOOD if rng.random() < quality else POOR, size=max(words // 8, 1))
    body = _text(rng, words) + " " + " ".join(tone)
    opener = HELPFUL[int(rng.integers(len(HELPFUL)))] if rng.random() < quality else ""
    lines = "\n".join(f"{k + 1}. {_text(rng, 6)}" for k in range(int(4 * quality))) if quality > 0.5 else ""
    return " ".join(part for part in (opener, body, lines) if part)


def _label(rng: np.random.Generator, qa: float, qb: float, ties: bool) -> tuple[float, float, float]:
    p_a = 1 / (1 + np.exp(-4 * (qa - qb)))
    if ties and rng.random() < 0.32:
        return (0.0, 0.0, 1.0)
    return (1.0, 0.0, 0.0) if rng.random() < p_a else (0.0, 1.0, 0.0)


def _battle(rng: np.random.Generator, battle_id: int, ties: bool, turns: int = 1) -> dict:
    qa, qb = rng.random(), rng.random()
    prompt = [f"Question {battle_id}: {_text(rng, 8)}?" for _ in range(turns)]
    label = _label(rng, qa, qb, ties)
    return {"id": battle_id, "model_a": f"model-{rng.integers(8)}", "model_b": f"model-{rng.integers(8)}",
            "prompt": encode_turns(prompt), "response_a": encode_turns([_answer(rng, qa) for _ in range(turns)]),
            "response_b": encode_turns([_answer(rng, qb) for _ in range(turns)]),
            "winner_model_a": label[0], "winner_model_b": label[1], "winner_tie": label[2]}


def kaggle_sample(path: Path, rows: int = 480) -> None:
    rng = np.random.default_rng(0)
    records = []
    for k in range(rows):
        row = _battle(rng, 30_000_000 + k, ties=True, turns=1 + int(rng.random() < 0.15))
        truncated = rng.random() < 0.26
        if truncated:  # the publisher cut every cell to 512 characters: long cells stop mid-JSON
            row["response_a"] = (row["response_a"] + " " + _text(rng, 120))[:512] if len(row["response_a"]) < 512 else row["response_a"][:512]
        row.update({"source": "kaggle", "text_truncated_512": truncated})
        records.append(row)
    pq.write_table(pa.Table.from_pylist(records), path)


def human_pairs(path: Path, scale: float = 1.0) -> None:
    rng = np.random.default_rng(1)
    records, next_id = [], 1
    for dataset, rows, ties in (("hh_rlhf_harmless_test", 620, False), ("llmeval2", 740, True), ("pandalm_testset", 440, True)):
        for _ in range(max(int(rows * scale), 1)):
            row = _battle(rng, next_id, ties=ties)
            row.update({"soft_a": None, "soft_b": None, "soft_tie": None, "dataset": dataset, "source": "generated"})
            records.append(row)
            next_id += 1
    table = pa.Table.from_pylist(records)
    soft = pa.array([None] * table.num_rows, pa.float64())
    for name in ("soft_a", "soft_b", "soft_tie"):
        table = table.set_column(table.schema.get_field_index(name), name, soft)
    pq.write_table(table, path)


def alpacaeval(path: Path, instructions: int = 12, generators: int = 10) -> None:
    rng = np.random.default_rng(2)
    quality = np.linspace(0.1, 0.9, generators)
    texts = [f"Instruction {i}: {_text(rng, 10)}" for i in range(instructions)]
    records = [{"instruction": texts[i], "dataset": "helpful_base", "generator": f"gen-{g:02d}",
                "output": _answer(rng, float(np.clip(quality[g] + rng.normal(0, 0.1), 0, 1)))}
               for i in range(instructions) for g in range(generators)]
    pq.write_table(pa.Table.from_pylist(records), path)


MAKERS = {"arena_kaggle_sample.parquet": kaggle_sample, "human_pairs.parquet": human_pairs, "alpacaeval_outputs.parquet": alpacaeval}


def generate(directory: Path, scale: float = 1.0) -> Path:
    """Write every file into ``directory`` (once) and return it; ``scale`` < 1 makes fewer labeled battles."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {"arena_kaggle_sample.parquet": {"rows": max(int(480 * scale), 1)}, "human_pairs.parquet": {"scale": scale}}
    for name, make in MAKERS.items():
        if not (directory / name).exists():
            make(directory / name, **sizes.get(name, {}))
    (directory / "README.json").write_text(json.dumps({"generated_by": "prefscale/smoke/battles.py"}))
    return directory
