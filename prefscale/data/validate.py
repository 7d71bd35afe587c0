"""Split raw battles into clean rows and rejects, each reject carrying a reason code.

Every input row ends up in exactly one of the two outputs (clean + rejected = input), so
nothing is ever dropped silently. Checks run per row in plain Python: the JSON cells must be
parsed anyway, and this keeps each rule readable and each reason exact.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from prefscale.config import ValidationConfig
from prefscale.data import schema
from prefscale.data.kaggle_json import (
    TurnsDecodeError,
    decode_turns,
    encode_turns,
    turns_text,
)

# Reason codes, in the order rows are checked. Documented in README.md.
REASONS = {
    "unparseable_line": "a JSON Lines line is not a JSON object (the detail gives its line number)",
    "missing_value": "id or a text cell is null",
    "wrong_type": "a value has the wrong type (id not an integer, text not a string, label not a number)",
    "unparseable_json": "a text cell is not valid JSON",
    "bad_turns": "a text cell is JSON but not a non-empty list of strings or nulls",
    "bad_text": "text holds a lone UTF-16 surrogate (half an emoji) or bytes that are not UTF-8",
    "turn_mismatch": "prompt, response_a and response_b have different turn counts",
    "empty_text": "prompt and both responses are all empty",
    "too_long": "the battle's text is over the size limit",
    "bad_label": "labels are partly missing, outside [0, 1] or do not sum to 1",
    "bad_ties": "the ties column is not 'allowed' or 'none'",
    "tie_in_forced_choice": "labeled tie, but its source's protocol has no tie option (data.ties)",
    "duplicate_id": "an earlier clean row has the same id",
}
LABEL_TOLERANCE = 1e-3


@dataclass
class ValidationStats:
    rows: int = 0
    clean: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "clean": self.clean,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "flags": dict(sorted(self.flags.items())),
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else None,
        }


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def coerce_id(value: Any) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise Rejected("missing_value", "id is null")
    if isinstance(value, bool):
        raise Rejected("wrong_type", f"id must be an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    else:
        raise Rejected("wrong_type", f"id must be an integer, got {str(value)[:40]!r}")
    if not -(2**63) <= number < 2**63:
        raise Rejected("wrong_type", f"id {number} does not fit in int64")
    return number


def _coerce_number(column: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise Rejected("wrong_type", f"{column} must be a number, got {str(value)[:40]!r}")


def _check_distribution(columns: tuple[str, ...], values: list[float | None]) -> tuple[float, ...] | None:
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise Rejected("bad_label", f"{', '.join(columns)} are partly missing: {values}")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise Rejected("bad_label", f"{', '.join(columns)} must lie in [0, 1], got {values}")
    total = sum(values)
    if abs(total - 1.0) > LABEL_TOLERANCE:
        raise Rejected("bad_label", f"{', '.join(columns)} must sum to 1 (one-hot or probabilities), got {values}")
    return tuple(v / total for v in values)


def _text(column: str, value: Any, lenient: bool, flags: list[str]) -> tuple[list[str | None], str]:
    if value is None:
        raise Rejected("missing_value", f"{column} is null")
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{column} must be a string, got {type(value).__name__}")
    try:
        turns = decode_turns(value)
    except TurnsDecodeError as exc:
        if lenient and exc.reason == "unparseable_json":
            flags.append(f"json_salvaged:{column}")
            return [value], encode_turns([value])
        raise Rejected(exc.reason, f"{column}: {exc}") from None
    for number, turn in enumerate(turns, start=1):
        if turn and not is_encodable(turn):
            raise Rejected("bad_text", f"{column} turn {number} holds a lone surrogate (\\ud800-\\udfff); fix the escape or drop the row")
    return turns, value


def is_encodable(text: str) -> bool:
    """Whether text can be written as UTF-8 (a JSON escape like \\ud83d alone decodes to a lone surrogate, which cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def row_protocol(row: dict[str, Any], options: ValidationConfig) -> Any:
    """The row's label protocol: its own ``ties`` value, else its source's in the config (unchecked here)."""
    return row.get(schema.TIES) or options.protocol(row.get(schema.SOURCE) or schema.DEFAULT_SOURCE)


def check_row(row: dict[str, Any], options: ValidationConfig, predicting: bool = False) -> dict[str, Any]:
    """Return the clean core fields of one raw row, or raise Rejected. ``predicting``: a battle to
    predict is never rejected for its label or its length: an over-long one is flagged ``too_long``
    (the formatter cuts it to the token budget, as in training), and a tie label its protocol
    forbids is dropped and flagged ``unscored_label`` (a label never changes a prediction)."""
    if error := row.get(schema.READ_ERROR):
        reason, _, detail = error.partition("|")
        raise Rejected(reason, detail)
    battle_id = coerce_id(row.get(schema.ID))
    flags: list[str] = []  # recomputed here; flags from earlier stages (e.g. 'pseudolabel') are kept below
    turns, cells = {}, {}
    for column in schema.TEXT_COLUMNS:
        turns[column], cells[column] = _text(column, row.get(column), options.lenient_json, flags)
    if any(f.startswith("json_salvaged") for f in flags):
        # A salvaged cell is one raw turn; fold the others to one turn each so they still align.
        for column in schema.TEXT_COLUMNS:
            if len(turns[column]) != 1:
                turns[column] = ["\n\n".join(turns_text(turns[column]))]
                cells[column] = encode_turns(turns[column])
    counts = {c: len(turns[c]) for c in schema.TEXT_COLUMNS}
    if len(set(counts.values())) != 1:
        raise Rejected("turn_mismatch", f"turn counts differ: {counts}")
    texts = {c: turns_text(turns[c]) for c in schema.TEXT_COLUMNS}
    if not any(t.strip() for c in schema.TEXT_COLUMNS for t in texts[c]):
        raise Rejected("empty_text", "prompt and both responses are empty")
    size = sum(len(cells[c]) for c in schema.TEXT_COLUMNS)
    if size > options.max_chars:
        if not predicting:
            raise Rejected("too_long", f"{size} characters > limit {options.max_chars}; raise data.max_chars to keep it")
        flags.append("too_long")
    for column in (schema.MODEL_A, schema.MODEL_B):
        if row.get(column) is not None and not isinstance(row[column], str):
            raise Rejected("wrong_type", f"{column} must be a string, got {type(row[column]).__name__}")
    hard = _check_distribution(schema.LABEL_COLUMNS, [_coerce_number(c, row.get(c)) for c in schema.LABEL_COLUMNS])
    soft = _check_distribution(schema.SOFT_LABEL_COLUMNS, [_coerce_number(c, row.get(c)) for c in schema.SOFT_LABEL_COLUMNS])
    if soft is not None:
        flags.append("soft_label")
    label = soft if soft is not None else hard
    ties = row_protocol(row, options)
    if ties not in schema.TIE_PROTOCOLS:
        raise Rejected("bad_ties", f"ties must be one of {', '.join(schema.TIE_PROTOCOLS)}, got {str(ties)[:40]!r}")
    if ties == "none" and label is not None and label[2] > LABEL_TOLERANCE:
        if not predicting:
            raise Rejected("tie_in_forced_choice", f"labeled tie ({label[2]:.2f}) under protocol 'none'; fix the label or data.ties")
        label = None
        flags.append("unscored_label")
    a_text, b_text = "".join(texts[schema.RESPONSE_A]).strip(), "".join(texts[schema.RESPONSE_B]).strip()
    flags += [name for name, on in (("empty_a", not a_text), ("empty_b", not b_text), ("identical", a_text == b_text)) if on]
    return {
        schema.ID: battle_id,
        **cells,
        schema.MODEL_A: row.get(schema.MODEL_A),
        schema.MODEL_B: row.get(schema.MODEL_B),
        **dict(zip(schema.LABEL_COLUMNS, label or (None, None, None), strict=True)),
        schema.FLAGS: ",".join(dict.fromkeys([*_earlier_flags(row.get(schema.FLAGS)), *flags])) or None,
        schema.TIES: ties,
    }


def _earlier_flags(value: Any) -> list[str]:
    kept = {"pseudolabel", "merged_votes"}
    return [f for f in str(value).split(",") if f.split(":")[0] in kept] if isinstance(value, str) else []


class Validator:
    """Validates a stream of raw batches; remembers ids across batches to catch duplicates."""

    def __init__(self, options: ValidationConfig = ValidationConfig(), predicting: bool = False) -> None:
        self.options = options
        self.predicting = predicting
        self.stats = ValidationStats()
        self._seen_ids: set[int] = set()

    def validate_batch(self, batch: pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
        """Return (clean, rejects); rejects keep every original column plus reason and detail."""
        started = time.perf_counter()
        rows = batch.to_pylist()
        clean_rows, clean_index, reject_index, reasons, details = [], [], [], [], []
        for index, row in enumerate(rows):
            try:
                clean = check_row(row, self.options, self.predicting)
                if clean[schema.ID] in self._seen_ids:
                    raise Rejected("duplicate_id", f"id {clean[schema.ID]} already seen")
            except Rejected as rejected:
                reject_index.append(index)
                reasons.append(rejected.reason)
                details.append(rejected.detail[:500])
                continue
            self._seen_ids.add(clean[schema.ID])
            clean_rows.append(clean)
            clean_index.append(index)
        clean_table = self._clean_table(batch, clean_rows, clean_index)
        rejects = pa.Table.from_batches([batch.take(pa.array(reject_index, pa.int64()))]).append_column(
            schema.REJECT_REASON, pa.array(reasons, pa.string())
        ).append_column(schema.REJECT_DETAIL, pa.array(details, pa.string()))
        self._count(clean_table, reasons, len(rows), time.perf_counter() - started)
        return clean_table, rejects

    def _clean_table(self, batch: pa.RecordBatch, rows: list[dict], index: list[int]) -> pa.Table:
        core = pa.Table.from_pylist(rows, schema=schema.BATTLE_SCHEMA)
        extras = [n for n in batch.schema.names if n not in schema.CORE_COLUMNS and n != schema.READ_ERROR]
        taken = batch.select(extras).take(pa.array(index, pa.int64())) if extras else None
        for name in extras:
            core = core.append_column(name, taken.column(name))
        return core

    def _count(self, clean: pa.Table, reasons: list[str], rows: int, seconds: float) -> None:
        self.stats.rows += rows
        self.stats.clean += clean.num_rows
        self.stats.rejected += len(reasons)
        self.stats.reasons.update(reasons)
        for flags in clean.column(schema.FLAGS).to_pylist():
            self.stats.flags.update(f.split(":")[0] for f in (flags or "").split(",") if f)
        self.stats.seconds += seconds

    def validate(self, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[pa.Table, pa.Table]]:
        for batch in batches:
            yield self.validate_batch(batch)
