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
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

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
    info = fs.get_file_info(path)
    if info.type.name == "Directory":
        return "parquet"
    if info.type.name == "File" and info.size >= 8:
        with fs.open_input_file(path) as handle:
            if handle.read(4) == b"PAR1":  # Parquet without its extension
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
            json_schema, rows = _json_schema(uri)
            source = BattleSource(uri, fmt, json_schema, rows)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise PrefscaleError(f"cannot read {uri} as {fmt}: {str(exc).splitlines()[0]}; check the file is complete and in that format") from None
    needed = ("question_id", *ARENA_COLUMNS) if source.is_arena else schema.REQUIRED_COLUMNS
    missing = [c for c in needed if c not in source.schema.names]
    if missing and {"instruction", "generator", "output"} <= set(source.schema.names):
        raise PrefscaleError(f"{uri} is a long table (instruction, generator, output), not battles; make battles from it first: "
                             f"prefscale data pairs {uri} --out battles.parquet")
    if missing:
        raise PrefscaleError(
            f"{uri} lacks column(s) {', '.join(missing)}; a battle needs {', '.join(schema.REQUIRED_COLUMNS)} "
            f"(Kaggle layout) or question_id, conversation_a, conversation_b, winner (Arena layout)"
        )
    return source


def _parquet_dataset(uri: str) -> pads.Dataset:
    """One dataset over a file or a directory of parts; parts whose schemas differ are unified by
    column name (a column missing from a part reads as null there), never read as the first part's."""
    fs, path = resolve(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if len(dataset.files) < 2:
        return dataset
    unified = None
    for part in dataset.files:
        part_schema = pq.read_schema(part, filesystem=fs)  # the footer only
        try:
            unified = part_schema if unified is None else pa.unify_schemas([unified, part_schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise PrefscaleError(f"{part} has columns whose types clash with the other parts of {uri} ({str(exc).splitlines()[0]}); "
                                 f"rewrite that file with the same column types") from None
    return pads.dataset(path, filesystem=fs, format="parquet", schema=unified)


def _raw_batches(source: BattleSource, batch_rows: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    try:
        if source.format == "parquet":
            yield from _parquet_dataset(source.uri).to_batches(columns=columns, batch_size=batch_rows)
        elif source.format == "csv":
            yield from _csv_batches(source, columns)
        else:
            yield from _json_batches(source, batch_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrefscaleError(f"{source.uri} is unreadable part-way: {str(exc).splitlines()[0]}; re-export or re-download it") from None


def _csv_header(uri: str) -> list[str]:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as raw:
        first = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="").readline()  # a byte-order mark is not a column name
    return next(csv.reader([first]), [])


def _csv_schema(uri: str) -> pa.Schema:
    return pa.schema([*((name, pa.string()) for name in _csv_header(uri)), (schema.READ_ERROR, pa.string())])


def _csv_batches(source: BattleSource, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """Every CSV column is read as bytes and decoded here: type inference per block would fail
    on a bad cell deep in the file, and one invalid UTF-8 byte would fail the whole block, while
    validation can reject exactly that row (`bad_text`, with its row number)."""
    fs, path = resolve(source.uri)
    names = [n for n in source.schema.names if n != schema.READ_ERROR]
    convert = pacsv.ConvertOptions(
        column_types={n: pa.binary() for n in names},
        include_columns=[c for c in columns if c != schema.READ_ERROR] if columns else None,
        strings_can_be_null=True,
        null_values=[""],
    )
    parse = pacsv.ParseOptions(newlines_in_values=True)
    first_row = 1
    with fs.open_input_stream(path) as stream:
        reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=8 << 20), parse_options=parse, convert_options=convert)
        for batch in reader:
            yield _decoded(batch, first_row)
            first_row += batch.num_rows


def _decoded(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
    """Binary CSV columns as text; a cell that is not UTF-8 becomes null and its row gets a read error."""
    errors: list[str | None] = [None] * batch.num_rows
    arrays = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            arrays.append(column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = []
        for k, raw in enumerate(column.to_pylist()):
            try:
                values.append(None if raw is None else raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(None)
                errors[k] = errors[k] or f"bad_text|row {first_row + k}: column {name} is not UTF-8 (byte {exc.start}); re-save the file as UTF-8"
        arrays.append(pa.array(values, pa.string()))
    return pa.RecordBatch.from_arrays([*arrays, pa.array(errors, pa.string())], names=[*batch.schema.names, schema.READ_ERROR])


def _json_values(uri: str) -> Iterator[dict[str, Any]]:
    """Each JSON Lines line (or JSON array element) as a dict. A line that is not a JSON object
    becomes a row holding only its read error, with its true line number; a text value that is
    not valid Unicode is kept escaped and its row gets a read error (`bad_text`)."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        head = stream.read(64).lstrip()
    if head.startswith(b"["):  # one JSON value: it parses whole or not at all
        with fs.open_input_stream(path) as stream:
            values = json.loads(stream.read().decode("utf-8", errors="surrogateescape"))
        for number, value in enumerate(values, start=1):
            yield _scrubbed(value, f"element {number}") if isinstance(value, dict) else _unreadable(f"element {number} is not an object")
        return
    with fs.open_input_stream(path) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _unreadable(f"line {number}: {exc.msg} at column {exc.colno}; fix or remove that line")
                continue
            yield _scrubbed(value, f"line {number}") if isinstance(value, dict) else _unreadable(f"line {number} is not a JSON object")


def _unreadable(detail: str) -> dict[str, Any]:
    return {schema.READ_ERROR: f"unparseable_line|{detail}"}


def _scrubbed(row: dict[str, Any], where: str) -> dict[str, Any]:
    bad: list[str] = []

    def scrub(value: Any, key: str) -> Any:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
                return value
            except UnicodeEncodeError:
                bad.append(key)
                return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
        if isinstance(value, list):
            return [scrub(v, key) for v in value]
        if isinstance(value, dict):
            return {k: scrub(v, key) for k, v in value.items()}
        return value

    clean = {key: scrub(value, key) for key, value in row.items()}
    if bad:
        clean[schema.READ_ERROR] = f"bad_text|{where}: {', '.join(dict.fromkeys(bad))} holds a lone surrogate or bytes that are not UTF-8"
    return clean


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (list, dict)):
        return "nested"
    return {int: "int", float: "float", str: "str"}.get(type(value), "str")


def _arrow_type(kinds: set[str], samples: list[Any]) -> pa.DataType:
    """One type per JSON key over the whole file; values of clashing kinds are read as JSON text."""
    kinds = kinds - {"null"}
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"} and kinds:
        return pa.float64()
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"nested"}:
        try:
            return pa.array(samples).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.string()
    return pa.string()


def _json_schema(uri: str) -> tuple[pa.Schema, int]:
    """A first pass over the file: every key's type (so every batch shares one schema) and the row count."""
    kinds: dict[str, set[str]] = {}
    samples: dict[str, list[Any]] = {}
    rows = 0
    for row in _json_values(uri):
        rows += 1
        for key, value in row.items():
            kinds.setdefault(key, set()).add(_kind(value))
            if isinstance(value, (list, dict)) and len(samples.setdefault(key, [])) < 256:
                samples[key].append(value)
    fields = [(key, _arrow_type(found, samples.get(key, []))) for key, found in kinds.items() if key != schema.READ_ERROR]
    return pa.schema([*fields, (schema.READ_ERROR, pa.string())]), rows


def _conformed(row: dict[str, Any], types: dict[str, pa.DataType]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if types.get(key) == pa.string() and value is not None and not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)  # a clashing kind, read as its JSON text
        out[key] = value
    return out


def _json_batches(source: BattleSource, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """JSON rows in batches of the source's schema; a row whose nested value does not fit its
    column's type gets a read error instead of failing the batch."""
    types = dict(zip(source.schema.names, source.schema.types, strict=True))
    rows: list[dict[str, Any]] = []

    def batch() -> pa.RecordBatch:
        try:
            return pa.RecordBatch.from_pylist(rows, schema=source.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            fitted = []
            for row in rows:
                try:
                    pa.RecordBatch.from_pylist([row], schema=source.schema)
                    fitted.append(row)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    fitted.append({schema.READ_ERROR: "wrong_type|a nested value has a different structure from the rest of its column"})
            return pa.RecordBatch.from_pylist(fitted, schema=source.schema)

    for row in _json_values(source.uri):
        rows.append(_conformed(row, types))
        if len(rows) == batch_rows:
            yield batch()
            rows = []
    if rows:
        yield batch()


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
