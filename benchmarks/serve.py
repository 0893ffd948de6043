"""Online scoring over HTTP (`sparkml-ext serve`) against the batch score job, on the same events.

Usage (from the repository root):

    timeout 1500 .venv/bin/python benchmarks/serve.py            # 22,000 rows: 4 min here (1 min build)
    timeout 900 .venv/bin/python benchmarks/serve.py --quick     # 6 s per level, one batch run
    .venv/bin/python benchmarks/serve.py --rows 4000 --quick     # a smoke run
    .venv/bin/python benchmarks/serve.py --server-env OMP_NUM_THREADS=1   # a variant of the server's env

Builds (or reuses, when an earlier run built one with the same --rows) a small click
lakehouse under data/generated/bench/serve/: generated events in 2 time-sliced batches,
batch 0 ingested, features, a torch model (1 epoch, small tables), batch 1 ingested,
features again, publish-online. Batch 1's events are thus held out of training; their
bronze rows (raw source columns, timestamps as ISO strings in UTC) become the requests.
MLflow tracking is off (SPARKML_EXT_TRACKING=disabled).

Then, one after the other, never two at once (2 cores):

* the batch path: `score(spark, cfg, "torch/latest")` over the whole feature table (both
  batches), timed --batch-runs times in one SparkSession (local[2]); batch seconds per row
  = the median run's seconds ÷ the rows it scored. The Spark session is then stopped.
* a reference without HTTP: `Scorer.score` of one event per call in this process, from as
  many threads as each client level, each call in its own thread at once (what the server
  did before it batched: the rows show why it queues requests and scores them together in
  one call; torch called from the main thread, with its 2 intra-op threads, was measured
  10x slower here on a busy machine);
* the real server, started as a subprocess through the CLI (`sparkml-ext serve` with the
  same --set overrides, on a free port) and waited on until GET /health answers 200;
  then for each --clients level (1, 8, 32), after a warm-up, each client sends one event
  per POST /score, one request after another, over its own persistent HTTP/1.1
  connection (http.client; httpx is not installed) for a fixed time. p50/p90/p99/max
  latency and events/s (= requests/s) per level, and the server's thread count after
  it (/proc). Every answer must be a 200 carrying the
  event's key and a finite score, else the run fails. The server is stopped at the end,
  also when the run fails.

Clients are threads of this one process, not processes: on 2 cores the client's own CPU
competes with the server's. Python threads share one GIL, so the client uses at most one
core, and the server (one uvicorn process) always keeps the other; 8 or 32 client
processes could take both cores from it and would measure the client. The table gives
the CPU milliseconds per request of the server process and of this client process, so
what each cost is visible; the client's are also part of the measured latency (a thread
waits for the GIL to read its answer), so the HTTP numbers are an upper bound.

Scores the server returned are compared with the batch job's predictions of the same
event ids (the same model and feature version), as a check that both paths score alike.

Output: the table, the batch runs, and `RATIO serve_p99_ms` (p99 of one-event requests at
8 clients, ms; goal ≤ 20 on this machine) and `RATIO serve_vs_batch_per_row` (online
seconds per row, 1 ÷ events/s at 8 clients, over batch score seconds per row; above 1 means
a row costs more online than in batch). The load average is printed before and after
each phase: the machine is shared, quote it with the numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from sparkkit import remove

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from loopback import free_port  # a development script, not a package

PIPELINE = ROOT / "conf" / "pipelines" / "clicks.yaml"
WORK = ROOT / "data" / "generated" / "bench" / "serve"
MODEL = "torch/latest"
HELD_OUT = "batch-00001"
# Small training knobs (the model's quality is not measured here) and a late tolerance that
# makes every held-out event scorable: the batches split about a week in two halves.
OVERRIDES = ["train_torch.epochs=1", "train_torch.batch_size=256", "train_torch.embedding_rows=1024",
             "online.late_tolerance=4d"]
AGREE = 1e-4  # |online score - batch score| accepted as the same (the model runs in float32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=22_000, help="generated events, both batches (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter windows: 1 s warm-up, 5 s per level, one batch run (unless given)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per level (default 20; quick 5)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per level (default 3; quick 1)")
    parser.add_argument("--batch-runs", type=int, default=None, help="timed batch score runs (default 3; quick 1)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server process only (repeatable), e.g. "
                             "OMP_NUM_THREADS=1 to try a variant of the server")
    parser.add_argument("--rebuild", action="store_true", help="build the lakehouse again even if one matches")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    if args.rows < 2000:
        parser.error("--rows must be at least 2000")
    if 8 not in args.clients:
        parser.error("--clients must include 8 (the ratios are taken at 8 clients)")
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.batch_runs = args.batch_runs or (1 if args.quick else 3)
    args.work = args.work.resolve()
    if any("=" not in x for x in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    return args


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def overrides(work: Path) -> list[str]:
    return [f"lakehouse={work / 'lake'}", f"source.path={work / 'landing'}", *OVERRIDES]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))]


def progress(r: dict) -> None:
    threads = f", server threads {r['server_threads']}" if r["server_threads"] else ""
    print(f"  .. {r['name']}: {r['requests']:,} requests, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
          f"{r['rate']:.0f}/s{threads} (load {load()})", flush=True)


def stamp(what: str, started: float) -> None:
    print(f"  .. {what}: {time.perf_counter() - started:.1f} s (load {load()})", flush=True)


# ------------------------------------------------------------------ the lakehouse

def prepare_lake(spark, cfg, args) -> dict:
    """Build the lakehouse (or reuse a matching one); what the marker records."""
    from sparkml_ext.cli import generate_into_source
    from sparkml_ext.config import GenerateConfig
    from sparkml_ext.features import build_features
    from sparkml_ext.ingest import ingest_batch
    from sparkml_ext.online.publish import publish_online
    from sparkml_ext.train_torch import train_torch

    marker = args.work / "lake.json"
    wanted = {"rows": args.rows, "seed": args.seed, "overrides": OVERRIDES}
    if not args.rebuild and marker.exists() and os.path.exists(cfg.online_store()):
        known = json.loads(marker.read_text())
        if {k: known.get(k) for k in wanted} == wanted:
            print(f"reusing the lakehouse of an earlier run under {args.work} (built in {known['build_s']:.0f} s)")
            return {**known, "reused": True}
        print(f"{marker} records {known}, not {wanted}: rebuilding")
    remove(*(args.work / sub for sub in ("lake", "landing", "lake.json")))
    print(f"building the lakehouse under {args.work} ({args.rows:,} rows)", flush=True)
    started = time.perf_counter()
    generated = generate_into_source(spark, cfg, GenerateConfig(rows=args.rows, seed=args.seed, batches=2,
                                                                malformed_rate=0.0))
    stamp(generated["summary"], started)
    batches = sorted(folder.rstrip("/").rpartition("/")[2] for folder in generated["batch_dirs"])
    if batches != ["batch-00000", HELD_OUT]:
        raise SystemExit(f"benchmarks/serve.py: expected batches batch-00000 and {HELD_OUT}, got {batches}")
    stamp(ingest_batch(spark, cfg, batches[0]).summary(), started)
    stamp(build_features(spark, cfg).summary(), started)
    stamp(train_torch(spark, cfg)["summary"], started)
    stamp(ingest_batch(spark, cfg, HELD_OUT).summary(), started)
    stamp(build_features(spark, cfg).summary(), started)
    stamp(publish_online(spark, cfg)["summary"], started)
    known = {**wanted, "build_s": time.perf_counter() - started}
    marker.write_text(json.dumps(known))
    return {**known, "reused": False}


def held_out_events(spark, cfg) -> list[dict]:
    """Batch 1's bronze rows as request events: the raw source columns, a timestamp as an ISO
    string in UTC (the session's time zone), a date as yyyy-MM-dd."""
    from pyspark.sql import functions as F

    from sparkml_ext import lake

    bronze, _ = lake.read_version(spark, cfg.table_path("bronze"))
    columns = []
    for name, kind in cfg.source.schema.items():
        if kind == "timestamp":
            columns.append(F.date_format(name, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(name))
        elif kind == "date":
            columns.append(F.col(name).cast("string").alias(name))
        else:
            columns.append(F.col(name))
    rows = bronze.where(F.col("_batch_id") == HELD_OUT).select(*columns).collect()  # driver-ok: the held-out batch
    return [row.asDict() for row in rows]


def batch_scores(spark, cfg, scored: dict) -> dict:
    """The batch job's score of each event id, for the model and feature version it scored."""
    from pyspark.sql import functions as F

    table = spark.read.format("delta").load(cfg.table_path("predictions"))
    rows = (table.where((F.col("model") == scored["model"]) & (F.col("feature_version") == scored["feature_version"]))
            .select(cfg.source.key, "score").collect())  # driver-ok: one small table's scores
    return {row[0]: row[1] for row in rows}


def time_batch(spark, cfg, runs: int) -> list[dict]:
    from sparkml_ext.score import score

    results = []
    for run in range(runs):
        before = load()
        started = time.perf_counter()
        result = score(spark, cfg, MODEL)
        seconds = time.perf_counter() - started
        results.append({"run": run + 1, "seconds": seconds, "rows": result["rows"], "model": result["model"],
                        "feature_version": result["feature_version"], "load": (before, load())})
        print(f"  .. batch score run {run + 1}: {seconds:.1f} s, {result['summary']} (load {load()})", flush=True)
    return results


# ------------------------------------------------------------------ load generation

class Failure(RuntimeError):
    pass


def check_answer(status: int, body: bytes, key: str) -> float:
    """The score of a one-event answer, or Failure saying what is wrong with it."""
    if status != 200:
        raise Failure(f"event {key}: HTTP {status}: {body[:300]!r}")
    try:
        (prediction,) = json.loads(body)["predictions"]
        score = prediction["score"]
    except (ValueError, KeyError, TypeError) as err:
        raise Failure(f"event {key}: no single prediction with a score ({err!r}): {body[:300]!r}") from None
    if prediction.get("key") != key or not isinstance(score, float) or not math.isfinite(score):
        raise Failure(f"event {key}: bad prediction {prediction}")
    return score


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class Client:
    """One HTTP client: a keep-alive connection, one event per POST /score."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        self.sock, self.reconnects = self.conn.sock, 0

    def __call__(self, item: tuple[str, bytes]) -> float:
        key, body = item
        self.conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        score = check_answer(response.status, response.read(), key)
        if self.conn.sock is not self.sock:  # http.client reopened it: the server closed the last one
            self.sock, self.reconnects = self.conn.sock, self.reconnects + 1
        return score

    def close(self) -> None:
        self.conn.close()


class InProcess:
    """`Scorer.score` of one event in this process: the server's work without HTTP."""

    def __init__(self, scorer, key: str):
        self.scorer, self.key, self.reconnects = scorer, key, 0

    def __call__(self, item: tuple[str, dict]) -> float:
        key, event = item
        (prediction,) = self.scorer.score(event)["predictions"]
        if prediction.get("key") != key or not math.isfinite(prediction.get("score", math.nan)):
            raise Failure(f"in-process: event {key}: bad prediction {prediction}")
        return prediction["score"]

    def close(self) -> None:
        pass


def run_level(name: str, clients: int, items: list, connect, warmup: float, seconds: float,
              server_pid: int | None, scores: dict) -> dict:
    """`clients` threads, each with its own `connect(index)` (a Client or an InProcess), sending
    one event after another, back to back: `warmup` seconds, then `seconds` measured. Events/s:
    the requests started in the window ÷ the time from its start to the last one's answer."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    finished: list[float] = [0.0] * clients
    reconnects = [0] * clients
    failures: list[str] = []
    stop, go = threading.Event(), threading.Event()
    window: dict[str, float] = {}

    def client(index: int) -> None:
        mine, seen = latencies[index], {}
        position = index * len(items) // clients
        send = None
        try:
            send = connect(index)
            barrier.wait()
            go.wait()
            start, end = window["start"], window["end"]
            while not stop.is_set():
                item = items[position % len(items)]
                position += 1
                began = time.perf_counter()
                if began >= end:
                    break
                seen[item[0]] = send(item)
                done = time.perf_counter()
                if began >= start:
                    mine.append(done - began)
                    finished[index] = done
        except Exception as err:  # noqa: BLE001 - reported by the caller, stops every client
            failures.append(f"client {index}: {type(err).__name__}: {err}")
            stop.set()
            barrier.abort()  # frees the others and the caller if they still wait at the start
        finally:
            if send is not None:
                reconnects[index] = send.reconnects
                send.close()
            scores.update(seen)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    load_before = load()
    for thread in threads:
        thread.start()
    try:
        barrier.wait()  # every client connected: the clock starts
    except threading.BrokenBarrierError:
        pass
    now = time.perf_counter()
    window["start"], window["end"] = now + warmup, now + warmup + seconds
    go.set()
    time.sleep(max(0.0, window["start"] - time.perf_counter()))
    cpu_client, cpu_server = own_cpu(), cpu_seconds(server_pid) if server_pid else 0.0
    for thread in threads:
        thread.join()
    cpu_client, cpu_server = own_cpu() - cpu_client, (cpu_seconds(server_pid) if server_pid else 0.0) - cpu_server
    server_threads = len(os.listdir(f"/proc/{server_pid}/task")) if server_pid else None
    if failures:
        raise Failure(f"{name}: {len(failures)} of {clients} clients failed; first: {failures[0]}")
    every = sorted(x for mine in latencies for x in mine)
    if not every:
        raise Failure(f"{name}: no request finished in the measured window")
    n = len(every)
    return {"name": name, "clients": clients, "requests": n, "p50": percentile(every, 50) * 1e3,
            "p90": percentile(every, 90) * 1e3, "p99": percentile(every, 99) * 1e3, "max": every[-1] * 1e3,
            "rate": n / (max(finished) - window["start"]),
            "cpu_server": cpu_server / n * 1e3 if server_pid else None, "cpu_client": cpu_client / n * 1e3,
            "load": (load_before, load()), "reconnects": sum(reconnects), "server_threads": server_threads}


# ------------------------------------------------------------------ the server

def start_server(work: Path, port: int, env: dict) -> tuple[subprocess.Popen, Path]:
    cli = Path(sys.executable).parent / "sparkml-ext"
    if not cli.exists():
        raise SystemExit(f"benchmarks/serve.py: no {cli}; install the package into this environment (make venv)")
    command = [str(cli), "serve", "--pipeline", str(PIPELINE),
               *[x for o in overrides(work) for x in ("--set", o)],
               "--model", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    log = work / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    extra = " ".join(f"{k}={v}" for k, v in env.items() if os.environ.get(k) != v)
    print(f"server: {extra + ' ' if extra else ''}{' '.join(command)}", flush=True)
    print(f"  (pid {process.pid}, output in {log})", flush=True)
    return process, log


def wait_healthy(process: subprocess.Popen, port: int, log: Path, limit: float = 180.0) -> tuple[float, dict]:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if process.poll() is not None:
            raise Failure(f"the server exited with {process.returncode} before answering /health:\n"
                          + tail(log))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            if response.status == 200:
                return time.perf_counter() - started, json.loads(response.read())
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise Failure(f"the server did not answer GET /health with 200 in {limit:.0f} s:\n" + tail(log))


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join("    " + line for line in text[-lines:]) or "    (no output)"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `timeout` sends SIGTERM: exit through the finally blocks, which stop Spark and the server
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    os.environ["SPARKML_EXT_TRACKING"] = "disabled"  # no MLflow runs: the config reads it at load
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from sparkml_ext.config import load_config
    from sparkml_ext.session import get_spark

    began = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(PIPELINE, overrides(args.work))
    print(f"benchmarks/serve.py: rows={args.rows:,} clients={args.clients} warm-up {args.warmup:g} s, "
          f"{args.seconds:g} s per level, {args.batch_runs} batch run(s); work={args.work}")
    print(f"cores(os)={os.cpu_count()} python {sys.version.split()[0]}; load at start {load()}", flush=True)
    load_start = load()

    spark = get_spark("bench-serve", {"spark.master": "local[2]", "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    try:
        built = prepare_lake(spark, cfg, args)
        events = held_out_events(spark, cfg)
        print(f"held-out events: {len(events):,} bronze rows of {HELD_OUT}", flush=True)
        batch = time_batch(spark, cfg, args.batch_runs)
        reference = batch_scores(spark, cfg, batch[-1])
    finally:
        spark.stop()
    if not events:
        raise SystemExit(f"benchmarks/serve.py: bronze holds no rows of {HELD_OUT}")
    key = cfg.source.key
    random.Random(args.seed).shuffle(events)
    bodies = [(event[key], json.dumps(event).encode()) for event in events]
    print(f"Spark stopped (load {load()}); a request body is about "
          f"{statistics.median(len(b) for _, b in bodies):.0f} bytes", flush=True)

    from sparkml_ext.online.scorer import Scorer
    from sparkml_ext.online.store import SQLiteStore

    online_scores: dict = {}
    rows = []
    scorer = Scorer(cfg, MODEL, SQLiteStore(cfg.online_store()))
    pairs = [(event[key], event) for event in events]
    for clients in args.clients:  # a thread per client, each calling Scorer.score at once
        rows.append(run_level(f"in-process Scorer.score, {clients} thread{'s' if clients > 1 else ''}", clients,
                              pairs, lambda _: InProcess(scorer, key), args.warmup, args.seconds, None, online_scores))
        progress(rows[-1])

    env = {**os.environ, "SPARKML_EXT_TRACKING": "disabled", **dict(x.split("=", 1) for x in args.server_env)}
    port = free_port()
    server, log = start_server(args.work, port, env)
    try:
        ready, health = wait_healthy(server, port, log)
        print(f"  .. /health 200 after {ready:.1f} s: {json.dumps(health)}", flush=True)
        for clients in args.clients:
            rows.append(run_level(f"HTTP POST /score, {clients} client{'s' if clients > 1 else ''}", clients,
                                  bodies, lambda _: Client(port), args.warmup, args.seconds, server.pid,
                                  online_scores))
            progress(rows[-1])
        alive = server.poll() is None
    finally:
        stop_server(server)
    if not alive:
        raise Failure("the server died during the run:\n" + tail(log))
    log_lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]

    # ------------------------------------------------------------------ report
    print()
    print(f"{'what':<44} {'clients':>7} {'requests':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'events/s':>9} {'srv cpu':>8} {'cli cpu':>8}  load(1m 5m 15m) before → after")
    for r in rows:
        server_cpu = "-" if r["cpu_server"] is None else f"{r['cpu_server']:.2f}"
        print(f"{r['name']:<44} {r['clients']:>7} {r['requests']:>9,} {r['p50']:>8.2f} {r['p90']:>8.2f} "
              f"{r['p99']:>8.2f} {r['max']:>8.2f} {r['rate']:>9.1f} {server_cpu:>8} {r['cpu_client']:>8.2f}  "
              f"{r['load'][0]} → {r['load'][1]}")
    print("(one event per request; events/s = requests/s; srv/cli cpu = CPU ms per request of the server "
          "process / this client process)")
    reconnects = sum(r["reconnects"] for r in rows)
    if reconnects:
        print(f"WARNING: {reconnects} requests went over a new connection (the server closed a kept-alive one)")
    print()
    for b in batch:
        print(f"batch score job run {b['run']}: {b['seconds']:.1f} s for {b['rows']:,} rows ({b['model']}, feature "
              f"v{b['feature_version']}, whole table) = {b['seconds'] / b['rows'] * 1e6:.0f} µs/row  "
              f"load {b['load'][0]} → {b['load'][1]}")
    median_batch = statistics.median_low([b["seconds"] for b in batch])
    batch_rows = batch[0]["rows"]
    batch_per_row = median_batch / batch_rows
    at8 = next(r for r in rows if r["clients"] == 8 and r["name"].startswith("HTTP"))
    online_per_row = 1 / at8["rate"]
    common = sorted(set(online_scores) & set(reference))
    worst = max((abs(online_scores[k] - reference[k]) for k in common), default=float("nan"))
    print(f"online vs batch scores: {len(common):,} held-out event ids compared, max |difference| {worst:.2e}"
          f" ({'AGREE' if worst <= AGREE else 'DISAGREE'}, tolerance {AGREE:g})")
    shown = ":\n" + tail(log, 10) if len(log_lines) > 1 else ""  # the first is its banner
    print(f"server: {len(log_lines)} lines of output (in {log}){shown}")
    print()
    print(f"batch seconds per row  = median batch score run {median_batch:.2f} s ÷ {batch_rows:,} rows scored "
          f"= {batch_per_row * 1e6:.1f} µs (Spark local[2], whole feature table, incl. Delta write)")
    print(f"online seconds per row = 1 ÷ {at8['rate']:.1f} events/s (8 clients, one event per request) "
          f"= {online_per_row * 1e6:.1f} µs")
    lakehouse = "reused" if built["reused"] else f"built in {built['build_s']:.0f} s"
    print(f"lakehouse: {lakehouse}; total run {time.perf_counter() - began:.0f} s; "
          f"load at start {load_start}, at end {load()}")
    print(f"RATIO serve_p99_ms {at8['p99']:.3f}")
    print(f"RATIO serve_vs_batch_per_row {online_per_row / batch_per_row:.4f}")
    return 0 if not (worst > AGREE) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as failure:
        print(f"benchmarks/serve.py: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
