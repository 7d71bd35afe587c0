"""Battle features that capture arena voters' known biases: length, structure, refusals, overlap.

Each side is described on its own; a battle is [side A, side B, A - B, symmetric], and the
swapped battle is [side B, side A, B - A, symmetric], so a model can be trained on both orders.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa

from prefscale.data import schema
from prefscale.data.kaggle_json import TurnsDecodeError, decode_turns, turns_text

REFUSALS = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:no|')t|i am unable|i'm unable|i am not able|as an ai|"
    r"as a language model|i don'?t have (?:access|the ability)|i won'?t be able)\b",
    re.IGNORECASE,
)
WORD = re.compile(r"\w+")
SIDE_FEATURES = (
    "log_chars", "log_words", "lines", "paragraphs", "headers", "list_items", "numbered_items", "bold",
    "code_blocks", "inline_code", "urls", "digit_share", "questions", "exclamations", "refusals",
    "empty", "null_turns", "prompt_word_overlap", "prompt_word_coverage", "mean_word_len",
)
SYMMETRIC_FEATURES = ("log_prompt_chars", "turns", "identical", "either_empty", "ab_jaccard", "abs_log_chars_diff")


def cell_turns(cell: str | None) -> list[str]:
    """Turns of a Kaggle cell; unparseable text counts as one turn (validation rejects it earlier)."""
    if cell is None:
        return [""]
    try:
        return turns_text(decode_turns(cell))
    except TurnsDecodeError:
        return [cell]


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)}


def side_features(turns: list[str], prompt_words: set[str], null_turns: int) -> list[float]:
    text = "\n\n".join(turns)
    words = WORD.findall(text)
    word_set = {w.lower() for w in words}
    lines = text.splitlines()
    return [
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(len(lines)),
        math.log1p(text.count("\n\n")),
        sum(1 for line in lines if line.lstrip().startswith("#")),
        sum(1 for line in lines if re.match(r"\s*[-*+•]\s", line)),
        sum(1 for line in lines if re.match(r"\s*\d+[.)]\s", line)),
        text.count("**") // 2,
        text.count("```") // 2,
        len(re.findall(r"`[^`\n]+`", text)),
        len(re.findall(r"https?://", text)),
        sum(c.isdigit() for c in text) / max(len(text), 1),
        text.count("?"),
        text.count("!"),
        len(REFUSALS.findall(text)),
        float(not text.strip()),
        float(null_turns),
        len(word_set & prompt_words) / max(len(word_set), 1),
        len(word_set & prompt_words) / max(len(prompt_words), 1),
        sum(map(len, words)) / max(len(words), 1),
    ]


def battle_features(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(features, swapped features) as float32 arrays of shape (n, 3 * sides + symmetric)."""
    prompts = table.column(schema.PROMPT).to_pylist()
    cells_a = table.column(schema.RESPONSE_A).to_pylist()
    cells_b = table.column(schema.RESPONSE_B).to_pylist()
    side_a, side_b, symmetric = [], [], []
    for prompt_cell, cell_a, cell_b in zip(prompts, cells_a, cells_b, strict=True):
        prompt = cell_turns(prompt_cell)
        prompt_text = "\n".join(prompt)
        prompt_words = _words(prompt_text)
        turns_a, turns_b = cell_turns(cell_a), cell_turns(cell_b)
        fa = side_features(turns_a, prompt_words, _null_turns(cell_a))
        fb = side_features(turns_b, prompt_words, _null_turns(cell_b))
        words_a, words_b = _words(" ".join(turns_a)), _words(" ".join(turns_b))
        symmetric.append([
            math.log1p(len(prompt_text)),
            len(prompt),
            float(turns_a == turns_b),
            max(fa[15], fb[15]),
            len(words_a & words_b) / max(len(words_a | words_b), 1),
            abs(fa[0] - fb[0]),
        ])
        side_a.append(fa)
        side_b.append(fb)
    a, b, sym = (np.asarray(x, dtype=np.float32).reshape(len(prompts), -1) for x in (side_a, side_b, symmetric))
    return np.hstack([a, b, a - b, sym]), np.hstack([b, a, b - a, sym])


def _null_turns(cell: str | None) -> int:
    if cell is None:
        return 1
    try:
        return sum(t is None for t in decode_turns(cell))
    except TurnsDecodeError:
        return 0


def feature_names() -> list[str]:
    return [f"a_{n}" for n in SIDE_FEATURES] + [f"b_{n}" for n in SIDE_FEATURES] + [f"diff_{n}" for n in SIDE_FEATURES] + list(SYMMETRIC_FEATURES)
