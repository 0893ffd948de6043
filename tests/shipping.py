"""What the end-to-end tests share: a job submitted as a user submits it, its JSON
report, and the package built the way a cluster or Databricks receives it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")
LOCAL = (str(SPARK_SUBMIT), "--properties-file", "conf/spark/local.conf")
# Every JVM the tests start (the suite's own Spark driver, spark-submit drivers, a cluster's
# daemons and executors, Airflow's tasks) compiles with C1 only: on test-sized data C2
# compiles more than it saves, and the JVMs share 2 cores (a 2,000-row ingest via
# spark-submit: 76 → 54 CPU-seconds; test_features.py + test_encoders.py in the suite's own
# JVM: 251 → 180 CPU-seconds). Jobs on real data keep C2: it is what makes long runs fast.
QUICK_JIT = "-XX:TieredStopAtLevel=1"
QUICK_JVMS = {"JAVA_TOOL_OPTIONS": QUICK_JIT}


def submit(job: str, *args: str, launcher: tuple[str, ...] = LOCAL, timeout: float = 600
           ) -> subprocess.CompletedProcess:
    """`<launcher> jobs/<job>.py --pipeline conf/pipelines/clicks.yaml <args>` in the repo root."""
    env = {**os.environ, **QUICK_JVMS, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [*launcher, f"jobs/{job}.py", "--pipeline", "conf/pipelines/clicks.yaml", *args]
    return subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def report_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout[-3000:]  # spark-submit puts Python's stderr there
    return json.loads(result.stdout[result.stdout.index("\n{") + 1:])


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
