"""What the end-to-end tests share: a job submitted as a user submits it, its JSON
report, and the package built the way a cluster or Databricks receives it."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from sparkml_ext.session import DELTA_PACKAGE

REPO = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")
LOCAL = (str(SPARK_SUBMIT), "--properties-file", "conf/spark/local.conf")
# The short-lived JVMs the tests start (spark-submit drivers, a cluster's daemons and
# executors, Airflow's tasks) compile with C1 only: in a JVM that lives for one small job C2
# compiles more than it saves, and the JVMs share 2 cores (a 2,000-row ingest via
# spark-submit: 76 → 54 CPU-seconds). The suite's own driver, which lives for the whole run
# of an xdist worker (~2,000 CPU-seconds of Spark), keeps C2: after its first minutes a
# 12-row ingest costs 16 instead of 21 CPU-seconds and a small GBT fit 59 instead of 79
# (conftest.py's `spark`).
QUICK_JIT = "-XX:TieredStopAtLevel=1"
# The subprocess JVMs also map the classes a Spark + Delta job loads from one class-data-
# sharing archive (AppCDS) instead of loading and verifying them one by one: a small Delta
# job through spark-submit, 30 → 21 CPU-seconds. `jvm_archive()` builds it once per machine,
# JDK, pyspark and Delta (build/jvm/); a JVM started before it exists, or one whose class
# path differs from the archive's (a cluster daemon), just loads its classes as usual.
JVM_ARCHIVE = REPO / "build" / "jvm" / "spark-{}.jsa".format(hashlib.sha256(" ".join([
    os.path.realpath(shutil.which("java") or "java"), importlib.metadata.version("pyspark"),
    DELTA_PACKAGE]).encode()).hexdigest()[:12])
QUIET_CDS = "-Xlog:cds=off,cds+dynamic=off"  # a JVM that cannot use it says so on stdout otherwise
QUICK_JVMS = {"JAVA_TOOL_OPTIONS": f"{QUICK_JIT} -XX:SharedArchiveFile={JVM_ARCHIVE} {QUIET_CDS}"}
_archiving = threading.Lock()


def jvm_archive() -> Path:
    """JVM_ARCHIVE, dumped at the exit of one small Delta job unless it is there already.

    Written under a temporary name and renamed, so that no JVM maps a partial archive."""
    with _archiving:
        if not JVM_ARCHIVE.exists():
            JVM_ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
            partial = JVM_ARCHIVE.with_name(f"{JVM_ARCHIVE.name}.{os.getpid()}.tmp")
            dump = f"{QUICK_JIT} -XX:ArchiveClassesAtExit={partial} {QUIET_CDS}"
            env = {**os.environ, "JAVA_TOOL_OPTIONS": dump, "PYSPARK_PYTHON": sys.executable,
                   "PYSPARK_DRIVER_PYTHON": sys.executable}
            with tempfile.TemporaryDirectory() as table:
                job = subprocess.run([*LOCAL, str(REPO / "tests" / "jvm_archive_job.py"), table],
                                     check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
            assert job.returncode == 0 and partial.exists(), job.stdout[-3000:] + job.stderr[-3000:]
            os.replace(partial, JVM_ARCHIVE)
    return JVM_ARCHIVE


def submit(job: str, *args: str, launcher: tuple[str, ...] = LOCAL, timeout: float = 600
           ) -> subprocess.CompletedProcess:
    """`<launcher> jobs/<job>.py --pipeline conf/pipelines/clicks.yaml <args>` in the repo root."""
    env = {**os.environ, **QUICK_JVMS, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [*launcher, f"jobs/{job}.py", "--pipeline", "conf/pipelines/clicks.yaml", *args]
    return subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`sparkml-ext <argv>` in this process (the suite's Spark session): exit code, stdout, stderr."""
    from sparkml_ext.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def report_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout[-3000:]  # spark-submit puts Python's stderr there
    return json.loads(result.stdout[result.stdout.index("\n{") + 1:])


def reconciled_ingests(stages: dict) -> tuple[list[dict], int]:
    """A `pipeline` run's ingest reports and the rows they accepted, after checking them
    against what its generate stage landed: every row read once, read = accepted +
    quarantined, the malformed ones quarantined, and the features merged every accepted row."""
    generated = stages["generate"]
    ingested = [report for name, report in stages.items() if name.startswith("ingest ")]
    assert len(ingested) == generated["batches"]
    assert sum(i["rows_read"] for i in ingested) == generated["rows"]
    assert sum(i["accepted"] + i["quarantined"] for i in ingested) == generated["rows"]
    assert sum(i["quarantined"] for i in ingested) == generated["malformed"] > 0
    accepted = sum(i["accepted"] for i in ingested)
    assert stages["features"]["rows_merged"] == accepted
    return ingested, accepted


def build_wheel(out: Path) -> Path:
    """The wheel of the working tree (as `make dist` builds it), and beside it the same bytes
    as `sparkml_ext.zip` for `--py-files`; returns the wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(REPO)], check=True, cwd=REPO)
    (wheel,) = out.glob("sparkml_ext-*.whl")
    shutil.copyfile(wheel, out / "sparkml_ext.zip")
    return wheel


def cluster_script() -> ModuleType:
    """scripts/cluster.py as a module (its node venv and process helpers)."""
    spec = importlib.util.spec_from_file_location("cluster", REPO / "scripts" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
