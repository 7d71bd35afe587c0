"""Stream raw battles from Kaggle CSV or Parquet, or from the Arena conversation format.

Readers yield Arrow record batches with the raw values still unchecked (validation decides
what is clean), so a malformed cell becomes a reject with a reason instead of a crash.
Big files are never loaded whole: Parquet and CSV stream block by block.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.json as pajson

from prefscale.data import schema
from prefscale.data.kaggle_json import encode_turns
from prefscale.errors import PrefscaleError
from prefscale.io import require_file, resolve

ARENA_COLUMNS = ("conversation_a", "conversation_b")
ARENA_WINNERS = {
    "model_a": (1.0, 0.0, 0.0),
    "model_b": (0.0, 1.0, 0.0),
    "tie": (0.0, 0.0, 1.0),
    "tie (bothbad)": (0.0, 0.0, 1.0),
}
# An unknown winner string must not turn a labeled battle into an unlabeled one: it gets an
# impossible label so validation rejects it with the original row.
UNKNOWN_WINNER = (-1.0, -1.0, -1.0)
DEFAULT_BATCH_ROWS = 4096


@dataclass(frozen=True)
class BattleSource:
    """An input file: where it is, its format, and its raw schema."""

    uri: str
    format: str  # "parquet" | "csv" | "json"
    schema: pa.Schema
    num_rows: int | None

    @property
    def is_arena(self) -> bool:
        return all(c in self.schema.names for c in ARENA_COLUMNS)

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Raw batches in the Kaggle layout (Arena rows are converted on the fly)."""
        raw = _raw_batches(self, batch_rows, columns)
        if self.is_arena:
            return (arena_to_kaggle(b) for b in raw)
        return raw


def detect_format(uri: str) -> str:
    name = uri.rstrip("/").lower()
    for suffix, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".jsonl", "json"), (".ndjson", "json"), (".json", "json")):
        if name.endswith(suffix):
            return fmt
    fs, path = resolve(uri)
    if fs.get_file_info(path).type.name == "Directory":
        return "parquet"
    raise PrefscaleError(f"unknown input format for {uri}; use a .parquet, .csv, .jsonl or .json file")


def open_battles(uri: str | os.PathLike[str]) -> BattleSource:
    """Open an input without reading it; checks it exists and has the columns a battle needs."""
    uri = os.fspath(uri)
    require_file(uri)
    fmt = detect_format(uri)
    try:
        if fmt == "parquet":
            ds = _parquet_dataset(uri)
            source = BattleSource(uri, fmt, ds.schema, ds.count_rows())
        elif fmt == "csv":
            source = BattleSource(uri, fmt, _csv_schema(uri), None)
        else:
            first = next(_json_batches(uri, 1), None)
            source = BattleSource(uri, fmt, first.schema if first is not None else pa.schema([]), None)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise PrefscaleError(f"cannot read {uri} as {fmt}: {str(exc).splitlines()[0]}; check the file is complete and in that format") from None
    needed = ("question_id", *ARENA_COLUMNS) if source.is_arena else schema.REQUIRED_COLUMNS
    missing = [c for c in needed if c not in source.schema.names]
    if missing:
        raise PrefscaleError(
            f"{uri} lacks column(s) {', '.join(missing)}; a battle needs {', '.join(schema.REQUIRED_COLUMNS)} "
            f"(Kaggle layout) or question_id, conversation_a, conversation_b, winner (Arena layout)"
        )
    return source


def _parquet_dataset(uri: str) -> pads.Dataset:
    fs, path = resolve(uri)
    return pads.dataset(path, filesystem=fs, format="parquet")


def _raw_batches(source: BattleSource, batch_rows: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    try:
        if source.format == "parquet":
            yield from _parquet_dataset(source.uri).to_batches(columns=columns, batch_size=batch_rows)
        elif source.format == "csv":
            yield from _csv_batches(source, columns)
        else:
            yield from _json_batches(source.uri, batch_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrefscaleError(f"{source.uri} is unreadable part-way: {str(exc).splitlines()[0]}; re-export or re-download it") from None


def _csv_header(uri: str) -> list[str]:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as raw:
        first = io.TextIOWrapper(raw, encoding="utf-8", newline="").readline()
    return next(csv.reader([first]), [])


def _csv_schema(uri: str) -> pa.Schema:
    return pa.schema([(name, pa.string()) for name in _csv_header(uri)])


def _csv_batches(source: BattleSource, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """Every CSV column is read as text: type inference per block would fail on a bad cell
    deep in the file, while validation can reject exactly that row."""
    fs, path = resolve(source.uri)
    names = source.schema.names
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        include_columns=columns,
        strings_can_be_null=True,
        null_values=[""],
    )
    parse = pacsv.ParseOptions(newlines_in_values=True)
    with fs.open_input_stream(path) as stream:
        reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=8 << 20), parse_options=parse, convert_options=convert)
        yield from reader


def _json_batches(uri: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """JSON Lines stream through pyarrow; a single JSON array (the Arena dumps) must be parsed whole."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        head = stream.read(64).lstrip()
    if head.startswith(b"["):
        with fs.open_input_stream(path) as stream:
            rows = json.load(stream)
        for start in range(0, len(rows), batch_rows):
            yield pa.RecordBatch.from_pylist(rows[start : start + batch_rows])
        return
    with fs.open_input_stream(path) as stream:
        yield from pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=8 << 20))


def stable_id(*parts: str) -> int:
    """A non-negative int64 from content, identical on every machine and run."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def _role_turns(conversation: list[dict] | None, role: str) -> list[str | None]:
    return [m.get("content") for m in conversation or [] if m.get("role") == role]


def arena_to_kaggle(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Convert Arena rows (conversation lists, winner string) to the Kaggle layout.

    The prompt is the user turns of conversation A; each response is its side's assistant
    turns. Other columns pass through, so a reject keeps everything the source had.
    """
    rows = batch.to_pylist()
    out: dict[str, list] = {c: [] for c in (schema.ID, *schema.TEXT_COLUMNS, *schema.LABEL_COLUMNS)}
    for row in rows:
        conv_a, conv_b = row.get("conversation_a"), row.get("conversation_b")
        qid = row.get("id", row.get("question_id"))
        out[schema.ID].append(qid if isinstance(qid, int) else stable_id(str(qid)))
        out[schema.PROMPT].append(encode_turns(_role_turns(conv_a, "user")))
        out[schema.RESPONSE_A].append(encode_turns(_role_turns(conv_a, "assistant")))
        out[schema.RESPONSE_B].append(encode_turns(_role_turns(conv_b, "assistant")))
        winner = row.get("winner")
        label = (None, None, None) if winner is None else ARENA_WINNERS.get(str(winner).strip().lower(), UNKNOWN_WINNER)
        for column, value in zip(schema.LABEL_COLUMNS, label, strict=True):
            out[column].append(value)
    keep = [n for n in batch.schema.names if n not in (*ARENA_COLUMNS, schema.ID, *out)]
    arrays = {**out, **{n: batch.column(n) for n in keep}}
    return pa.RecordBatch.from_pydict(arrays)
