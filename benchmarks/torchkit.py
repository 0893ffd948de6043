"""The torch-only pieces of the bridge benchmarks: the shard layout, loaders, a model step.

Shared by `bridge.py` (CPU, with Spark) and `gpu.py` (a GPU machine with no JVM), so
both measure the same loaders and the same model. No pyspark here.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator

import pyarrow as pa
import torch

from sparkml_ext.deep.dataset import ShardDataset
from sparkml_ext.deep.manifest import Manifest
from sparkml_ext.deep.model import DLRM, DLRMConfig

NUMERIC = [f"f{i}" for i in range(13)]
CATEGORICAL = [f"c{i}" for i in range(26)]
LABEL = "label"
CARDINALITY = 10_000  # ids per categorical column
BATCH = 4096
SHUFFLE_BUFFER = 65536  # the trainer's defaults
CHUNK_ROWS = 8192

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # numeric, categorical, label
Rate = tuple[float, float]  # rows/s of wall time, rows per CPU-second of this process (or nan)


# -- timing -----------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def drain(batches: Iterator[Batch], max_rows: int | None = None) -> tuple[int, Rate]:
    """Consume ready batches (checking the first one's shapes); (rows, (wall, CPU) rows/s).

    The CPU rate counts this process's CPU time only: it says what a loader costs when
    other engineers' jobs take the cores away (wall time), but it leaves out the work of
    DataLoader worker processes, so it is reported only where there are none.
    """
    rows, started, cpu = 0, time.perf_counter(), time.process_time()
    for i, (numeric, categorical, label) in enumerate(batches):
        if i == 0:
            b = len(label)
            assert numeric.shape == (b, 13) and numeric.dtype == torch.float32, numeric.shape
            assert categorical.shape == (b, 26) and categorical.dtype == torch.int64
            assert label.shape == (b,) and label.dtype == torch.float32
        rows += len(label)
        if max_rows is not None and rows >= max_rows:
            break
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return rows, (rows / wall, rows / cpu if cpu > 0 else math.nan)


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def medians(runs: list[Rate]) -> Rate:
    return median([r[0] for r in runs]), median([r[1] for r in runs])


# -- (a) the bridge -------------------------------------------------------------------


def bridge_dataset(manifest: Manifest, rank: int, world_size: int, **kwargs) -> ShardDataset:
    return ShardDataset.from_manifest(
        manifest,
        rank,
        world_size,
        batch_size=BATCH,
        shuffle=True,
        seed=0,
        shuffle_buffer=SHUFFLE_BUFFER,
        chunk_rows=CHUNK_ROWS,
        **kwargs,
    )


def bridge_batches(
    ds: ShardDataset, epoch: int, num_workers: int = 0, pin_memory: bool = False, read_ahead: int = 0
) -> Iterator[Batch]:
    ds.set_epoch(epoch)
    for batch in ds.batches(num_workers, pin_memory, read_ahead):
        yield batch["numeric"], batch["categorical"], batch["label"]


def measure_bridge(manifest: Manifest, world_size: int, epoch: int, workers: int = 0) -> Rate:
    """Median over this world's ranks of one epoch's rows/s per rank."""
    rates = []
    for rank in range(world_size):
        ds = bridge_dataset(manifest, rank, world_size)
        rows, rate = drain(bridge_batches(ds, epoch, workers))
        assert rows == ds.rows, (rows, ds.rows)
        rates.append(rate if workers == 0 else (rate[0], math.nan))
    return medians(rates)


# -- (d) the limit --------------------------------------------------------------------


def _column(batch: pa.RecordBatch, name: str) -> torch.Tensor:
    """A column's data buffer as a tensor, no copy (the shards have no nulls)."""
    return torch.from_numpy(batch.column(name).to_numpy())


def raw_batches(manifest: Manifest) -> Iterator[Batch]:
    """Memory-mapped IPC -> exact batches of BATCH rows with one copy per value, no shuffle.

    Each record batch's columns are stacked once into row-major tensors; batches are
    views of those, and only a batch that spans two record batches is concatenated.
    """
    pending: list[Batch] = []
    held = 0
    for shard in manifest.files:
        reader = pa.ipc.open_file(pa.memory_map(os.path.join(manifest.root, shard.path)))
        for i in range(reader.num_record_batches):
            rb = reader.get_batch(i)
            numeric = torch.stack([_column(rb, c) for c in NUMERIC], dim=1)
            categorical = torch.stack([_column(rb, c) for c in CATEGORICAL], dim=1)
            label = _column(rb, LABEL)
            lo, n = 0, len(label)
            if held:
                take = min(BATCH - held, n)
                pending.append((numeric[:take], categorical[:take], label[:take]))
                held, lo = held + take, take
                if held == BATCH:
                    yield tuple(torch.cat(parts) for parts in zip(*pending))
                    pending, held = [], 0
            while n - lo >= BATCH:
                yield numeric[lo : lo + BATCH], categorical[lo : lo + BATCH], label[lo : lo + BATCH]
                lo += BATCH
            if lo < n:
                pending.append((numeric[lo:], categorical[lo:], label[lo:]))
                held += n - lo
    if pending:
        yield tuple(torch.cat(parts) for parts in zip(*pending))


# -- (b) TorchDistributor's loader -----------------------------------------------------


# -- the model: steps fed by a loader -----------------------------------------------------


def small_dlrm() -> DLRM:
    torch.manual_seed(0)
    config = DLRMConfig(
        num_numeric=13,
        embedding_sizes=(CARDINALITY,) * 26,
        embedding_dim=8,
        bottom_mlp=(32,),
        top_mlp=(32, 16),
    )
    return DLRM(config)


def train_epoch(
    batches: Iterator[Batch], device: str = "cpu", amp: torch.dtype | None = None
) -> tuple[float, float]:
    """One pass of a fresh small DLRM with AdamW over `batches`; (wall, CPU) seconds.

    On a GPU the batches are copied with `non_blocking` (asynchronous from pinned memory)
    and the forward pass runs under autocast to `amp`; the clock stops after a sync.
    """
    model = small_dlrm().to(device)
    kind = torch.device(device).type
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, weight_decay=0.01, fused=kind == "cuda"
    )
    model.train()
    started, cpu = time.perf_counter(), time.process_time()
    for numeric, categorical, label in batches:
        numeric, categorical, label = (
            t.to(device, non_blocking=True) for t in (numeric, categorical, label)
        )
        with torch.autocast(kind, dtype=amp, enabled=amp is not None):
            logits = model(numeric, categorical)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if kind == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, time.process_time() - cpu
