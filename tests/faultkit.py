"""Fault injection for tests: real processes killed with SIGKILL, real files, real mounts.

Also a tiny Spark job (`python tests/faultkit.py retry-job ...`) whose tasks fail on their
first attempt, for the task-retry test: it needs its own JVM with `local[2,4]`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from clickdata import line, write_batch  # noqa: E402
from shipping import QUICK_JVMS  # noqa: E402

SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")


def click_lines(prefix: str, rows: int, users: int = 40) -> list[str]:
    """`rows` valid events with distinct ids, spread over users, a week and both labels."""
    return [
        line(f"{prefix}-{i}", user_id=str(i % users + 1),
             event_time=f"2026-01-0{i % 7 + 1} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}",
             label=str(i % 2), numeric=str(i % 97 / 10))
        for i in range(rows)
    ]


def submit_command(job: str, *args: str) -> list[str]:
    return [str(SPARK_SUBMIT), "--properties-file", "conf/spark/local.conf", f"jobs/{job}.py",
            "--pipeline", "conf/pipelines/clicks.yaml", *args]


def launch(command: Sequence[str], log: Path) -> subprocess.Popen:
    """Start `command` as the leader of a new process group, output to `log`."""
    env = {**os.environ, **QUICK_JVMS, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    with open(log, "wb") as out:
        return subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> tuple[int, str]:
    """Wait for a launched command; its exit code and output (spark-submit merges stderr)."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    return code, log.read_text(errors="replace")


@dataclass
class ConcurrentIngests:
    root: Path  # lake/ and landing/
    batches: dict[str, list[str]]  # each batch's lines, by batch id
    outcomes: dict[str, tuple[int, str]]  # each job's exit code and output, by batch id


