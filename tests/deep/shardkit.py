"""Arrow IPC shards + manifest written with pyarrow alone, as the Spark side would write them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from sparkml_ext.deep.manifest import MANIFEST_NAME, Manifest, ShardFile


def write_shards(
    root: Path,
    table: pa.Table,
    files: int = 3,
    numeric: tuple[str, ...] = (),
    categorical: tuple[str, ...] = (),
    label: str | None = None,
    batch_rows: int = 100,
) -> Path:
    """Split `table` into `files` IPC files of `batch_rows`-row batches; the manifest's path."""
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    shards = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        name = f"part-{i:05d}.arrow"
        with (
            pa.OSFile(str(root / name), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as writer,
        ):
            for batch in table.slice(lo, hi - lo).to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)
        shards.append(ShardFile(name, int(hi - lo), (root / name).stat().st_size))
    schema = {f.name: str(f.type) for f in table.schema}
    manifest = Manifest(
        str(root), tuple(shards), schema, numeric, categorical, label, {"table": "test"}
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return root / MANIFEST_NAME


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
