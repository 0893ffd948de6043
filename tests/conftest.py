"""One local SparkSession with Delta for the whole test run (real Spark, real Delta)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback import free_port

# MLflow tracking is tested in test_tracking.py (which switches it on); elsewhere every
# tracked MLlib model would be saved, copied and reloaded by MLflow (~20 s a fit). The
# spark-submit and Airflow tests' jobs inherit this too.
os.environ.setdefault("SPARKML_EXT_TRACKING", "disabled")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from sparkml_ext.session import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_spark(
        "sparkml_ext-tests",
        {
            "spark.master": "local[2]",
            "spark.sql.shuffle.partitions": "2",
            "spark.ui.enabled": "false",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse}",  # C2 too: see shipping.QUICK_JIT
            # Expressions interpreted rather than compiled to Java per plan (Spark's own test
            # suites run both modes; results are the same): on the suite's data, a few rows to a
            # few thousand, compiling costs more than it saves. One process's 12-row ingest 20 ->
            # 14 CPU-s, features 20 -> 13, a small GBT fit 61 -> 52. This mode also turns whole-stage
            # code generation off (Spark inserts it only when the mode is not NO_CODEGEN), so only
            # the subprocess jobs run generated stages: they keep Spark's defaults, as users run.
            "spark.sql.codegen.factoryMode": "NO_CODEGEN",
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def fresh_lake(spark, tmp_path_factory, request) -> Callable[[str], Path]:
    """`fresh_lake(name)`: a private copy of one small lakehouse (4,000 events, 1% malformed,
    ingested, feature table built), which is built once per run, when first asked for (by
    whichever xdist worker asks first, under a lock; the other copies it too).

    The copy has `lake/` and `landing/`; a test that trains or scores writes only to its own.
    """
    from clickdata import clicks_config

    from sparkml_ext.cli import seed_lakehouse
    from sparkml_ext.config import GenerateConfig

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if _in_xdist_worker(request.config) else base  # the run's, above the workers'
    built = shared / "clicks-lake"
    with open(shared / "clicks-lake.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built / "built").exists():
            shutil.rmtree(built, ignore_errors=True)
            seed_lakehouse(spark, clicks_config(built), GenerateConfig(rows=4000, malformed_rate=0.01))
            (built / "built").touch()

    def copy(name: str) -> Path:
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(built, root, dirs_exist_ok=True)
        return root

    return copy


@dataclass
class ClusterRun:
    """`pipeline` as one spark-submit to a standalone cluster; see `cluster_pipeline`."""

    root: Path  # lake/, landing/, cluster/ (the cluster's work folder), dist/
    stdout: str  # the driver's and the forwarded DDP ranks' output, then the JSON report
    stages: dict  # each stage's report, by stage name
    stopped: subprocess.CompletedProcess  # `cluster.py stop`
    left_running: list[int]  # processes under the work folder after the stop


# The tiny pipeline that tests/test_cluster.py and tests/test_report.py look at.
CLUSTER_PIPELINE = [
    "generate.rows=3000", "generate.batches=2", "generate.malformed_rate=0.01",
    "train_mllib.params={maxIter: 3, seed: 7}", "train_mllib.grid={}",
    "train_torch.local_mode=false", "train_torch.num_processes=2", "train_torch.epochs=2",
    "train_torch.batch_size=128", "train_torch.embedding_rows=1024", "tracking.mode=auto",
]


def run_cluster_pipeline(root: Path) -> ClusterRun:
    """One `pipeline` run as a user runs it on a cluster (`make cluster-start cluster-demo
    cluster-stop`): a master and two workers on 127.0.0.1 whose Python lacks sparkml_ext, the
    package shipped only as the `--py-files` zip, DDP ranks in barrier mode, MLflow on.

    The suite's most expensive run, shared: the cluster test checks how it ran, the report
    test the page it ended with.
    """
    from shipping import (
        QUICK_JVMS,
        REPO,
        build_wheel,
        cluster_script,
        jvm_archive,
        report_of,
        submit,
    )

    jvm_archive()
    cluster = cluster_script()
    work = root / "cluster"
    archive = build_wheel(root / "dist").with_name("sparkml_ext.zip")
    script = [sys.executable, str(REPO / "scripts" / "cluster.py"), "--work-dir", str(work)]
    where = [f"lakehouse={root}/lake", f"generate.landing={root}/landing", f"source.path={root}/landing"]
    try:
        ports = ["--port", str(free_port()), "--webui-port", str(free_port())]
        subprocess.run([*script, "start", *ports], check=True, timeout=300, env={**os.environ, **QUICK_JVMS})
        node = subprocess.run([work / "node-env" / "bin" / "python", "-P", "-c", "import sparkml_ext"],
                              cwd=work, capture_output=True, text=True, check=False)
        assert "No module named 'sparkml_ext'" in node.stderr  # only the archive can provide it
        run = submit("pipeline", *[f"--set={s}" for s in [*where, *CLUSTER_PIPELINE]], "--json",
                     launcher=(*script, "submit", "--archive", str(archive)), timeout=1800)
    finally:
        stopped = subprocess.run([*script, "stop"], capture_output=True, text=True, timeout=300, check=False)
    return ClusterRun(root, run.stdout, report_of(run), stopped, cluster.processes_under(work))


def run_airflow_dag(work: Path):
    from airflowkit import run_dag_twice
    from shipping import jvm_archive

    jvm_archive()
    return run_dag_twice(work)


def run_concurrent_ingests(root: Path):
    from faultkit import run_concurrent_ingests

    return run_concurrent_ingests(root)


# The suite's long runs of subprocesses (spark-submit to a cluster, Airflow, two concurrent
# ingests): nothing in them needs this process's Spark, so they run in threads while tests
# run in-process. Each is the session fixture of the same name, which waits for its run.
BACKGROUND: dict[str, Callable[[Path], object]] = {
    "cluster_pipeline": run_cluster_pipeline,
    "airflow_dag_runs": run_airflow_dag,
    "concurrent_ingests": run_concurrent_ingests,
}
# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): each
# module is one unit of work (its module fixtures are built once), and the tests of the
# BACKGROUND runs are one more, queued first, so that one worker starts the runs at once and
# waits for them while the other works through the modules. A single process (plain
# `pytest`) starts the runs when the session starts and checks them last.


def _in_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, `__main__` is execnet's, with neither `__spec__` nor `__file__`:
    pyspark's Spark Connect dependency check (which `mlflow.spark.log_model` imports) takes
    that for a doctest run and calls `sys.exit(0)`. Give it the `__file__` that
    `python -m pytest` has, pytest's `__main__.py` (its code is guarded by `__name__`)."""
    main = sys.modules["__main__"]
    if _in_xdist_worker(config) and main.__spec__ is None and not hasattr(main, "__file__"):
        main.__file__ = str(Path(pytest.__file__).with_name("__main__.py"))


