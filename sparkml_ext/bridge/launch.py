"""Run a torch training function on DDP ranks through TorchDistributor, with restarts.

TorchDistributor never retries: local mode runs torchrun with no restarts, and a failed
barrier stage is aborted, not resubmitted. So this launcher owns fault tolerance: it
reruns a failed attempt up to `max_restarts` times, and the train function resumes from
its own latest checkpoint. The train function gets picklable arguments (a manifest path,
its knobs), never a DataFrame.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One run of the train function on all ranks; `error` is None when it succeeded."""

    number: int
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class LaunchResult:
    """Rank 0's return value and every attempt it took to get it."""

    value: Any
    attempts: tuple[Attempt, ...]


class LaunchFailed(RuntimeError):
    """Every attempt failed; `attempts` holds their history, the last error included."""

    def __init__(self, attempts: tuple[Attempt, ...]):
        self.attempts = attempts
        super().__init__(
            f"training failed after {len(attempts)} attempt(s); "
            f"last error: {attempts[-1].error}"
        )


def pick_backend(use_gpu: bool, override: str | None = None) -> str:
    """The torch.distributed backend: NCCL between GPUs, gloo on CPUs, unless overridden."""
    if override == "nccl" and not use_gpu:
        raise ValueError("backend 'nccl' needs GPUs; use 'gloo' when use_gpu is False")
    return override or ("nccl" if use_gpu else "gloo")


def launch(
    train_fn: Callable[..., Any],
    *args: Any,
    num_processes: int,
    local_mode: bool = True,
    use_gpu: bool = False,
    max_restarts: int = 0,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> LaunchResult:
    """Run `train_fn(*args)` on `num_processes` DDP ranks; return rank 0's value.

    local_mode=True starts the ranks on the driver (torchrun); False runs one barrier
    task per rank on the executors, which needs `num_processes` free task slots at once.
    A failed attempt is logged and run again, up to `max_restarts` times; `on_attempt`
    sees every attempt as it ends. Raises LaunchFailed once the last attempt failed.
    """
    # Imported here so that ranks, which unpickle `_run_rank` from this module,
    # do not pay for importing pyspark.ml.
    from pyspark.ml.torch.distributor import TorchDistributor

    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    distributor = TorchDistributor(
        num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu
    )
    attempts: list[Attempt] = []
    for number in range(1, max_restarts + 2):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sparkml_ext-launch-") as reports:
            try:
                value, error = distributor.run(_run_rank, train_fn, reports, *args), None
            except Exception as exc:  # any failure of the ranks or of the barrier stage
                value, error = None, f"{type(exc).__name__}: {exc}"
            # Local mode's ranks all run here, so each of them must have reported success.
            ranks = distributor.num_processes if local_mode else None
            error = _attempt_error(reports, error, ranks)
        attempts.append(Attempt(number, time.perf_counter() - started, error))
        if error is not None:
            log.warning("training attempt %d of %d failed: %s", number, max_restarts + 1, error)
        if on_attempt is not None:
            on_attempt(attempts[-1])
        if error is None:
            return LaunchResult(value, tuple(attempts))
    raise LaunchFailed(tuple(attempts))


def _run_rank(train_fn: Callable[..., Any], reports: str, *args: Any) -> Any:
    """Run on every rank: call the train function, report the outcome, keep rank 0's value.

    TorchDistributor has every process of one torchrun pickle its return value to the
    same file, so with several ranks per node the last rank to finish wins (measured:
    rank 1's value came back in 2 of 3 local runs). Local ranks other than 0 therefore
    leave right after a successful return, before that write, with exit status 0.

    TorchDistributor's torchrun wrapper exits 0 whatever the ranks did, so its error
    says only "View stdout logs", and a rank failing after rank 0 returned goes unseen.
    Each rank therefore writes its outcome (traceback or success) to the driver's
    `reports` folder where it is visible: always in local mode, and in barrier mode when
    the executors share the driver's machine.
    """
    rank = os.environ.get("RANK", "0")
    # Where the rank runs (in barrier mode the working directory is its executor's) and
    # which copy of this package it imported: one line, streamed to the driver's log.
    package = os.path.dirname(os.path.dirname(__file__))
    print(f"sparkml_ext rank {rank} of {os.environ.get('WORLD_SIZE', '1')}: pid {os.getpid()} on "
          f"{socket.gethostname()}, cwd {os.getcwd()}, package {package}",
          file=sys.stderr, flush=True)
    try:
        value = train_fn(*args)
    except BaseException:
        _report(reports, f"rank-{rank}.error", traceback.format_exc())
        raise
    _report(reports, f"rank-{rank}.ok", "")
    if os.environ.get("LOCAL_RANK", "0") != "0":
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return value


def _report(reports: str, name: str, text: str) -> None:
    if os.path.isdir(reports):
        with open(os.path.join(reports, name), "w") as out:
            out.write(text)


def _attempt_error(reports: str, error: str | None, ranks: int | None) -> str | None:
    """The attempt's error text, or None when it succeeded on every rank.

    Combines TorchDistributor's error with the ranks' tracebacks; when `ranks` is given,
    that many ranks must have reported success (a killed rank reports nothing).
    """
    names = sorted(os.listdir(reports))
    parts = [error] if error else []
    for name in (n for n in names if n.endswith(".error")):
        with open(os.path.join(reports, name)) as f:
            parts.append(f"{name.removesuffix('.error')} raised:\n{f.read().rstrip()}")
    succeeded = sum(n.endswith(".ok") for n in names)
    if not parts and ranks is not None and succeeded < ranks:
        parts.append(f"only {succeeded} of {ranks} ranks reported success; others were killed")
    return "\n".join(parts) or None
