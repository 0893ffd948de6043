"""One rank's rows as ready tensor batches: planned per epoch, shuffled, resumable.

The epoch is planned before any data is read. The rank's row slices are cut into chunks,
the chunk order is shuffled from (seed, epoch), the chunks are laid end to end, and rows
are permuted inside windows of `shuffle_buffer` rows (rounded up to whole batches, so no
batch straddles two windows). Batch b is therefore fixed by (seed, epoch, b) alone:
DataLoader worker w makes batches w, w+W, ... (the loader takes them round-robin, so the
order is the plan's), and a restarted run skips the batches it already trained on
without reading them.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sparkml_ext.deep.manifest import Manifest, RowSlice, assign_rows
from sparkml_ext.deep.shard_reader import ShardReader, check_column, list_width

Batch = dict[str, torch.Tensor]


def _cut(slices: Sequence[RowSlice], chunk_rows: int) -> list[RowSlice]:
    """Split slices into chunks of at most `chunk_rows` rows: the unit of shuffled order."""
    return [
        RowSlice(s.path, s.offset + start, min(chunk_rows, s.length - start))
        for s in slices
        for start in range(0, s.length, chunk_rows)
    ]


def _numeric_widths(
    table: pa.Table, numeric: Sequence[str], roles: dict[str, str]
) -> dict[str, int | None]:
    """Check every used column's type; width of each numeric list column (None for scalars)."""
    for name, role in roles.items():
        if name not in table.column_names:
            raise ValueError(
                f"{role} column {name!r} is not in the shards (columns: {table.column_names})"
            )
        check_column(name, table.schema.field(name).type, role)
    return {
        name: list_width(table.column(name))
        if pa.types.is_nested(table.schema.field(name).type)
        else None
        for name in numeric
    }