def _needs_background(item: pytest.Item) -> bool:
    return bool(BACKGROUND.keys() & set(item.fixturenames))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _in_xdist_worker(config):
        items.sort(key=_needs_background)  # stable: the background runs' tests last
        return
    for item in items:
        group = "background" if _needs_background(item) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: not _needs_background(item))  # queued first


class BackgroundRuns:
    """The BACKGROUND runs this process's tests need, each in a thread of `pool`, all started
    by `start()` (at once, so that they overlap each other)."""

    def __init__(self, pool: ThreadPoolExecutor, folders: pytest.TempPathFactory, names: list[str]) -> None:
        self.pool, self.folders, self.names = pool, folders, names
        self.runs: dict[str, Future] = {}

    def start(self) -> None:
        if not self.runs:
            self.runs = {name: self.pool.submit(BACKGROUND[name], self.folders.mktemp(name)) for name in self.names}

    def result(self, name: str):
        self.start()
        return self.runs[name].result()


@pytest.fixture(scope="session", autouse=True)
def background_runs(request, tmp_path_factory) -> Iterator[BackgroundRuns]:
    """Started now in a single process; in an xdist worker, by the first test that needs one
    (the worker given the background group; every worker collects every test)."""
    wanted = [name for name in BACKGROUND if any(name in item.fixturenames for item in request.session.items)]
    with ThreadPoolExecutor(max_workers=len(BACKGROUND), thread_name_prefix="background") as pool:
        runs = BackgroundRuns(pool, tmp_path_factory, wanted)
        if not _in_xdist_worker(request.config):
            runs.start()
        yield runs


@pytest.fixture(scope="session")
def cluster_pipeline(background_runs) -> ClusterRun:
    return background_runs.result("cluster_pipeline")


@pytest.fixture(scope="session")
def airflow_dag_runs(background_runs):
    """`airflowkit.DagRuns`: the DAG's two `dags test` runs of one interval."""
    return background_runs.result("airflow_dag_runs")


@pytest.fixture(scope="session")
def concurrent_ingests(background_runs):
    """`faultkit.ConcurrentIngests`: two ingest jobs at once into one table."""
    return background_runs.result("concurrent_ingests")


def _tree_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live descendants (its JVM, a
    background run's spark-submits): what a test cost, whichever process did the work."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or gone
        parent[int(entry)], cpu[int(entry)] = int(fields[1]), sum(map(int, fields[11:15])) / tick
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    own = os.times()
    total, todo = own.user + own.system + own.children_user + own.children_system, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += cpu[pid]
        todo += children.get(pid, [])
    return total


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """With SPARKML_EXT_TEST_TIMELINE=<file>: one JSON line per test (worker, start, end in
    epoch seconds, and the CPU seconds of the worker's process tree) appended to the file,
    to see where a run's CPU goes, how the workers overlap the background runs and where
    the run's tail is (`make test` prints only the slowest 15)."""
    timeline = os.environ.get("SPARKML_EXT_TEST_TIMELINE")
    started, cpu = time.time(), _tree_cpu_seconds() if timeline else 0.0
    try:
        return (yield)
    finally:
        if timeline:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(timeline, "a") as out:
                out.write(json.dumps({"test": item.nodeid, "worker": worker, "start": started,
                                      "end": time.time(), "cpu": round(_tree_cpu_seconds() - cpu, 2)}) + "\n")
