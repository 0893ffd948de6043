"""The Arrow IPC shards: reading what Spark wrote, and writing them from plain Arrow.

`write_shards` is for producers without Spark (a pyarrow table, a benchmark on a GPU
machine with no JVM); it writes the same files and manifest as `bridge.export_table`.

Local shards are memory-mapped, so a rank touches only the pages it reads and several
DataLoader workers share one copy in the page cache. A shard on an object store (s3a://,
gs://, hdfs://, ... through `pyarrow.fs`) is fetched whole in one read into memory
(`storage.read_whole`), not by the many small ranged reads of a memory map, an IPC footer
walk or an unbuffered stream, and the next files a rank will want are fetched in the
background while it reads (`ShardReader.read_ahead`): a rank holds its remote files in
memory as the page cache holds local ones. Every conversion is column-wise: no Python
runs per row.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from sparkml_ext.deep.manifest import MANIFEST_NAME, Manifest, ShardFile
from sparkml_ext.storage import described, filesystem, join, read_whole, write_whole

READ_AHEAD_FILES = 4  # remote files fetched at once, ahead of the one being read


def _vanished(what: str, path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} {path} does not exist: the Arrow shards vanished after the manifest was "
        "written (cleaned up, or a path this process cannot see); re-export them from Spark"
    )


def read_manifest(location: str) -> Manifest:
    """Load `_manifest.json` from its path or from the folder/URI that holds it."""
    fs, path = filesystem(location)
    if os.path.basename(path) != MANIFEST_NAME:
        path = f"{path.rstrip('/')}/{MANIFEST_NAME}"
    try:
        with fs.open_input_stream(path) as f:
            return Manifest.from_json(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise _vanished("manifest", path) from None


def write_shards(
    root: str | os.PathLike,
    table: pa.Table,
    files: int = 1,
    *,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    label: str | None = None,
    batch_rows: int = 65536,
    source: dict | None = None,
) -> str:
    """Split `table` into `files` IPC files of `batch_rows`-row batches under `root` (a
    path or any URI `storage.filesystem` opens); the manifest's path, written last."""
    root = str(root)
    fs, base = filesystem(root)
    fs.create_dir(base, recursive=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    shards = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        name = f"part-{i:05d}.arrow"
        with fs.open_output_stream(f"{base}/{name}") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                for batch in table.slice(lo, hi - lo).to_batches(max_chunksize=batch_rows):
                    writer.write_batch(batch)
            size = sink.tell()
        shards.append(ShardFile(name, int(hi - lo), size))
    manifest = Manifest(
        root if "://" in root else base,
        tuple(shards),
        {f.name: str(f.type) for f in table.schema},
        tuple(numeric),
        tuple(categorical),
        label,
        source or {"table": "pyarrow"},
    )
    path = join(root, MANIFEST_NAME)
    write_whole(path, manifest.to_json().encode())
    return path


class ShardReader:
    """Opens the shard files under one manifest root, keeping the last few open.

    Not picklable on purpose: each DataLoader worker makes its own (memory maps, file
    handles and fetching threads do not cross process boundaries).
    """

    def __init__(self, root: str, max_open: int = 64):
        self._uri = root.rstrip("/")
        self._fs, self._root = filesystem(root)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self._max_open = max_open
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()
        self._views: OrderedDict[tuple, tuple[np.ndarray, list[list[np.ndarray]]]] = OrderedDict()
        self._order: list[str] = []
        self._fetches: dict[str, Future[pa.Table]] = {}
        self._fetcher = None if self._local else ThreadPoolExecutor(READ_AHEAD_FILES)

    def read_ahead(self, paths: Sequence[str]) -> None:
        """The order in which files will be wanted: a remote reader fetches the next
        `READ_AHEAD_FILES` in the background whenever it starts on one (local: no-op)."""
        self._order = list(dict.fromkeys(paths))

    def table(self, path: str) -> pa.Table:
        """The whole shard as a table; zero-copy over a memory map for local files."""
        if path in self._tables:
            self._tables.move_to_end(path)
            return self._tables[path]
        if self._local:
            table = self._read(path)
        else:  # a fetch that failed is not kept: the next call tries again
            table = (self._fetches.pop(path, None) or self._fetcher.submit(self._read, path)).result()
            at = self._order.index(path) + 1 if path in self._order else len(self._order)
            for upcoming in self._order[at : at + READ_AHEAD_FILES]:
                if upcoming not in self._tables and upcoming not in self._fetches:
                    self._fetches[upcoming] = self._fetcher.submit(self._read, upcoming)
        self._tables[path] = table
        if len(self._tables) > self._max_open:
            self._tables.popitem(last=False)
        return table

    def _read(self, path: str) -> pa.Table:
        full = f"{self._root.rstrip('/')}/{path}"
        try:
            if self._local:
                return pa.ipc.open_file(pa.memory_map(full)).read_all()
            return pa.ipc.open_file(read_whole(f"{self._uri}/{path}")).read_all()
        except FileNotFoundError:
            raise _vanished("shard file", full) from None
        except OSError as err:  # the store went away mid-read: say which store and object
            raise OSError(f"cannot read the shard file {described(f'{self._uri}/{path}')}: {err}"
                          ) from err

    def views(
        self, path: str, columns: Sequence[tuple[str, int | None]]
    ) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """(row bounds of the shard's record batches, each column's batches as numpy).

        Made once per file and kept as long as the file stays open, so that reading a
        slice costs numpy slicing only, not an Arrow-to-numpy conversion per column.
        """
        key = (path, tuple(columns))
        if key in self._views:
            self._views.move_to_end(key)
            return self._views[key]
        table = self.table(path)
        first = table.column(columns[0][0]) if columns else None
        if first is not None and any(
            [len(c) for c in table.column(name).chunks] != [len(c) for c in first.chunks]
            for name, _ in columns
        ):
            table = table.combine_chunks()  # IPC files never need this: batches share rows
            first = table.column(columns[0][0])
        bounds = np.cumsum([0] + [len(c) for c in first.chunks]) if first is not None else None
        view = (bounds, [column_parts(table.column(name), name, width) for name, width in columns])
        self._views[key] = view
        if len(self._views) > self._max_open:
            self._views.popitem(last=False)
        return view


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def check_column(name: str, t: pa.DataType, role: str) -> None:
    """Raise ValueError unless a column of type `t` can feed `role` (numeric/categorical/label)."""
    if role == "categorical":
        ok = pa.types.is_integer(t)
        want = "integer ids (encode categories to int in Spark; 0 = unknown)"
    elif role == "numeric":
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
        ok = _is_number(t) or (is_list and _is_number(t.value_type))
        want = "int/float/bool, or a (fixed-size) list of them"
    else:
        ok = _is_number(t)
        want = "int/float/bool"
    if not ok:
        raise ValueError(
            f"{role} column {name!r} has Arrow type {t}, which cannot become a tensor; want {want}"
        )


def _flat_numpy(arr: pa.Array) -> np.ndarray:
    """A 1-D numpy array (a zero-copy view when there are no nulls); nulls become 0."""
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(0).cast(arr.type))
    return arr.to_numpy(zero_copy_only=False)


