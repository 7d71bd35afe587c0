"""Filesystem access through pyarrow (local paths, file://, s3://, gs://) and atomic outputs.

Every output is written to a temporary name beside its destination and renamed into place
only when complete, so a crash never leaves a half-written file that a later stage would read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from prefscale.errors import PrefscaleError


def resolve(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path) for a local path or any URI pyarrow understands."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrefscaleError(f"cannot open {text}: {exc}; check the URI scheme and credentials") from None


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers run in their own directories); URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def exists(uri: str | os.PathLike[str]) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def listdir(uri: str | os.PathLike[str]) -> list[str]:
    """Names in a directory, local or on an object store; none when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(os.path.basename(info.path.rstrip("/")) for info in fs.get_file_info(pafs.FileSelector(path)))


def remove(uri: str | os.PathLike[str]) -> None:
    """Delete a file or a directory tree, local or on an object store; nothing there is fine."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def require_file(uri: str | os.PathLike[str]) -> None:
    """Fail early, naming the path, rather than deep inside a reader."""
    if not exists(uri):
        raise PrefscaleError(f"input not found: {os.fspath(uri)}; check the path (relative paths start at the current directory)")


@contextlib.contextmanager
def atomic_path(uri: str | os.PathLike[str]) -> Iterator[tuple[pafs.FileSystem, str]]:
    """Yield a temporary (fs, path) beside ``uri``; move it onto ``uri`` only on success."""
    fs, path = resolve(uri)
    parent = os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield fs, tmp
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            _fsync_file(tmp)  # the bytes reach the disk before the rename publishes them
        fs.move(tmp, path)
        if local:
            _fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(OSError, FileNotFoundError):
            fs.delete_file(tmp)
        raise


COMPLETE = "_COMPLETE"  # written last into a directory on an object store, which has no rename: its presence means complete


def finished(uri: str) -> bool:
    """Whether a directory ``atomic_dir`` wrote is complete (local: it exists; object store: its marker does)."""
    return exists(f"{uri.rstrip('/')}/{COMPLETE}") if "://" in uri else exists(uri)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary local directory that replaces ``path`` only when complete. On an object
    store the files are uploaded once complete and a ``_COMPLETE`` marker last (``finished``)."""
    if "://" in path:
        with _uploaded_dir(path) as staged:
            yield staged
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        if not os.path.exists(path):
            os.rename(tmp, path)
        elif _exchange(tmp, path):  # one atomic swap: path always holds a whole copy
            shutil.rmtree(tmp)  # now the old copy
        else:  # no renameat2 here: the old copy is set aside (not deleted) until the new one is in place
            aside = f"{tmp}.old"
            os.rename(path, aside)
            os.rename(tmp, path)
            shutil.rmtree(aside)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _uploaded_dir(uri: str) -> Iterator[str]:
    import tempfile

    staged = tempfile.mkdtemp(prefix="prefscale-upload-")
    try:
        yield staged
        fs, path = resolve(uri)
        remove(f"{uri.rstrip('/')}/{COMPLETE}")  # readers see no complete copy from here until the new one is
        remove(uri)
        pafs.copy_files(staged, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        with fs.open_output_stream(f"{path}/{COMPLETE}") as out:
            out.write(uuid.uuid4().hex.encode())
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def local_copy(uri: str) -> str:
    """A local path for a directory ``atomic_dir`` wrote: itself when local; from an object store, a
    copy in this node's cache, keyed by the copy's completion marker (a rewritten directory is fetched anew)."""
    if "://" not in uri:
        return uri
    import hashlib
    import tempfile

    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(f"{path}/{COMPLETE}") as marker:
            version = marker.read().decode()
    except (FileNotFoundError, OSError):
        raise PrefscaleError(f"{uri} is not a complete directory (no {COMPLETE} marker); rerun the stage that writes it") from None
    cache = os.path.join(os.path.expanduser("~"), ".cache", "prefscale", "remote", hashlib.sha256(f"{uri}@{version}".encode()).hexdigest()[:24])
    if not os.path.isdir(cache):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        staged = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(cache))
        pafs.copy_files(path, staged, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        with contextlib.suppress(OSError):  # another process on this node fetched it first: keep theirs
            os.rename(staged, cache)
        shutil.rmtree(staged, ignore_errors=True)
    return cache


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (a crash after it keeps the new entry)."""
    with contextlib.suppress(OSError):
        _fsync_file(path)


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(os.path.join(folder, name))


class ParquetSink:
    """A streaming Parquet writer whose file appears atomically on ``close()``.

    The schema is taken from the first batch, so callers need not know it in advance;
    an empty sink still writes a valid file with ``empty_schema``.
    """

    def __init__(self, uri: str | os.PathLike[str], empty_schema: pa.Schema | None = None, row_group_rows: int | None = None,
                 **writer_options: Any) -> None:
        self.uri = os.fspath(uri)
        self.rows = 0
        self._row_group_rows = row_group_rows
        self._empty_schema = empty_schema
        self._options = {"compression": "zstd", **writer_options}
        self._ctx = atomic_path(self.uri)
        self._fs, self._tmp = self._ctx.__enter__()
        self._writer: pq.ParquetWriter | None = None

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, data.schema, filesystem=self._fs, **self._options)
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        if table.num_rows:
            self._writer.write_table(table.cast(self._writer.schema), row_group_size=self._row_group_rows)
            self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None:
            if self._empty_schema is None:
                raise ValueError("ParquetSink closed before any write and without empty_schema")
            self._writer = pq.ParquetWriter(self._tmp, self._empty_schema, filesystem=self._fs, **self._options)
        self._writer.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        with contextlib.suppress(OSError):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_table(table: pa.Table, uri: str | os.PathLike[str]) -> None:
    with ParquetSink(uri, empty_schema=table.schema) as sink:
        sink.write(table)


def write_bytes(data: bytes, uri: str | os.PathLike[str]) -> None:
    with atomic_path(uri) as (fs, tmp), fs.open_output_stream(tmp) as out:
        out.write(data)


def write_json(obj: Any, uri: str | os.PathLike[str]) -> None:
    write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), uri)


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    require_file(uri)
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_json(uri: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(uri))


def read_present_columns(uri: str | os.PathLike[str], wanted: list[str]) -> pa.Table:
    """The ``wanted`` columns the Parquet file has (read from its schema first), never the others."""
    require_file(uri)
    fs, path = resolve(uri)
    names = set(pads.dataset(path, filesystem=fs, format="parquet").schema.names)
    return read_table(uri, columns=[c for c in wanted if c in names])


def read_head(uri: str | os.PathLike[str], rows: int, columns: list[str] | None = None) -> pa.Table:
    """The first ``rows`` rows, reading only the record batches they are in (not the whole file)."""
    fs, path = resolve(uri)
    batches, have = [], 0
    for batch in pads.dataset(path, filesystem=fs, format="parquet").to_batches(columns=columns, batch_size=8192, batch_readahead=0,
                                                                               fragment_readahead=0):
        batches.append(batch.slice(0, rows - have))
        have += batches[-1].num_rows
        if have >= rows:
            break
    if not batches:
        return read_table(uri, columns=columns).slice(0, 0)
    return pa.Table.from_batches(batches)


def read_table(uri: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    require_file(uri)
    fs, path = resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrefscaleError(f"cannot read Parquet {os.fspath(uri)}: {exc}; is it a Parquet file?") from None
