"""A Spark standalone cluster on this machine: one master and N workers on 127.0.0.1.

    python scripts/cluster.py start      # master + 2 workers (1 core, 2g each), waits until ready
    python scripts/cluster.py status     # exit 0 when the master and every worker are alive
    python scripts/cluster.py submit jobs/ingest.py --batch-id batch-00000   # spark-submit here
    python scripts/cluster.py stop       # workers (and their executors), then the master

The daemons come from the installed pyspark (`$SPARK_HOME`, else the pyspark package
folder); the pip wheel has no `sbin/start-*.sh`, so they run through `bin/spark-class`
with pid files and logs under the work folder (default `build/cluster`).

`start` also builds the nodes' Python: a venv that sees the project's dependencies
(pyspark, torch, pyarrow, ...) but not the project itself, as on a real cluster's node
image. `submit` runs driver and executors on it, so sparkml_ext can only come from
the archive spark-submit ships (`make dist` builds `dist/sparkml_ext.zip`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "dist" / "sparkml_ext.zip"
HOST = "127.0.0.1"
MARKER = "-Dsparkml_ext.cluster.dir"


def spark_home() -> Path:
    """`$SPARK_HOME`, else the installed pyspark package (which holds bin/ and jars/)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no pyspark here: run with the project's .venv/bin/python or set SPARK_HOME")
    return Path(spec.submodule_search_locations[0])


def daemon_env(work: Path) -> dict[str, str]:
    """Loopback only, small daemon heaps, and a marker naming the work folder (see `stop`)."""
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST,
            "SPARK_DAEMON_MEMORY": "512m", "SPARK_DAEMON_JAVA_OPTS": f"{MARKER}={work}"}


