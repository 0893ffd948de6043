"""torchrun entry point for the DDP tests: train_worker on given shards, metrics to JSON.

usage: ddp_run.py TRAIN_MANIFEST VAL_MANIFEST|- CONFIG_JSON METRICS_OUT  (CONFIG_JSON: TrainConfig's fields)

Each rank first says "PID <pid>": torchrun starts every rank in a session of its own, so
killing torchrun's process group alone would leave the ranks running (and, for the same
reason, a rank exits by itself once torchrun is gone). With STALL_AT_STEP=N in the
environment, rank 0 says "STALLED" and blocks forever after its N-th optimizer step, so
that a test can kill the job at a known point.
"""

import json
import os
import signal
import sys
import threading
import time


def say(line: str) -> None:
    """One write(2) per line: torchrun runs ranks with `python -u`, where print() writes the
    text and its newline separately, so two ranks' lines could interleave on the pipe."""
    os.write(1, f"{line}\n".encode())


def exit_with_parent() -> None:
    """Exit once torchrun is gone; called first, as the torch imports take seconds."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def stall_at(step: int) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    done = 0

    def hook(optimizer, args, kwargs):
        nonlocal done
        done += 1
        if done == step:
            say("STALLED")
            signal.pause()

    register_optimizer_step_post_hook(hook)


if __name__ == "__main__":
    exit_with_parent()
    say(f"PID {os.getpid()}")
    from sparkml_ext.deep.config import TrainConfig
    from sparkml_ext.deep.train import train_worker

    train, val, config, out = sys.argv[1:]
    if os.environ.get("STALL_AT_STEP") and os.environ["RANK"] == "0":
        stall_at(int(os.environ["STALL_AT_STEP"]))
    metrics = train_worker(train, TrainConfig(**json.loads(config)), None if val == "-" else val)
    if os.environ.get("RANK", "0") == "0":
        with open(out, "w") as f:
            json.dump(metrics, f)
