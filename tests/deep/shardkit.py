"""Synthetic click shards for the torch-side tests, written with pyarrow alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from sparkml_ext.deep.shard_reader import write_shards as _write_shards

# The small deterministic DDP run that the restart tests repeat and compare weights against
# (torchrun's in tests/deep/test_ddp.py, TorchDistributor's in tests/test_ddp_faults.py).
DDP_KNOBS = dict(
    device="cpu",  # the weights-equal checks need deterministic CPU kernels
    epochs=3,
    batch_size=64,
    embedding_sizes=64,
    lr=3e-3,
    shuffle_buffer=256,
    chunk_rows=128,
    checkpoint_every=10,
    deterministic=True,
    seed=5,
)


def write_shards(
    root: Path,
    table: pa.Table,
    files: int = 3,
    numeric: tuple[str, ...] = (),
    categorical: tuple[str, ...] = (),
    label: str | None = None,
    batch_rows: int = 100,
) -> Path:
    """Small shards (several record batches per file) of a test table; the manifest's path."""
    path = _write_shards(
        root, table, files, numeric=numeric, categorical=categorical, label=label,
        batch_rows=batch_rows, source={"table": "test"},
    )
    return Path(path)


def click_table(rows: int, seed: int = 0) -> pa.Table:
    """Synthetic clicks whose label depends on the features (so a model can learn it).

    Columns: `id` (row number, int64), numerics `x0..x3` (float32, some nulls in x3),
    `vec` (fixed-size list of 2 floats), categoricals `c0`, `c1` (int32 ids), `label`.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    vec = rng.standard_normal((rows, 2)).astype(np.float32)
    c0 = rng.integers(0, 10, rows).astype(np.int32)
    c1 = rng.integers(0, 50, rows).astype(np.int32)
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + vec[:, 0] + np.where(c0 % 2 == 0, 1.5, -1.5)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    x3 = pa.array(x[:, 3], mask=rng.random(rows) < 0.1)
    return pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "x0": x[:, 0],
            "x1": x[:, 1],
            "x2": x[:, 2],
            "x3": x3,
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), 2),
            "c0": c0,
            "c1": c1,
            "label": label,
        }
    )


CLICK_COLUMNS = dict(
    numeric=("x0", "x1", "x2", "x3", "vec"), categorical=("c0", "c1"), label="label"
)
