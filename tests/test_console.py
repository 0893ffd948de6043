"""What a CLI run shows: the job's own lines, not the JVM's (Ivy, log4j, WARN), which go to
the run's log file; one line for a failure. Through the real CLI in a subprocess, output
captured (not a TTY); each run starts a JVM."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from clickdata import CLICKS, line, write_batch
from pyspark.status import SparkStageInfo
from shipping import QUICK_JVMS

from sparkml_ext.cli import EXIT_FAILED, EXIT_INPUT, EXIT_OK
from sparkml_ext.console import StageProgress

REPO = Path(__file__).resolve().parents[1]
JVM_NOISE = [":: resolving dependencies", "confs:", "artifacts", " WARN ", "log4j"]


def cli(root: Path, *argv: str) -> tuple[int, str]:
    """`sparkml-ext <argv>` over `root`'s lakehouse and landing: exit code, stdout and stderr
    together. Logs go under `root/state` ($XDG_STATE_HOME). The JVM starts as the tests' other
    short-lived JVMs do (shipping.QUICK_JVMS)."""
    env = {**os.environ, **QUICK_JVMS, "XDG_STATE_HOME": str(root / "state")}
    where = ["--pipeline", CLICKS, "--set", f"lakehouse={root}/lake", "--set", f"source.path={root}/landing"]
    run = subprocess.run([sys.executable, "-m", "sparkml_ext.cli", *argv, *where], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    return run.returncode, run.stdout


def noise(output: str) -> list[str]:
    return [shown for shown in output.splitlines() if any(mark.lower() in shown.lower() for mark in JVM_NOISE)]


def test_a_job_shows_its_own_lines_and_a_failure_in_one(tmp_path):
    write_batch(tmp_path / "landing" / "b1", [line(f"e{i}", label=str(i % 2)) for i in range(12)])
    code, output = cli(tmp_path, "ingest", "--batch-id", "b1")

    assert code == EXIT_OK, output
    assert noise(output) == []
    assert "ingest batch b1: read 12, accepted 12, quarantined 0" in output
    (log,) = re.findall(r"^spark: (?:UI at \S+; )?log: (\S+\.log)$", output, re.MULTILINE)
    kept = Path(log).read_text()
    assert Path(log).parent == tmp_path / "state" / "sparkml-ext" / "logs"
    assert ":: resolving dependencies" in kept and "log4j" in kept

    (part,) = (tmp_path / "lake" / "bronze").rglob("*.parquet")
    part.write_text("not parquet\n")  # a table damaged behind Delta's back
    code, output = cli(tmp_path, "features")

    assert code == EXIT_FAILED, output
    assert noise(output) == [] and "Traceback" not in output
    (failed,) = [shown for shown in output.splitlines() if shown.startswith("features failed: ")]
    assert re.search(rf"{re.escape(part.name)}.*; full log: \S+\.log$", failed), failed
    log = failed.rpartition("; full log: ")[2]
    assert "Traceback (most recent call last)" in Path(log).read_text()


def test_verbose_shows_the_jvm_output_and_keeps_no_log(tmp_path):
    code, output = cli(tmp_path, "features", "--verbose")

    assert code == EXIT_INPUT, output  # no bronze table yet
    assert ":: resolving dependencies" in output and "log4j" in output
    assert "features refused: no bronze table" in output
    # no log named: neither the session's `spark: ... log: <file>` line nor a failure's `full log:`
    assert not re.search(r"^spark: .*log: |full log: ", output, re.MULTILINE) and not (tmp_path / "state").exists()


def test_the_progress_line_makes_way_for_the_jobs_own_lines(monkeypatch):
    class Tracker:  # pyspark's StatusTracker, as far as the progress line reads it
        def __init__(self) -> None:
            self.stages = {7: SparkStageInfo(7, 0, "save", 64, 2, 12, 0)}

        def getActiveStageIds(self) -> list[int]:
            return list(self.stages)

        def getStageInfo(self, stage: int) -> SparkStageInfo | None:
            return self.stages.get(stage)

    monkeypatch.setattr("sparkml_ext.console.POLL_SECONDS", 3600)  # polled by hand below
    screen = io.StringIO()  # stdout and stderr on one terminal
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    tracker = Tracker()
    progress = StageProgress(tracker, "features")
    progress.start()
    progress.poll()
    print("features: 12 rows")
    print("half a line", end="")
    progress.poll()  # not over someone else's line
    print()
    tracker.stages = {}
    progress.poll()
    progress.stop()

    assert sys.stdout is screen and sys.stderr is screen
    assert screen.getvalue() == ("features: stage 7 12/64 tasks\r\x1b[Kfeatures: 12 rows\n"
                                 "half a line\n")