def run_concurrent_ingests(root: Path) -> ConcurrentIngests:
    """Two ingest jobs, separate Spark applications, appending one 2,000-line batch each to
    the same new bronze table at the same time. Needs nothing of the test process's Spark,
    so conftest.py runs it in the background."""
    batches = {f"b{i}": click_lines(f"b{i}", 2_000) for i in (1, 2)}
    for name, lines in batches.items():
        write_batch(root / "landing" / name, lines)
    where = [f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing"]
    procs = {name: launch(submit_command("ingest", "--batch-id", name, *where), root / f"{name}.log")
             for name in batches}
    return ConcurrentIngests(root, batches, {name: finish(proc, root / f"{name}.log") for name, proc in procs.items()})


def group_members(pgid: int) -> list[int]:
    """Live processes of one process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL a launched command's whole process group (spark-submit, its JVM, Python)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while group_members(proc.pid):
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {group_members(proc.pid)}"
        time.sleep(0.05)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str,
             timeout: float = 300) -> None:
    """Poll `condition` every 10 ms while `proc` runs; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the job ended (exit {proc.returncode}) before {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            kill_group(proc)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def data_files(table: Path) -> set[Path]:
    """Every Parquet file under a table's folder, committed or not."""
    return {p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}


def commits(table: Path) -> list[str]:
    log = table / "_delta_log"
    return sorted(p.name for p in log.glob("*.json")) if log.is_dir() else []


@contextmanager
def mounted(target: Path, kind: str, size: str = "1m"):
    """Mount over `target` for the block: a `tmpfs` of `size`, or a `readonly` view of it.

    Skips (with the reason) where mounting is refused: it needs root with CAP_SYS_ADMIN.
    """
    target.mkdir(parents=True, exist_ok=True)
    steps = {"tmpfs": [["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)]],
             "readonly": [["mount", "--bind", str(target), str(target)],
                          ["mount", "-o", "remount,ro,bind", str(target)]]}[kind]
    done = 0
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot mount here ({' '.join(step)}: {result.stderr.strip()})")
            done += 1
        yield target
    finally:
        if done:  # lazy: after a failed write the JVM may still hold a file open there
            subprocess.run(["umount", "--lazy", str(target)], check=True)


def retry_job(lakehouse: str, markers: str) -> None:
    """Append and MERGE through `lake` with tasks that fail on attempt 0, under local[2,4].

    Each failing task first yields half its rows (so the failed attempt has started
    writing a file) and leaves a marker file naming its partition and attempt.
    """
    from pyspark import TaskContext

    from sparkml_ext import lake
    from sparkml_ext.session import get_spark

    spark = get_spark("faultkit-retry", {"spark.master": "local[2,4]", "spark.ui.enabled": "false",
                                         "spark.sql.shuffle.partitions": "4"})
    spark.sparkContext.setLogLevel("ERROR")
    assert spark.conf.get("spark.speculation") == "false"
    # small Arrow batches, so every task yields some rows before it fails
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")

    def fail_first_attempt(batches):
        context = TaskContext.get()
        for number, batch in enumerate(batches):
            if number == 1 and context.attemptNumber() == 0:
                Path(markers, f"p{context.partitionId()}-a0").touch()
                raise RuntimeError("injected failure on attempt 0")
            yield batch

    def flaky(df):
        return df.repartition(4).mapInArrow(fail_first_attempt, df.schema)

    rows = spark.range(0, 1000).selectExpr("id", "id % 7 as part", "'v1' as value")
    lake.append_once(flaky(rows), f"{lakehouse}/appended", app_id="retry:0", partition_by=["part"])
    lake.merge_by_key(flaky(rows.selectExpr("id", "part", "'v2' as value")), f"{lakehouse}/merged", "id",
                      metadata={"job": "retry"})
    changes = spark.range(500, 1500).selectExpr("id", "id % 7 as part", "'v3' as value")
    lake.merge_by_key(flaky(changes), f"{lakehouse}/merged", "id", metadata={"job": "retry"})
    spark.stop()


if __name__ == "__main__":
    if sys.argv[1] == "retry-job":
        retry_job(sys.argv[2], sys.argv[3])


class CuttableLink:
    """A TCP relay on loopback in front of a server, that a test cuts and restores: cut, every
    open connection is reset and new ones are refused, as if the server had gone away, while
    the server itself (and what it stores) lives on."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = self._listen(0)  # restored on the same port

    def restore(self) -> None:
        self._listen(self.port)

    def _listen(self, port: int) -> int:
        listener = socket.create_server(("127.0.0.1", port))
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener.getsockname()[1]

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            live, self._open = self._open, []
        if listener is not None:
            listener.close()
        for conn in live:  # the client sees the connection die
            _reset(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:  # the server itself is gone: so is this connection
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            self._relay(client, server)

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        _close(source, sink)


def _close(*ends: socket.socket) -> None:
    for end in ends:
        with contextlib.suppress(OSError):
            end.close()


def _reset(end: socket.socket) -> None:
    """End the connection now, and with a reset (linger 0) once closed, not a polite close.
    The shutdown wakes the pump blocked reading it: a socket closed under a blocked reader
    stays open in the kernel, and its peer would wait for a timeout."""
    with contextlib.suppress(OSError):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        end.shutdown(socket.SHUT_RDWR)
    _close(end)


class LostReplyLink(CuttableLink):
    """A relay that loses one reply: the first `PUT /<path>` reaches the server and is acted
    on, and the client's connection is reset instead of hearing the answer (an interim
    `100 Continue` still passes), as when a network drops a reply that S3 has already
    acted on. The client's retry then meets its own object. `lost` is set once it happened."""

    def __init__(self, upstream_port: int, path: str) -> None:
        self.request, self.lost = f"PUT /{path} ".encode(), threading.Event()
        super().__init__(upstream_port)

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        aimed = threading.Event()  # this connection carries the request whose reply goes
        threading.Thread(target=self._requests, args=(client, server, aimed), daemon=True).start()
        threading.Thread(target=self._replies, args=(server, client, aimed), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, aimed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if data.startswith(self.request) and not self.lost.is_set():
                    aimed.set()  # before the server can have seen the request
                server.sendall(data)
        _close(client, server)

    def _replies(self, server: socket.socket, client: socket.socket, aimed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if aimed.is_set() and not data.startswith(b"HTTP/1.1 100 "):
                    self.lost.set()
                    _reset(client)
                    break
                client.sendall(data)
        _close(server, client)
