"""The torch side on a GPU: the bridge feeding a DLRM on CUDA, against in-memory batches.

    python benchmarks/gpu.py [--rows 2000000] [--steps 300] [--workers 4]

Torch, pyarrow and numpy only (a GPU machine may have no JVM): the shards are written
by `sparkml_ext.deep.shard_reader.write_shards` from a synthetic table with the bridge
benchmark's layout (13 float + 26 int ids + label) and a label that depends on the
features. Measured side by side in one run:

  loaders:  the bridge (`ShardDataset`, shuffle) read in the loop, in a read-ahead
            thread (pinned and not) and by `--workers` DataLoader workers, each batch
            copied onto the GPU, against the limit (raw memory-mapped IPC -> tensors,
            no shuffle);
  steps:    `--steps` AdamW steps of the small DLRM on the GPU, fp32 and bf16 autocast,
            fed by the bridge as the trainer reads it (read-ahead thread, pinned) vs the
            same batches already on the GPU;
  trainer:  `train_worker` under torchrun with one rank (nccl, the trainer's own mixed
            precision), 2 epochs, holdout AUC against the Bayes-optimal AUC of the table.

It also runs on a CPU (`--device cpu`) to check it; the figures that matter are the GPU's.
The last lines are `RATIO <name> <value>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torchkit import (
    BATCH,
    CARDINALITY,
    CATEGORICAL,
    LABEL,
    NUMERIC,
    Batch,
    bridge_batches,
    bridge_dataset,
    median,
    raw_batches,
    train_epoch,
)

from sparkml_ext.deep.metrics import roc_auc
from sparkml_ext.deep.shard_reader import read_manifest, write_shards

READ_AHEAD = 4  # batches, as the trainer reads on a GPU
LIMIT = "limit: mmap IPC -> tensors, no shuffle"


def click_like(rows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """The layout of the bridge benchmark, with a learnable label; (table, true probability)."""
    rng = np.random.default_rng(seed)
    numeric = rng.random((rows, len(NUMERIC)), dtype=np.float32)
    ids = rng.zipf(1.3, (rows, len(CATEGORICAL))) % CARDINALITY
    effect = np.sin(np.arange(CARDINALITY) * 0.7)  # a fixed per-id effect, shared by columns
    logit = (
        2.0 * (numeric[:, 0] - 0.5)
        - 1.5 * (numeric[:, 1] - 0.5) * numeric[:, 2]
        + effect[ids[:, 0]]
        + 0.5 * effect[ids[:, 1]] * effect[ids[:, 2]]
        - 1.0
    )
    probability = 1 / (1 + np.exp(-logit))
    label = (rng.random(rows) < probability).astype(np.float32)
    columns = {name: numeric[:, i] for i, name in enumerate(NUMERIC)}
    columns.update({name: ids[:, i].astype(np.int64) for i, name in enumerate(CATEGORICAL)})
    columns[LABEL] = label
    return pa.table(columns), probability


def make_shards(root: Path, rows: int, seed: int) -> tuple[str, float]:
    """Shards of `rows` rows in 16 files; (manifest path, Bayes-optimal AUC)."""
    table, probability = click_like(rows, seed)
    label = table[LABEL].to_numpy()
    bayes = roc_auc(torch.from_numpy(probability), torch.tensor(label))
    path = write_shards(
        root, table, 16, numeric=NUMERIC, categorical=CATEGORICAL, label=LABEL,
        source={"table": f"synthetic-{rows}-{seed}"},
    )
    return path, bayes


def on_device(batches: Iterator[Batch], device: str) -> Iterator[Batch]:
    """Each batch copied to `device` (asynchronously when it is pinned)."""
    for batch in batches:
        yield tuple(t.to(device, non_blocking=True) for t in batch)


def delivered(batches: Iterator[Batch], device: str) -> tuple[int, float]:
    """Rows/s of ready batches on `device`, including the copy (synchronised at the end)."""
    rows, started = 0, time.perf_counter()
    for _, _, label in on_device(batches, device):
        rows += len(label)
    if device == "cuda":
        torch.cuda.synchronize()
    return rows, rows / (time.perf_counter() - started)


def run_trainer(train: str, val: str, out: Path, device: str) -> dict:
    """train_worker on one rank under torchrun (nccl on a GPU, gloo on a CPU)."""
    config = {
        "device": device, "epochs": 2, "batch_size": BATCH, "lr": 3e-3,
        "embedding_sizes": CARDINALITY, "embedding_dim": 16, "output_dir": str(out),
    }
    metrics = out / "metrics.json"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        __file__, "--worker", train, val, json.dumps(config), str(metrics),
    ]
    started = time.perf_counter()
    subprocess.run(args, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    result = json.loads(metrics.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def worker(train: str, val: str, config: str, out: str) -> None:
    from sparkml_ext.deep.config import TrainConfig
    from sparkml_ext.deep.train import train_worker

    metrics = train_worker(train, TrainConfig(**json.loads(config)), val)
    if os.environ.get("RANK", "0") == "0":
        Path(out).write_text(json.dumps(metrics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--steps", type=int, default=300, help="model steps per measurement")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    device, workers = args.device, args.workers
    pin = device == "cuda"
    name = torch.cuda.get_device_name() if pin else "cpu"
    print(f"device {name}; torch {torch.__version__}; {os.cpu_count()} cpus; rows {args.rows:,}")
    scratch = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    started = time.perf_counter()
    train, bayes = make_shards(scratch / "train", args.rows, seed=0)
    val, _ = make_shards(scratch / "val", max(args.rows // 10, BATCH), seed=1)
    manifest = read_manifest(train)
    print(f"shards written in {time.perf_counter() - started:.1f} s", flush=True)

    rates: dict[str, list[float]] = {}
    for r in range(args.rounds):
        runs = {
            "bridge, in the loop": (0, False, 0),
            "bridge, read-ahead thread, pinned": (0, pin, READ_AHEAD),
            "bridge, read-ahead thread, unpinned": (0, False, READ_AHEAD),
            f"bridge, {workers} DataLoader workers, pinned": (workers, pin, 0),
        }
        for label, (n, pinned, ahead) in runs.items():
            batches = bridge_batches(bridge_dataset(manifest, 0, 1), r, n, pinned, ahead)
            rows, rate = delivered(batches, device)
            assert rows == manifest.rows, (label, rows)
            rates.setdefault(label, []).append(rate)
        rows, rate = delivered(raw_batches(manifest), device)
        rates.setdefault(LIMIT, []).append(rate)
    print(f"\n== loaders: rows/s delivered on {device} (B={BATCH}), median of {args.rounds} ==")
    for label, runs_ in rates.items():
        print(f"  {label:44s} {median(runs_) / 1e6:7.2f} M rows/s")

    steps = args.steps
    times: dict[str, list[float]] = {}
    precisions = {"fp32": None, "bf16": torch.bfloat16} if pin else {"fp32": None}
    for r in range(args.rounds):
        ds = bridge_dataset(manifest, 0, 1, max_batches=steps)
        resident = list(on_device(bridge_batches(ds, 100 + r), device))
        for precision, amp in precisions.items():
            times.setdefault(f"{precision} in memory", []).append(
                train_epoch(iter(resident), device, amp)[0]
            )
            ds = bridge_dataset(manifest, 0, 1, max_batches=steps)
            fed = bridge_batches(ds, 100 + r, 0, pin, READ_AHEAD)  # as the trainer feeds it
            times.setdefault(f"{precision} fed by the bridge", []).append(
                train_epoch(fed, device, amp)[0]
            )
        del resident
    rows = steps * BATCH
    print(f"\n== {steps} steps of the small DLRM on {device} ({rows:,} rows), medians ==")
    for label, runs_ in times.items():
        print(f"  {label:44s} {median(runs_):7.3f} s  {rows / median(runs_) / 1e6:7.2f} M rows/s")

    trained = run_trainer(train, val, scratch / "trainer", device)
    print(
        f"\n== train_worker, 1 rank under torchrun: backend {trained['backend']}, "
        f"{trained['device']}, {trained['precision']} ==\n"
        f"  2 epochs, {trained['steps']} steps, {trained['rows_per_s']:,.0f} rows/s in the loop, "
        f"{trained['wall_s']:.1f} s with start-up\n"
        f"  holdout AUC per epoch {[round(a, 4) for a in trained['val_auc']]}; "
        f"Bayes-optimal {bayes:.4f}; gap {bayes - trained['val_auc'][-1]:.4f}"
    )

    shutil.rmtree(scratch)
    pinned = median(rates["bridge, read-ahead thread, pinned"])
    unpinned = median(rates["bridge, read-ahead thread, unpinned"])
    print()
    print(f"RATIO bridge_vs_limit_{device} {pinned / median(rates[LIMIT]):.3f}")
    print(f"RATIO pinned_vs_unpinned {pinned / unpinned:.3f}")
    for p in precisions:
        fed, resident = median(times[f"{p} fed by the bridge"]), median(times[f"{p} in memory"])
        print(f"RATIO epoch_vs_inmemory_{device}_{p} {fed / resident:.3f}")
    if "bf16" in precisions:
        speedup = median(times["fp32 in memory"]) / median(times["bf16 in memory"])
        print(f"RATIO bf16_vs_fp32_in_memory {speedup:.3f}")
    print(f"RATIO trainer_auc_gap {bayes - trained['val_auc'][-1]:.4f}")


if __name__ == "__main__":
    main()
