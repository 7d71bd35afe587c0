"""Battle features that capture arena voters' known biases: length, structure, refusals, overlap.

Each side is described on its own; a battle is [side A, side B, A - B, symmetric], and the
swapped battle is [side B, side A, B - A, symmetric], so a model can be trained on both orders.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

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
    """(features, swapped features) as float32 arrays of shape (n, 3 * sides + symmetric).

    Features are computed once per distinct answer (its text with its prompt) and per distinct
    prompt, and a battle's are gathered from its two answers': a dump where each answer meets
    63 others costs about what its answers cost, not its battles."""
    n = table.num_rows
    prompt_codes, prompt_cells = distinct_cells(table.column(schema.PROMPT))
    answer_codes, answer_cells = distinct_cells(pa.chunked_array(table.column(schema.RESPONSE_A).chunks + table.column(schema.RESPONSE_B).chunks))
    prompts = [_prompt(cell) for cell in prompt_cells]
    answers = [_Answer(cell) for cell in answer_cells]
    keys = np.tile(prompt_codes, 2) * len(answers) + answer_codes  # an answer's features depend on its prompt too
    unique_keys, where = np.unique(keys, return_inverse=True)
    sides = np.array([side_features(answers[k % len(answers)].turns, prompts[k // len(answers)][2], answers[k % len(answers)].null_turns)
                      for k in unique_keys.tolist()], dtype=np.float64).reshape(len(unique_keys), len(SIDE_FEATURES))
    side_a, side_b = sides[where[:n]], sides[where[n:]]
    code_a, code_b = answer_codes[:n], answer_codes[n:]
    same_turns: dict[tuple[str, ...], int] = {}  # two encodings of one text are identical answers
    canonical = np.array([same_turns.setdefault(tuple(a.turns), len(same_turns)) for a in answers], dtype=np.int64)
    prompt_stats = np.array([p[:2] for p in prompts], dtype=np.float64).reshape(len(prompts), 2)[prompt_codes]
    symmetric = np.column_stack([
        prompt_stats,
        canonical[code_a] == canonical[code_b],
        np.maximum(side_a[:, 15], side_b[:, 15]),
        _jaccard(answers, code_a, code_b),
        np.abs(side_a[:, 0] - side_b[:, 0]),
    ])
    a, b, sym = side_a.astype(np.float32), side_b.astype(np.float32), symmetric.astype(np.float32)
    return np.hstack([a, b, a - b, sym]), np.hstack([b, a, b - a, sym])


def distinct_cells(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """Each row's index into the column's distinct cells (null is a cell of its own), and those cells."""
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _prompt(cell: str | None) -> tuple[float, int, set[str]]:
    turns = cell_turns(cell)
    text = "\n".join(turns)
    return math.log1p(len(text)), len(turns), _words(text)


class _Answer:
    """One distinct answer cell: its turns, null turns and lower-cased words."""

    __slots__ = ("turns", "null_turns", "words")

    def __init__(self, cell: str | None) -> None:
        self.turns = cell_turns(cell)
        self.null_turns = _null_turns(cell)
        self.words = _words(" ".join(self.turns))


def _jaccard(answers: list[_Answer], code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
    """Word-set Jaccard similarity of each battle's two answers, as sparse row products."""
    vocabulary: dict[str, int] = {}
    rows, columns = [], []
    for k, answer in enumerate(answers):
        ids = [vocabulary.setdefault(w, len(vocabulary)) for w in answer.words]
        rows += [k] * len(ids)
        columns += ids
    words = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, columns)), shape=(len(answers), max(len(vocabulary), 1)))
    sizes = np.asarray(words.sum(axis=1)).ravel()
    shared = np.asarray(words[code_a].multiply(words[code_b]).sum(axis=1)).ravel()
    return shared / np.maximum(sizes[code_a] + sizes[code_b] - shared, 1)


def _null_turns(cell: str | None) -> int:
    if cell is None:
        return 1
    try:
        return sum(t is None for t in decode_turns(cell))
    except TurnsDecodeError:
        return 0


def feature_names() -> list[str]:
    return [f"a_{n}" for n in SIDE_FEATURES] + [f"b_{n}" for n in SIDE_FEATURES] + [f"diff_{n}" for n in SIDE_FEATURES] + list(SYMMETRIC_FEATURES)
