"""What a CLI run shows on the terminal: the job's own lines and progress, not the JVM's.

An embedded run whose process has no JVM yet starts it with its stdout and stderr appended
to a log file of the run's own (`session.get_spark(jvm_output=...)`), so Ivy's resolution
report, log4j's notices and Spark's WARN lines land there. The console keeps the job's own
lines, one `spark: UI at <url>; log: <file>` line once the session is up and, on a TTY and
not under `--json`, one line of running Spark stages redrawn in place. A job that fails
unexpectedly prints one line of cause and the log file, which gets the traceback.

`--verbose`, or a `--log-level` above ERROR, leaves everything on the console, as it was.
spark-submit and Databricks runs are untouched (their launcher owns the JVM and its
output, and a failure's traceback goes to their driver log), and so is a process whose JVM
runs already (the test suite's session): nothing is redirected, failures raise as before.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KEEP_LOGS = 50  # a run's log outlives it for a post-mortem; older ones are removed
POLL_SECONDS = 0.5


def log_dir() -> Path:
    """`$XDG_STATE_HOME/sparkml-ext/logs` (`~/.local/state/...`), XDG's place for logs.

    Not the lakehouse: it may be an object store that Python cannot open, a job it refuses
    must leave nothing behind there, and `init` has none; the JVM's output is this machine's.
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "sparkml-ext" / "logs"


def new_log(job: str) -> Path:
    """A fresh log file name for one run of `job`, after removing all but the newest logs."""
    folder = log_dir()
    if folder.is_dir():
        for old in sorted(folder.glob("*.log"), key=lambda path: path.stat().st_mtime)[:-KEEP_LOGS]:
            old.unlink(missing_ok=True)
    return folder / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def cause(err: BaseException) -> str:
    """One line of what went wrong. py4j's own message names only the JVM call ("An error
    occurred while calling o42.save"), so a JVM error says it in its own words, followed by
    its innermost cause (a wrapper says where, the innermost cause what: "... is not a
    Parquet file"), or the cause above it where that one restates it with where ("Connect to
    host:port failed: Connection refused" over "Connection refused")."""
    from py4j.protocol import Py4JError, Py4JJavaError

    said = [f"{type(err).__name__}: {err}"]
    if isinstance(err, Py4JJavaError):
        try:
            from sparkml_ext.session import java_causes

            chain = java_causes(err)
            innermost = chain[-1]
            if len(chain) > 2 and _message(innermost) and _message(chain[-2]).endswith(_message(innermost)):
                innermost = chain[-2]  # it restates the innermost with where ("Connect to host:port failed: …")
            said = [chain[0].toString()] + [innermost.toString()] * (len(chain) > 1)
        except Py4JError:  # the JVM is gone: py4j's message is all there is
            said = [str(err)]
    lines = [next((line.strip() for line in text.splitlines() if line.strip()), "") for text in said]
    return "; caused by ".join(line for line in lines if line) or type(err).__name__


def _message(java_exception: Any) -> str:
    return str(java_exception.getMessage() or "")


class Console:
    """One CLI run's terminal: `session()` starts Spark quietly, `failed()` words a failure."""

    def __init__(self, job: str, log_level: str = "ERROR", *, verbose: bool = False,
                 as_json: bool = False) -> None:
        from sparkml_ext.session import jvm_running

        self.job, self.log_level = job, log_level
        self._starts_jvm = not jvm_running()  # still to start, and announce once started
        quiet = self._starts_jvm and not verbose and log_level == "ERROR"
        self.log: Path | None = new_log(job) if quiet else None  # None: all on the console
        self._show_progress = quiet and not as_json and sys.stderr.isatty()
        self._progress: StageProgress | None = None

    def session(self, app_name: str, conf: Mapping[str, str] | None = None) -> SparkSession:
        """The process's session at this run's log level; the JVM this run starts is
        announced, and its stages shown on a TTY."""
        from sparkml_ext.session import get_spark

        spark = get_spark(app_name, conf, jvm_output=self.log)
        spark.sparkContext.setLogLevel(self.log_level)
        if self._starts_jvm:
            self._starts_jvm = False
            self._announce(spark)
            if self._show_progress:
                self._progress = StageProgress(spark.sparkContext.statusTracker(), self.job)
                self._progress.start()
        return spark

    def _announce(self, spark: SparkSession) -> None:
        url = spark.sparkContext.uiWebUrl  # None when spark.ui.enabled is false
        said = [f"UI at {url}"] * bool(url) + [f"log: {self.log}"] * bool(self.log)
        if said:
            print(f"spark: {'; '.join(said)}", file=sys.stderr, flush=True)

    def failed(self, err: BaseException) -> bool:
        """One line on the console and the traceback in the run's log; False (nothing said)
        when the run has no log of its own, so that the error raises as it always did."""
        self.close()
        if self.log is None:
            return False
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            log.write(f"\nsparkml-ext {self.job} failed:\n")
            log.writelines(traceback.format_exception(err))
        print(f"{self.job} failed: {cause(err)}; full log: {self.log}", file=sys.stderr)
        return True

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StageProgress:
    """One line on stderr, redrawn every half second, with each running stage's finished
    and total tasks; erased when none runs. While it runs, sys.stdout and sys.stderr erase
    it before anything else is written, so the job's own lines never share it."""

    def __init__(self, tracker: Any, label: str, stream: TextIO | None = None) -> None:
        self.tracker, self.label = tracker, label  # tracker: pyspark's StatusTracker
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._drawn = False  # our line is on the screen
        self._mid_line = False  # someone else's line is half written: do not draw over it
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
        self._streams: tuple[TextIO, TextIO] | None = None

    def start(self) -> None:
        self._streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Erasing(sys.stdout, self), _Erasing(sys.stderr, self)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
        with self._lock:
            self._erase()

    def _run(self) -> None:
        from py4j.protocol import Py4JError

        while not self._done.wait(POLL_SECONDS):
            try:
                self.poll()
            except Py4JError:  # the JVM is going away with the run: nothing left to show
                return

    def poll(self) -> None:
        """Redraw the line from the tracker's running stages."""
        stages = [self.tracker.getStageInfo(stage) for stage in sorted(self.tracker.getActiveStageIds())]
        parts = [f"stage {s.stageId} {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages if s]
        line = f"{self.label}: {', '.join(parts)}"[:shutil.get_terminal_size().columns - 1]
        with self._lock:
            if self._mid_line:
                return
            self._erase()
            if parts:
                self.stream.write(line)
                self.stream.flush()
                self._drawn = True

    def write_through(self, stream: TextIO, text: str) -> int:
        """Write `text` to `stream` (stdout or stderr) on a line of its own."""
        with self._lock:
            self._erase()
            self._mid_line = not text.endswith("\n")
            return stream.write(text)

    def _erase(self) -> None:  # with the lock held
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


class _Erasing:
    """A text stream that lets `progress` erase its line before each write."""

    def __init__(self, stream: TextIO, progress: StageProgress) -> None:
        self._stream, self._progress = stream, progress

    def write(self, text: str) -> int:
        return self._progress.write_through(self._stream, text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
