"""Per-run overhead of starting 2 DDP ranks: plain torchrun vs TorchDistributor vs launch.

Every way runs the same trivial rank (gloo init, one all_reduce, teardown), side by
side and interleaved. Usage: python benchmarks/bench_bridge_launch.py [repeats]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from pyspark import cloudpickle
from pyspark.ml.torch.distributor import TorchDistributor

from sparkml_ext.bridge import launch
from sparkml_ext.session import get_spark

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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(repeats: int) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spark = get_spark("bench-bridge-launch", {"spark.master": "local[2]"})
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(RANK_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    ways = {
        "torchrun": lambda: subprocess.run(
            [*torchrun, "--nproc_per_node=2", script.name], check=True, capture_output=True
        ),
        "TorchDistributor local": lambda: TorchDistributor(2, True, False).run(trivial_rank),
        "launch local": lambda: launch(trivial_rank, num_processes=2),
        "TorchDistributor barrier": lambda: TorchDistributor(2, False, False).run(trivial_rank),
        "launch barrier": lambda: launch(trivial_rank, num_processes=2, local_mode=False),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            seconds[name].append(timed(way))
    os.remove(script.name)
    medians = {name: statistics.median(t) for name, t in seconds.items()}
    for name, median in medians.items():
        print(f"{name:26s} {median:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in seconds[name])})")
    for name in list(ways)[1:]:
        key = name.lower().replace(" ", "_")
        print(f"RATIO {key}_over_torchrun {medians[name] / medians['torchrun']:.2f}")
    spark.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