def list_width(column: pa.ChunkedArray) -> int:
    """Length of a list column's vectors: the fixed size, else the first non-null entry's length."""
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size
    lengths = pc.drop_null(pc.list_value_length(column))
    if len(lengths) == 0:
        raise ValueError(
            f"list column of type {column.type} has only null entries: its width is unknown"
        )
    return lengths[0].as_py()


def _list_numpy(arr: pa.Array, width: int, name: str) -> np.ndarray:
    """[rows, width] from a list column without a per-row step; null vectors become zeros."""
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr)
        wrong = pc.filter(lengths, pc.not_equal(lengths, width))
        if len(wrong):
            raise ValueError(
                f"list column {name!r} must hold vectors of one length ({width}); found {wrong[0]}"
            )
    values = _flat_numpy(arr.flatten()).reshape(-1, width)
    if not arr.null_count:
        return values
    out = np.zeros((len(arr), width), dtype=values.dtype)
    out[arr.is_valid().to_numpy(zero_copy_only=False)] = values
    return out


def column_parts(column: pa.ChunkedArray, name: str, width: int | None = None) -> list[np.ndarray]:
    """A column's chunks as numpy: 1-D for scalars, [rows, width] for list columns; nulls -> 0."""
    if width is None:
        return [_flat_numpy(chunk) for chunk in column.chunks]
    return [_list_numpy(chunk, width, name) for chunk in column.chunks]