def _read_ahead(source: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """`source`'s items, produced by a thread up to `depth` items ahead; its errors re-raised."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(end)
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)

    thread = threading.Thread(target=produce, name="shard-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # also when the consumer stops early: the producer exits at its next put
        stop.set()
        thread.join()


class ShardDataset(IterableDataset):
    """Batches {"numeric": float32 [B, F], "categorical": int64 [B, C], "label": float32 [B]}.

    Numeric list columns become several feature columns; nulls become 0 (categorical 0 is
    the unknown id). Use it with `DataLoader(ds, batch_size=None)`, or through `batches()`,
    which also keeps the position that `state_dict()` returns for a checkpoint.
    """

    def __init__(
        self,
        root: str,
        slices: Sequence[RowSlice],
        *,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        label: str | None = None,
        batch_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 65536,
        chunk_rows: int = 8192,
        max_batches: int | None = None,
    ):
        if batch_size < 1 or chunk_rows < 1 or seed < 0:
            raise ValueError("batch_size and chunk_rows must be >= 1 and seed >= 0")
        self.root, self.numeric, self.categorical, self.label = (
            root,
            tuple(numeric),
            tuple(categorical),
            label,
        )
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self._window_rows = max(1, math.ceil(shuffle_buffer / batch_size)) * batch_size
        self._chunks = _cut(slices, chunk_rows)
        self.rows = sum(c.length for c in self._chunks)
        batches = math.ceil(self.rows / batch_size)
        self.num_batches = batches if max_batches is None else min(batches, max_batches)
        roles = {**{c: "numeric" for c in numeric}, **{c: "categorical" for c in categorical}}
        if label is not None:
            roles[label] = "label"
        first = ShardReader(root).table(self._chunks[0].path) if self._chunks else None
        self._widths = (
            _numeric_widths(first, numeric, roles) if first is not None else dict.fromkeys(numeric)
        )
        self.numeric_width = sum(w or 1 for w in self._widths.values())
        self.epoch, self._batches_done = 0, 0

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, rank: int = 0, world_size: int = 1, **kwargs
    ) -> ShardDataset:
        """The dataset of rank `rank`'s share of the manifest's rows, with its columns."""
        return cls(
            manifest.root,
            assign_rows(manifest.files, world_size)[rank],
            numeric=manifest.numeric,
            categorical=manifest.categorical,
            label=manifest.label,
            **kwargs,
        )

    # -- position ---------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch (its own shuffle)."""
        self.epoch, self._batches_done = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not 0 <= state["batches_done"] <= self.num_batches:
            raise ValueError(
                f"batches_done={state['batches_done']} is outside the epoch's "
                f"{self.num_batches} batches"
            )
        self.epoch, self._batches_done = int(state["epoch"]), int(state["batches_done"])

    def batches(
        self, num_workers: int = 0, pin_memory: bool = False, read_ahead: int = 0
    ) -> Iterator[Batch]:
        """The rest of the epoch, advancing the stored position per batch handed over.

        With `num_workers`, DataLoader worker processes make the batches. Without, this
        process does, and `read_ahead` > 0 makes them (and pins them) in a thread up to
        that many batches ahead, so that reading overlaps the training step: the copies
        release the GIL, and on a GPU there is no inter-process hand-off to pay for.
        """
        if num_workers:
            source = iter(
                DataLoader(self, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
            )
        else:
            source = iter(self)
            if pin_memory:
                source = ({k: v.pin_memory() for k, v in b.items()} for b in source)
            if read_ahead:
                source = _read_ahead(source, read_ahead)
        for batch in source:
            self._batches_done += 1  # before handing it over: a checkpoint taken after it counts it
            yield batch

    # -- the plan ---------------------------------------------------------------------

    def _stream(self) -> tuple[list[RowSlice], np.ndarray]:
        """This epoch's chunks in order and where each starts in the concatenated stream."""
        order = np.arange(len(self._chunks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        chunks = [self._chunks[i] for i in order]
        return chunks, np.cumsum([0] + [c.length for c in chunks])

    def _pieces(
        self, chunks: list[RowSlice], starts: np.ndarray, lo: int, hi: int
    ) -> list[RowSlice]:
        """The parts of files that make stream rows [lo, hi)."""
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        pieces = []
        for chunk, start in zip(chunks[first:], starts[first:], strict=False):
            if start >= hi:
                break
            skip = max(lo - start, 0)
            pieces.append(
                RowSlice(chunk.path, chunk.offset + skip, min(chunk.length, hi - start) - skip)
            )
        return pieces

    # -- reading ----------------------------------------------------------------------

    def _buffers(self) -> Batch:
        """Row-major tensors for one window, reused from window to window."""
        span = min(self._window_rows, self.rows)
        buffers = {
            "numeric": torch.empty((span, self.numeric_width), dtype=torch.float32),
            "categorical": torch.empty((span, len(self.categorical)), dtype=torch.int64),
        }
        if self.label is not None:
            buffers["label"] = torch.empty(span, dtype=torch.float32)
        return buffers

    def _fill(self, buffers: Batch, reader: ShardReader, pieces: list[RowSlice]) -> Batch:
        """Write a window's rows into `buffers` in stream order, one column at a time.

        Gathering whole rows out of a row-major window is far cheaper than gathering
        each column separately.
        """
        targets, j = [], 0  # (column, list width or None, its columns in the window)
        for name, width in self._widths.items():
            targets.append((name, width, buffers["numeric"].numpy()[:, j : j + (width or 1)]))
            j += width or 1
        for j, name in enumerate(self.categorical):
            targets.append((name, None, buffers["categorical"].numpy()[:, j : j + 1]))
        if self.label is not None:
            targets.append((self.label, None, buffers["label"].numpy()[:, None]))
        columns = [(name, width) for name, width, _ in targets]
        start = 0
        for piece in pieces:
            if self.label is not None:
                label = reader.table(piece.path).column(self.label)
                if label.slice(piece.offset, piece.length).null_count:
                    raise ValueError(
                        f"label column {self.label!r} has nulls; drop or fill them in Spark"
                    )
            bounds, parts = reader.views(piece.path, columns)
            lo, hi = piece.offset, piece.offset + piece.length
            k = int(np.searchsorted(bounds, lo, side="right")) - 1
            while lo < hi:  # the record batches this piece spans
                a, b = lo - bounds[k], min(hi, bounds[k + 1]) - bounds[k]
                for chunks, (_, _, target) in zip(parts, targets, strict=True):
                    target[start : start + b - a] = chunks[k][a:b].reshape(b - a, -1)
                start += b - a
                lo, k = bounds[k + 1], k + 1
        return {key: values[:start] for key, values in buffers.items()}

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        todo = range(self._batches_done, self.num_batches)[worker::workers]
        reader, buffers = ShardReader(self.root), self._buffers()
        chunks, starts = self._stream()
        reader.read_ahead([c.path for c in chunks])
        size, span = self.batch_size, self._window_rows
        for k, group in itertools.groupby(todo, key=lambda b: b * size // span):
            lo, hi = k * span, min((k + 1) * span, self.rows)
            window = self._fill(buffers, reader, self._pieces(chunks, starts, lo, hi))
            order = torch.arange(hi - lo)
            if self.shuffle:
                order = torch.from_numpy(
                    np.random.default_rng([self.seed, self.epoch, k]).permutation(hi - lo)
                )
            for b in group:
                rows = order[b * size - lo : min((b + 1) * size, hi) - lo]
                yield {key: values.index_select(0, rows) for key, values in window.items()}