def node_python(work: Path) -> Path:
    """The nodes' interpreter: a venv whose only extra path is this venv's site-packages.

    A plain path line in a .pth file is added to sys.path without reading the .pth files
    inside it, so the project's editable-install hook stays out: `import sparkml_ext`
    fails there unless the package was shipped.
    """
    env = work / "node-env"
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = subprocess.run([str(python), "-c", query], check=True, capture_output=True,
                              text=True).stdout.strip()
        deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(site, "project_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return python


def _spawn(work: Path, name: str, args: list[str], **env: str) -> int:
    """Start one daemon in its own session (spark-class execs the JVM, so the pid is the JVM's)."""
    with open(work / "logs" / f"{name}.log", "ab") as log:
        process = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args],
                                   env={**daemon_env(work), **env}, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (work / "pids" / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def master_state(webui_port: int) -> dict | None:
    """The master's JSON status page (workers, applications), or None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{webui_port}/json/", timeout=2) as page:
            return json.load(page)
    except OSError:
        return None


def _wait(what: str, ready, pids: dict[str, int], work: Path, timeout: float = 180) -> None:
    """Poll `ready` until it holds; on a dead daemon or the timeout, stop everything and exit."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [name for name, pid in pids.items() if not _alive(pid)]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:.0f}s"
            stop(work)
            sys.exit(f"cluster start failed: {what}: {why}; logs in {work / 'logs'}")
        time.sleep(0.5)


def start(work: Path, workers: int, cores: int, memory: str, port: int, webui_port: int) -> dict:
    """Start the master and workers, wait until every worker registered; return the state."""
    if (work / "cluster.json").exists() and any(map(_alive, read_state(work)["pids"].values())):
        sys.exit(f"a cluster from {work} is running: `{Path(__file__).name} stop` first")
    for folder in ("logs", "pids"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    python = node_python(work)
    master = f"spark://{HOST}:{port}"
    # A taken port fails the start instead of moving the master elsewhere (no retries), and
    # no REST submission server: one more open port that nothing here uses.
    options = "-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false"
    pids = {"master": _spawn(work, "master", [
        "org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(port),
        "--webui-port", str(webui_port)], SPARK_MASTER_OPTS=options)}
    _wait("master", lambda: master_state(webui_port) is not None, pids, work)
    for n in range(1, workers + 1):
        pids[f"worker-{n}"] = _spawn(work, f"worker-{n}", [
            "org.apache.spark.deploy.worker.Worker", master, "--host", HOST, "--cores", str(cores),
            "--memory", memory, "--webui-port", "0", "--work-dir", str(work / f"worker-{n}")])

    def registered() -> bool:
        status = master_state(webui_port) or {}
        return sum(w["state"] == "ALIVE" for w in status.get("workers", [])) == workers

    _wait(f"{workers} workers registering", registered, pids, work)
    state = {"master": master, "webui": f"http://{HOST}:{webui_port}", "webui_port": webui_port,
             "pids": pids, "node_python": str(python), "executor_cores": cores}
    (work / "cluster.json").write_text(json.dumps(state, indent=2))
    return state


def read_state(work: Path) -> dict:
    try:
        return json.loads((work / "cluster.json").read_text())
    except FileNotFoundError:
        sys.exit(f"no cluster state in {work}: `{Path(__file__).name} start` first")


def processes_under(work: Path) -> list[int]:
    """Pids of live processes started for this cluster: daemons, executors, Python workers.

    Daemons carry the work folder's marker on their command line; executors and their
    Python workers and torchrun processes run in an executor folder under a worker's.
    """
    daemon, executors = f"{MARKER}={work}", str(work / "worker-")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in _ancestors():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if (daemon in cmdline or cwd.startswith(executors)) and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _ancestors() -> set[int]:
    """This process and its parents, which a stop must never signal."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return pids


def _terminate(pids: list[int], grace: float) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, SIGKILL the rest; returns the pids that needed it."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = [pid for pid in pids if _alive(pid)]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    return killed


def stop(work: Path) -> list[int]:
    """Workers first (they stop their executors), then the master, then anything left over.

    Returns the pids that had to be killed; an empty list is a clean stop. A pid file
    whose process no longer carries this cluster's marker (a reused pid) is ignored.
    """
    files = sorted((work / "pids").glob("*.pid"))
    daemons = {f.stem: int(f.read_text()) for f in files}
    live = set(processes_under(work))
    ours = {name: pid for name, pid in daemons.items() if pid in live}
    killed = _terminate([pid for name, pid in ours.items() if name != "master"], grace=30)
    killed += _terminate([pid for name, pid in ours.items() if name == "master"], grace=30)
    for f in files:
        f.unlink()
    strays = processes_under(work)
    killed += _terminate(strays, grace=10)
    if strays:
        print(f"stopped leftover processes {strays}", file=sys.stderr)
    (work / "cluster.json").unlink(missing_ok=True)
    return killed


def status(work: Path) -> bool:
    state = read_state(work)
    alive = {name: _alive(pid) for name, pid in state["pids"].items()}
    master = master_state(state["webui_port"]) or {}
    print(f"master {state['master']} (UI {state['webui']})")
    for name, pid in state["pids"].items():
        print(f"  {name:<10} pid {pid:<8} {'alive' if alive[name] else 'DEAD'}")
    print(f"  workers registered: {sum(w['state'] == 'ALIVE' for w in master.get('workers', []))}")
    return all(alive.values())


def submit_command(work: Path, app: str, args: list[str], archive: Path = ARCHIVE
                   ) -> tuple[list[str], dict[str, str]]:
    """spark-submit of `app` to this cluster with the shipped package, and its environment."""
    state = read_state(work)
    if not archive.exists():
        sys.exit(f"{archive} is missing: run `make dist` first")
    if archive.name != ARCHIVE.name:  # conf/spark/cluster.conf puts this name on PYTHONPATH
        sys.exit(f"the archive must be named {ARCHIVE.name}, not {archive.name}")
    command = [
        str(spark_home() / "bin" / "spark-submit"), "--master", state["master"],
        "--properties-file", str(ROOT / "conf" / "spark" / "cluster.conf"),
        "--py-files", str(archive), "--driver-memory", "2g",
        "--conf", f"spark.executor.cores={state['executor_cores']}",
        "--conf", "spark.executor.memory=1g",
        # as embedded (sparkml_ext.session): Delta's default 50 tasks per snapshot is for big logs
        "--conf", "spark.databricks.delta.snapshotPartitions=2", app, *args,
    ]
    python = state["node_python"]
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST,
           "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
    return command, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "cluster",
                        help="pid files, logs, worker folders, node venv (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("start", help="start the master and the workers")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cores", type=int, default=1, help="cores per worker (default: %(default)s)")
    up.add_argument("--memory", default="2g", help="memory per worker (default: %(default)s)")
    up.add_argument("--port", type=int, default=7077, help="master port (default: %(default)s)")
    up.add_argument("--webui-port", type=int, default=8090,
                    help="master UI port (default: %(default)s)")
    commands.add_parser("stop", help="stop the workers, their executors and the master")
    commands.add_parser("status", help="show the daemons; exit 1 if one is down")
    sub = commands.add_parser("submit", help="spark-submit an application to this cluster")
    sub.add_argument("--archive", type=Path, default=ARCHIVE,
                     help="the package for --py-files (default: %(default)s, from `make dist`)")
    sub.add_argument("app", help="the application, e.g. jobs/ingest.py")
    sub.add_argument("args", nargs=argparse.REMAINDER, help="the application's arguments")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()

    if args.command == "start":
        state = start(work, args.workers, args.cores, args.memory, args.port, args.webui_port)
        print(f"master {state['master']} with {args.workers} workers; UI {state['webui']}; "
              f"logs in {work / 'logs'}")
    elif args.command == "stop":
        killed = stop(work)
        print("stopped" + (f" (killed {killed} after the grace period)" if killed else ""))
    elif args.command == "status":
        return 0 if status(work) else 1
    else:
        command, env = submit_command(work, args.app, args.args, args.archive.resolve())
        os.execve(command[0], command, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
