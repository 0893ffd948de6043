"""The Spark -> torch bridge against its references, side by side in one run.

    python benchmarks/bridge.py [--rows 2000000] [--quick] [--work DIR]

Builds (or reuses) a Delta table of `--rows` rows x (13 float + 26 int + label) under
`--work` (data/generated/bench/, ignored by git), exports it to Arrow IPC shards with
`export_table`, and measures rows/s per rank delivered as ready tensors (float32 [B, 13],
int64 [B, 26], float32 label [B]; B = 4096) by:

  (a) the bridge: `ShardDataset` (shuffle on) through `batches()`, as the trainer uses it,
      for world_size 1 and for each rank of world_size 2 (one after the other), and for
      world_size 1 reading the same shards from an S3 server on loopback (moto's, started
      here: `scripts/s3_server.py`) instead of the local disk, beside the server's own
      limit (every file fetched whole, nothing decoded);
  (b) pyspark's own `TorchDistributor._train_on_dataframe` loader, in-process on a sample:
      the partition's Arrow batches written by `TorchDistributor._setup_spark_partition_data`
      (what its barrier task does), read back by `_get_spark_partition_data_loader`
      (`_SparkPartitionTorchDataset`: `to_pandas()` + `itertuples` per row + torch's
      default collate), then stacked into the same three tensors;
  (c) `df.toPandas()` -> `torch.tensor` -> `TensorDataset` -> `DataLoader(shuffle=True)`;
  (d) the limit: the same shard files memory-mapped, column buffers -> `torch.from_numpy`
      -> `torch.stack`, in file order, no shuffle;
  (e) petastorm's `make_batch_reader` over Parquet files of the same rows, in a virtual
      environment of its own (petastorm needs pyarrow < 16), as a subprocess.

Also: the first 60 steps of an epoch (20 with --quick) of a small DLRM fed by the bridge
vs the same batches held in memory;
shard writing vs Spark's own Parquet writer; TorchDistributor's per-run overhead vs
plain torchrun. Loader measurements are interleaved in rounds and reported as medians,
because the machine is shared. The last lines are `RATIO <name> <value>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchkit import (
    BATCH,
    CARDINALITY,
    CATEGORICAL,
    LABEL,
    NUMERIC,
    Batch,
    Rate,
    bridge_batches,
    bridge_dataset,
    drain,
    measure_bridge,
    median,
    medians,
    raw_batches,
    timed,
    train_epoch,
)

from sparkml_ext import lake
from sparkml_ext.bridge import export_table, launch
from sparkml_ext.deep.manifest import MANIFEST_NAME, Manifest
from sparkml_ext.session import get_spark
from sparkml_ext.storage import copy_file, join, read_whole, write_whole

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from s3_server import s3_server  # a development script, not a package

BENCH = REPO / "data" / "generated" / "bench"
# One intra-op thread everywhere: a 2-core machine runs 2 DDP ranks (torchrun sets
# OMP_NUM_THREADS=1 for them too), and on a busy shared machine torch's spinning OpenMP
# threads make a 2-thread step up to 30x slower than a 1-thread one (measured here).
THREADS = 1
PETASTORM_PINS = ["petastorm==0.12.1", "pyarrow==14.0.2", "numpy<2", "pandas<2.2", "torch"]


# -- data -----------------------------------------------------------------------------


def ensure_table(spark, rows: int, work: Path) -> str:
    """A Delta table of `rows` hash-based rows, written once and reused while it is complete."""
    path = work / f"table-{rows}"
    marker = path / "_bench_complete.json"
    if marker.exists() and json.loads(marker.read_text()).get("rows") == rows:
        return str(path)
    shutil.rmtree(path, ignore_errors=True)
    floats = [
        f"CAST(pmod(xxhash64(id, {i}), 1048576) / 1048576.0 AS FLOAT) AS f{i}" for i in range(13)
    ]
    ids = [f"CAST(pmod(xxhash64(id, {100 + i}), {CARDINALITY}) AS INT) AS c{i}" for i in range(26)]
    label = "CAST(pmod(xxhash64(id, 999), 4) = 0 AS FLOAT) AS label"
    started = time.perf_counter()
    frame = spark.range(rows, numPartitions=4).selectExpr(*floats, *ids, label)
    frame.write.format("delta").save(str(path))
    marker.write_text(json.dumps({"rows": rows}))
    print(f"wrote the Delta table {path} ({rows:,} rows) in {time.perf_counter() - started:.1f} s")
    return str(path)


def training_frame(spark, table: str):
    """The table's training columns in the types the shards hold (float, bigint, float), at
    its latest version; and that version."""
    from pyspark.sql import functions as F

    frame, version = lake.read_version(spark, table)
    columns = (
        *[F.col(c).cast("float").alias(c) for c in NUMERIC],
        *[F.col(c).cast("bigint").alias(c) for c in CATEGORICAL],
        F.col(LABEL).cast("float").alias(LABEL),
    )
    return frame.select(*columns), version


def export(spark, table: str, version: int, cache_root: str) -> Manifest:
    return export_table(
        spark,
        table,
        version=version,
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        label=LABEL,
        cache_root=cache_root,
    )


# -- (b) TorchDistributor's loader -----------------------------------------------------


def measure_torchdistributor(
    spark, frame, sample_rows: int, repeats: int, workers: tuple[int, ...] = (0, 1)
) -> dict[int, list[Rate]]:
    """rows/s of pyspark's per-partition loader, `num_workers` -> one rate per repeat.

    The partition file is written by `TorchDistributor._setup_spark_partition_data`, the
    context manager its barrier task runs around the train function, from the same Arrow
    record batches (Spark's default 10,000 rows each) that task would be handed; the loader
    is `_get_spark_partition_data_loader`, the function the train function calls.
    """
    from pyspark.ml.torch.distributor import TorchDistributor, _get_spark_partition_data_loader

    sample = frame.limit(sample_rows)
    batches = sample.toArrow().to_batches(max_chunksize=10_000)
    schema = sample.schema.jsonValue()
    rates: dict[int, list[Rate]] = {w: [] for w in workers}
    with TorchDistributor._setup_spark_partition_data(iter(batches), schema):
        for _ in range(repeats):
            for w in workers:
                loader = _get_spark_partition_data_loader(sample_rows, BATCH, num_workers=w)

                def ready(loader=loader) -> Iterator[Batch]:
                    for columns in loader:  # 40 tensors of [B]: float64 or int64 per column
                        yield (
                            torch.stack(columns[:13], dim=1).float(),
                            torch.stack(columns[13:39], dim=1),
                            columns[39].float(),
                        )

                rows, rate = drain(ready())
                assert rows == sample_rows, rows
                rates[w].append(rate if w == 0 else (rate[0], math.nan))
    return rates


# -- (c) toPandas -> TensorDataset ------------------------------------------------------


def pandas_tensors(frame) -> tuple[tuple[torch.Tensor, ...], float]:
    """The whole frame as three tensors via toPandas; and the seconds that took."""
    started = time.perf_counter()
    pdf = frame.toPandas()
    tensors = (
        torch.tensor(pdf[NUMERIC].to_numpy()),
        torch.tensor(pdf[CATEGORICAL].to_numpy()),
        torch.tensor(pdf[LABEL].to_numpy()),
    )
    del pdf
    return tensors, time.perf_counter() - started


def pandas_batches(tensors: tuple[torch.Tensor, ...], seed: int) -> Iterator[Batch]:
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    yield from loader


# -- (e) petastorm ----------------------------------------------------------------------

PETASTORM_READER = r'''
"""Run inside the petastorm virtual environment: rows/s of make_batch_reader as tensors."""
import json, statistics, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from petastorm import make_batch_reader
from petastorm.pytorch import BatchedDataLoader

url, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
numeric = [f"f{i}" for i in range(13)]
categorical = [f"c{i}" for i in range(26)]


def plain():
    """make_batch_reader (row groups in shuffled order) -> stacked tensors -> B-row views."""
    rows = 0
    with make_batch_reader(url, num_epochs=1, shuffle_row_groups=True) as reader:
        for group in reader:
            x = torch.from_numpy(np.stack([getattr(group, c) for c in numeric], axis=1))
            ids = torch.from_numpy(np.stack([getattr(group, c) for c in categorical], axis=1))
            y = torch.from_numpy(np.asarray(group.label))
            assert x.dtype == torch.float32 and ids.dtype == torch.int64, (x.dtype, ids.dtype)
            for lo in range(0, len(y), batch):
                b = x[lo : lo + batch], ids[lo : lo + batch], y[lo : lo + batch]
                rows += len(b[2])
    return rows


def shuffled():
    """petastorm's BatchedDataLoader with a 65,536-row shuffling queue, stacked to matrices."""
    rows = 0
    with make_batch_reader(url, num_epochs=1, shuffle_row_groups=True) as reader:
        for b in BatchedDataLoader(reader, batch_size=batch, shuffling_queue_capacity=65536):
            x = torch.stack([b[c] for c in numeric], dim=1)
            ids = torch.stack([b[c] for c in categorical], dim=1)
            rows += len(b["label"])
    return rows


out = {}
for name, fn in (("plain", plain), ("shuffled", shuffled)):
    rates = []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        rows = fn()
        rates.append([rows / (time.perf_counter() - started), rows / (time.process_time() - cpu)])
    out[name] = {"rows": rows, "rates": rates}
print("PETASTORM " + json.dumps(out))
'''


def petastorm_python(work: Path, timeout_s: int) -> tuple[str | None, str]:
    """The petastorm venv's python (built on first use), or None and why it cannot be had."""
    venv = work / "petastorm-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import petastorm, petastorm.pytorch, pyarrow, torch"]
    if python.exists() and subprocess.run(probe, check=False, capture_output=True).returncode == 0:
        return str(python), "reused"
    shutil.rmtree(venv, ignore_errors=True)
    print(f"building {venv} ({' '.join(PETASTORM_PINS)}; at most {timeout_s} s) ...", flush=True)
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", *PETASTORM_PINS]
        done = subprocess.run(pip, check=False, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"pip install of {' '.join(PETASTORM_PINS)} took over {timeout_s} s"
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"could not create the venv: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"pip install of {' '.join(PETASTORM_PINS)} failed: {last}"
    check = subprocess.run(probe, check=False, capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"petastorm was installed but does not import: {last}"
    return str(python), f"built in {time.perf_counter() - started:.0f} s"


def measure_petastorm(python: str, parquet: str, repeats: int, work: Path) -> tuple[dict | None, str]:
    script = work / "petastorm_reader.py"
    script.write_text(PETASTORM_READER)
    url = Path(parquet).resolve().as_uri()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}
    env["OMP_NUM_THREADS"] = str(THREADS)
    try:
        done = subprocess.run(
            [python, str(script), url, str(BATCH), str(repeats)],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None, "the petastorm reader ran over 900 s"
    for line in done.stdout.splitlines():
        if line.startswith("PETASTORM "):
            return json.loads(line[len("PETASTORM ") :]), "ok"
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return None, f"the petastorm reader failed: {last}"


# -- launching: TorchDistributor vs torchrun --------------------------------------------

RANK_SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
dist.destroy_process_group()
"""


def trivial_rank() -> float:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    dist.destroy_process_group()
    return float(total)


def measure_launch(repeats: int) -> dict[str, list[float]]:
    from pyspark.ml.torch.distributor import TorchDistributor

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(RANK_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    ways = {
        "torchrun": lambda: subprocess.run(
            [*torchrun, "--nproc_per_node=2", script.name], check=True, capture_output=True
        ),
        "TorchDistributor local": lambda: TorchDistributor(2, True, False).run(trivial_rank),
        "TorchDistributor barrier": lambda: TorchDistributor(2, False, False).run(trivial_rank),
        "bridge launch() local": lambda: launch(trivial_rank, num_processes=2),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(repeats):
            for name, way in ways.items():
                seconds[name].append(timed(way))
    finally:
        os.remove(script.name)
    return seconds


# -- the paths it measures ------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Petastorm:
    """petastorm's own python, None once it cannot be had or its reader failed; and why."""

    python: str | None
    note: str


def measure_writing(spark, frame, table: str, version: int, scratch: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds to write the table's rows as shards (`export`) and as Spark's Parquet, beside a
    scan alone and a pyarrow read of that Parquet; fresh folders each time."""
    seconds: dict[str, list[float]] = {"scan": [], "export": [], "parquet": [], "parquet_read": []}
    for i in range(repeats):
        ipc, out = str(scratch / f"ipc{i}"), str(scratch / f"parquet{i}")
        seconds["scan"].append(timed(lambda: frame.write.format("noop").mode("overwrite").save()))
        seconds["export"].append(timed(lambda ipc=ipc: export(spark, table, version, ipc)))
        seconds["parquet"].append(timed(lambda out=out: frame.write.parquet(out)))
        seconds["parquet_read"].append(timed(lambda out=out: pads.dataset(out, format="parquet").to_table()))
        shutil.rmtree(ipc)
        shutil.rmtree(out)
    print(f"export rounds done; load {load()}", flush=True)
    return seconds


LOADERS = ("bridge1", "bridge2", "bridge1w", "bridge1_s3", "limit", "s3_read", "pandas", "petastorm",
           "petastorm_shuf")


def s3_read(manifest: Manifest) -> Rate:
    """The server's own limit: every shard file fetched whole (one GET each, as the bridge
    fetches it), nothing decoded; in rows/s."""
    started, cpu = time.perf_counter(), time.process_time()
    for f in manifest.files:
        assert read_whole(join(manifest.root, f.path)).size == f.bytes
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return manifest.rows / wall, manifest.rows / cpu


def upload(manifest: Manifest, root: str) -> tuple[Manifest, float]:
    """The manifest's shard files copied under `root` (an S3 URI), its manifest there; seconds taken."""
    started = time.perf_counter()
    for f in manifest.files:
        copy_file(join(manifest.root, f.path), join(root, f.path))
    remote = dataclasses.replace(manifest, root=root)
    write_whole(join(root, MANIFEST_NAME), remote.to_json().encode())
    return remote, time.perf_counter() - started


def measure_loaders(
    manifest: Manifest,
    on_s3: Manifest,
    pandas_data: tuple[torch.Tensor, ...],
    pandas_rows: int,
    parquet: Path,
    petastorm: Petastorm,
    rounds: int,
    petastorm_rounds: int,
    work: Path,
) -> dict[str, list[Rate]]:
    """(a), (c), (d) and (e), interleaved in `rounds` (the machine is shared): rates by loader.

    (e) runs in the first `petastorm_rounds` only; a failed run sets `petastorm.python` to
    None and says why in `petastorm.note`.
    """
    runs: dict[str, list[Rate]] = {k: [] for k in LOADERS}
    for r in range(rounds):
        runs["bridge1"].append(measure_bridge(manifest, 1, epoch=r))
        runs["bridge2"].append(measure_bridge(manifest, 2, epoch=r))
        runs["bridge1w"].append(measure_bridge(manifest, 1, epoch=r, workers=1))
        runs["bridge1_s3"].append(measure_bridge(on_s3, 1, epoch=r))
        runs["s3_read"].append(s3_read(on_s3))
        rows, rate = drain(raw_batches(manifest))
        assert rows == manifest.rows, rows
        runs["limit"].append(rate)
        runs["pandas"].append(drain(pandas_batches(pandas_data, seed=r), max_rows=pandas_rows)[1])
        if petastorm.python is not None and r < petastorm_rounds:
            result, why = measure_petastorm(petastorm.python, str(parquet), 1, work)
            if result is None:
                print(f"petastorm skipped: {why}", flush=True)
                petastorm.python, petastorm.note = None, why
            else:
                runs["petastorm"] += [tuple(x) for x in result["plain"]["rates"]]
                runs["petastorm_shuf"] += [tuple(x) for x in result["shuffled"]["rates"]]
        print(f"round {r + 1}/{rounds} done; load {load()}", flush=True)
    return runs


def measure_training(manifest: Manifest, train_batches: int, repeats: int) -> dict[str, list[Rate]]:
    """(wall s, CPU s) of `train_batches` steps of a small DLRM: fed by the bridge, and fed
    the same batches already in memory."""
    epochs: dict[str, list[Rate]] = {"bridge": [], "memory": []}
    for r in range(repeats):
        ds = bridge_dataset(manifest, 0, 1, max_batches=train_batches)
        in_memory = list(bridge_batches(ds, epoch=100 + r))
        epochs["memory"].append(train_epoch(iter(in_memory)))
        del in_memory
        ds = bridge_dataset(manifest, 0, 1, max_batches=train_batches)
        epochs["bridge"].append(train_epoch(bridge_batches(ds, epoch=100 + r)))
    print(f"training done; load {load()}", flush=True)
    return epochs


# -- the report -----------------------------------------------------------------------------


def wall(runs: list[Rate]) -> list[float]:
    return [x[0] for x in runs]


def cpu(runs: list[Rate]) -> list[float]:
    return [x[1] for x in runs]


def ms(seconds: list[float]) -> str:
    return f"{median(seconds):6.2f} s  [{', '.join(f'{x:.2f}' for x in seconds)}]"


def loader_medians(
    runs: dict[str, list[Rate]], td_rates: dict[int, list[Rate]], petastorm: Petastorm
) -> tuple[dict[str, Rate], str, str]:
    """Median rates by loader, "td" and the faster of (b) and (e) included; and their keys."""
    med = {k: medians(v) for k, v in runs.items()}
    for w, v in td_rates.items():
        med[f"td{w}"] = medians(v)
    td_key = max((f"td{w}" for w in td_rates), key=lambda k: med[k][0])
    med["td"] = med[td_key]
    if petastorm.python is None:
        med["petastorm"] = med["petastorm_shuf"] = (math.nan, math.nan)
    pet_key = max(("petastorm", "petastorm_shuf"), key=lambda k: med[k][0])
    return med, td_key, pet_key


def ratios(
    med: dict[str, Rate], pet_key: str, writing: dict[str, list[float]], epochs: dict[str, list[Rate]],
    launch_s: dict[str, list[float]],
) -> dict[str, float]:
    """The `RATIO` lines' values, by name (wall time; bridge_vs_petastorm is nan without it)."""
    a = med["bridge1"][0]
    return {
        "bridge_vs_limit": a / med["limit"][0],
        "bridge_s3_vs_local": med["bridge1_s3"][0] / a,
        "bridge_s3_vs_s3_read": med["bridge1_s3"][0] / med["s3_read"][0],
        "bridge_vs_torchdistributor": a / med["td"][0],
        "bridge_vs_pandas": a / med["pandas"][0],
        "bridge_vs_petastorm": a / med[pet_key][0],
        "epoch_vs_inmemory": median(wall(epochs["bridge"])) / median(wall(epochs["memory"])),
        "export_vs_parquet_write": median(writing["parquet"]) / median(writing["export"]),
        "torchdistributor_vs_torchrun": median(launch_s["TorchDistributor local"]) / median(launch_s["torchrun"]),
    }


def print_loaders(
    med: dict[str, Rate],
    runs: dict[str, list[Rate]],
    td_rates: dict[int, list[Rate]],
    rows: int,
    td_sample: int,
    pandas_rows: int,
    to_pandas_s: float,
    petastorm: Petastorm,
    upload_s: float,
) -> None:
    a, a_cpu = med["bridge1"]

    def ratio_text(x: float, y: float) -> str:
        return f"{x / y:7.2f}x" if y and not math.isnan(y) and not math.isnan(x) else "      - "

    def line(label: str, key: str, shown: list[Rate], note: str = "") -> None:
        wall, cpu = med[key]
        cpu_text = f"{cpu / 1e6:8.3f}" if not math.isnan(cpu) else "       -"
        runs_text = ", ".join(f"{x[0] / 1e6:.2f}" for x in shown)
        print(
            f"  {label:55s} {wall / 1e6:8.3f} {ratio_text(a, wall)}  {cpu_text} "
            f"{ratio_text(a_cpu, cpu)}  [{runs_text}] {note}"
        )

    print()
    print(
        f"== loaders: rows per rank delivered as ready tensors (B={BATCH}; float32 [B,13], "
        f"int64 [B,26], float32 [B]), medians, 1 torch thread =="
    )
    print(
        f"  {'':55s} {'M rows/s':>8s} {'bridge/x':>8s}  {'M/cpu-s':>8s} {'bridge/x':>8s}  "
        "[wall runs, M rows/s]"
    )
    line("(a) bridge ShardDataset, world 1, shuffle", "bridge1", runs["bridge1"], f"{rows:,} rows")
    line("(a) bridge ShardDataset, world 2, per rank", "bridge2", runs["bridge2"])
    line("(a) bridge ShardDataset, world 1, 1 DataLoader worker", "bridge1w", runs["bridge1w"])
    line("(a) bridge ShardDataset, world 1, shards on S3 (loopback)", "bridge1_s3", runs["bridge1_s3"],
         f"upload {upload_s:.1f} s")
    for w in sorted(td_rates):
        line(
            f"(b) TorchDistributor loader, num_workers={w}",
            f"td{w}",
            td_rates[w],
            f"{td_sample:,}-row sample",
        )
    line(
        "(c) toPandas -> TensorDataset -> DataLoader(shuffle)",
        "pandas",
        runs["pandas"],
        f"{pandas_rows:,} rows/run; toPandas + torch.tensor once: {to_pandas_s:.1f} s",
    )
    line("(d) limit: mmap IPC -> from_numpy -> stack, no shuffle", "limit", runs["limit"])
    line("(d) S3 limit: each shard file in one GET, nothing decoded", "s3_read", runs["s3_read"])
    if petastorm.python is not None:
        line(
            "(e) petastorm make_batch_reader -> stack, no row shuffle",
            "petastorm",
            runs["petastorm"],
            f"venv {petastorm.note}",
        )
        line(
            "(e) petastorm + BatchedDataLoader(shuffling 65536)",
            "petastorm_shuf",
            runs["petastorm_shuf"],
        )
    else:
        print(f"  (e) petastorm: skipped: {petastorm.note}")


def print_writing(rows: int, writing: dict[str, list[float]]) -> None:
    print(f"\n== shard writing from the Delta table ({rows:,} rows), medians ==")
    for label, key in (
        ("scan only (noop write)", "scan"),
        ("export_table (mapInArrow -> Arrow IPC)", "export"),
        ("Spark df.write.parquet", "parquet"),
        ("  + pyarrow read of that Parquet", "parquet_read"),
    ):
        seconds = writing[key]
        print(f"  {label:44s} {rows / median(seconds) / 1e6:6.2f} M/s  {ms(seconds)}")


def print_training(train_batches: int, train_rows: int, epochs: dict[str, list[Rate]]) -> None:
    print(f"\n== {train_batches} steps of a small DLRM (AdamW), {train_rows:,} rows, medians ==")
    for label, e in (
        ("fed by the bridge (ShardDataset, shuffle)", epochs["bridge"]),
        ("same batches already in memory", epochs["memory"]),
    ):
        print(
            f"  {label:44s} {ms(wall(e))}  {train_rows / median(wall(e)) / 1e6:.3f} M rows/s; "
            f"CPU {median(cpu(e)):.2f} s"
        )


def print_launch(launch_s: dict[str, list[float]]) -> None:
    print("\n== launching a trivial 2-process function, medians ==")
    for name, s in launch_s.items():
        print(f"  {name:44s} {ms(s)}")


def print_notes(
    med: dict[str, Rate], td_key: str, pet_key: str, td_sample: int, epochs: dict[str, list[Rate]]
) -> None:
    print(
        f"(b) measured: pyspark.ml.torch.distributor._get_spark_partition_data_loader"
        f"(num_samples={td_sample}, batch_size={BATCH}, num_workers=0|1) over the Arrow "
        "stream file written by TorchDistributor._setup_spark_partition_data (what its "
        "barrier task runs); it iterates pyspark.ml.torch.data._SparkPartitionTorchDataset "
        "(RecordBatch.to_pandas, then itertuples and a converter per row) with torch's "
        "default_collate, then torch.stack makes the 3 tensors; the ratio uses its faster "
        f"setting ({td_key.replace('td', 'num_workers=')})."
    )
    print(
        f"(e) the ratio uses petastorm's faster way "
        f"({'make_batch_reader' if pet_key == 'petastorm' else 'BatchedDataLoader'})."
    )
    a_cpu = med["bridge1"][1]
    print(
        "CPU-time ratios (robust to the machine's load; not for (b) num_workers=1): "
        f"bridge/limit {a_cpu / med['limit'][1]:.3f}, "
        f"bridge/TorchDistributor(num_workers=0) {a_cpu / med['td0'][1]:.1f}, "
        f"bridge/pandas {a_cpu / med['pandas'][1]:.1f}, "
        f"bridge/petastorm {a_cpu / med[pet_key][1]:.3f}, "
        f"epoch/in-memory {median(cpu(epochs['bridge'])) / median(cpu(epochs['memory'])):.3f}"
    )


def print_goals(ratio: dict[str, float], petastorm: Petastorm) -> None:
    goals = [
        ("bridge_vs_limit >= 0.5", ratio["bridge_vs_limit"] >= 0.5),
        ("bridge_s3_vs_local >= 0.5", ratio["bridge_s3_vs_local"] >= 0.5),
        ("bridge_vs_torchdistributor >= 50", ratio["bridge_vs_torchdistributor"] >= 50),
        ("bridge_vs_petastorm >= 1", ratio["bridge_vs_petastorm"] >= 1 if petastorm.python else None),
        ("epoch_vs_inmemory <= 1.1", ratio["epoch_vs_inmemory"] <= 1.1),
    ]
    print(
        "goals (wall time): "
        + ", ".join(f"{g}: {'n/a' if ok is None else 'met' if ok else 'MISSED'}" for g, ok in goals)
    )
    print(
        "ratios: bridge_vs_* = the bridge's rows/s over the reference's; epoch_vs_inmemory = "
        "epoch time fed by the bridge over in memory; export_vs_parquet_write = Parquet write "
        "time over export time (> 1: shards are faster); torchdistributor_vs_torchrun = run "
        "time over run time; bridge_s3_vs_local = rows/s reading the shards from S3 over "
        "from the local disk; bridge_s3_vs_s3_read = the same over fetching the files alone"
    )


# -- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the Delta table")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller samples")
    parser.add_argument(
        "--petastorm-install-timeout", type=int, default=1200, help="seconds for its pip install"
    )
    parser.add_argument(
        "--work", type=Path, default=BENCH,
        help="the table, shards, Parquet copy and petastorm venv, reused across runs (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quick, work = args.quick, args.work.resolve()
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    rounds, repeats = (2, 1) if quick else (5, 3)
    td_sample = min(args.rows, 50_000 if quick else 200_000)
    pandas_rows = min(args.rows, 100_000 if quick else 250_000)
    train_batches = 20 if quick else 60
    work.mkdir(parents=True, exist_ok=True)
    scratch = work / "tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    loads = [load()]
    print(f"rows={args.rows:,} quick={quick} load average at start: {loads[0]}", flush=True)

    spark = get_spark("bench-bridge", {"spark.master": "local[2]"})
    spark.sparkContext.setLogLevel("ERROR")
    table = ensure_table(spark, args.rows, work)
    frame, version = training_frame(spark, table)
    writing = measure_writing(spark, frame, table, version, scratch, repeats)

    # The data every loader reads, prepared once (the shards and Parquet are kept for later runs).
    manifest = export(spark, table, version, str(work / "shards"))
    parquet = work / f"parquet-{args.rows}-v{version}"
    if not (parquet / "_SUCCESS").exists():
        shutil.rmtree(parquet, ignore_errors=True)
        frame.write.parquet(str(parquet))
    petastorm = Petastorm(*petastorm_python(work, args.petastorm_install_timeout))
    if petastorm.python is None:
        print(f"petastorm skipped: {petastorm.note}", flush=True)
    pandas_data, to_pandas_s = pandas_tensors(frame)

    td_rates = measure_torchdistributor(spark, frame, td_sample, repeats)
    with s3_server("bench", log=str(scratch / "moto.log")) as s3_env:
        os.environ.update(s3_env)  # pyarrow reads the endpoint and keys from the environment
        on_s3, upload_s = upload(manifest, f"s3a://bench/shards/{Path(manifest.root).name}")
        runs = measure_loaders(manifest, on_s3, pandas_data, pandas_rows, parquet, petastorm, rounds, repeats,
                               work)
    loads.append(load())
    del pandas_data
    epochs = measure_training(manifest, train_batches, repeats)
    launch_s = measure_launch(repeats)
    loads.append(load())
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)

    med, td_key, pet_key = loader_medians(runs, td_rates, petastorm)
    ratio = ratios(med, pet_key, writing, epochs, launch_s)
    print_loaders(med, runs, td_rates, manifest.rows, td_sample, pandas_rows, to_pandas_s, petastorm, upload_s)
    print_writing(manifest.rows, writing)
    print_training(train_batches, min(train_batches * BATCH, manifest.rows), epochs)
    print_launch(launch_s)
    print(
        f"\nload average (1, 5, 15 min): start {loads[0]} | after loaders {loads[1]} | "
        f"end {loads[2]}"
    )
    print_notes(med, td_key, pet_key, td_sample, epochs)
    print_goals(ratio, petastorm)
    print()
    for name, value in ratio.items():
        why = f" ({petastorm.note})" if name == "bridge_vs_petastorm" and petastorm.python is None else ""
        print(f"RATIO {name} {value:.3f}{why}")


if __name__ == "__main__":
    main()
