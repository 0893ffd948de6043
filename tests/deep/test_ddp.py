"""Two DDP processes on CPU (gloo) launched by torchrun, as TorchDistributor would.

One uninterrupted run is shared: it must learn, and it is the reference that a run
killed with SIGKILL and restarted must reproduce (weights equal within 1e-6).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from shardkit import CLICK_COLUMNS, DDP_KNOBS, click_table, write_shards

from sparkml_ext.deep.checkpoint import list_checkpoints
from sparkml_ext.deep.model import load_model

SCRIPT = Path(__file__).with_name("ddp_run.py")
ROWS = 2 * 64 * 20 + 1  # ranks get 1280 and 1281 rows: 20 and 21 batches of 64
CONFIG = DDP_KNOBS
STEPS = 3 * 20


def die_with_parent() -> None:
    """In the child before exec: SIGKILL torchrun if pytest itself dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def torchrun(
    tmp: Path,
    name: str,
    config: dict,
    stall_at: int | None = None,
    timeout: float = 180,
    ranks: int = 2,
) -> dict:
    """Run ddp_run.py on `ranks` ranks; with `stall_at`, SIGKILL every process once rank 0 stalls."""
    shards = tmp / "shards"
    out = tmp / f"{name}.json"
    run_config = {
        **config,
        "checkpoint_dir": str(tmp / name / "ckpt"),
        "output_dir": str(tmp / name / "out"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STALL_AT_STEP": str(stall_at or "")}
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        str(SCRIPT),
        str(shards / "train" / "_manifest.json"),
        str(shards / "val"),
        json.dumps(run_config),
        str(out),
    ]
    job = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    groups = [job.pid]  # torchrun's, then each rank's (torchrun gives every rank its own session)

    def kill_all():
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill_all)
    watchdog.start()
    try:
        lines = []
        for line in job.stdout:
            lines.append(line)
            groups += [int(pid) for pid in re.findall(r"PID (\d+)", line)]
            if stall_at and "STALLED" in line:
                kill_all()
        job.wait()
    finally:
        watchdog.cancel()
        if job.poll() is None:  # an exception on our side: nothing may outlive the test
            kill_all()
    log = "".join(lines)
    if stall_at:
        assert job.returncode == -signal.SIGKILL and "STALLED" in log, log
        return {}
    assert job.returncode == 0, log
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    write_shards(tmp / "shards" / "train", click_table(ROWS, seed=0), files=3, **CLICK_COLUMNS)
    write_shards(tmp / "shards" / "val", click_table(1000, seed=1), files=2, **CLICK_COLUMNS)
    return tmp, torchrun(tmp, "uninterrupted", CONFIG)


def test_two_ranks_learn_and_save_a_safe_model(ddp):
    tmp, metrics = ddp
    assert metrics["world_size"] == 2 and metrics["steps"] == STEPS and metrics["epochs"] == 3
    assert (metrics["backend"], metrics["device"], metrics["precision"]) == ("gloo", "cpu", "float32")
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    assert metrics["val_loss"][-1] < metrics["val_loss"][0]
    assert metrics["val_auc"][-1] > 0.6
    assert metrics["resumed_from_step"] == 0 and metrics["rows_per_s"] > 0
    model, config = load_model(metrics["model_path"])  # weights_only=True inside
    assert config["columns"]["categorical"] == ["c0", "c1"]
    assert model(
        torch.zeros(4, config["model"]["num_numeric"]), torch.zeros(4, 2, dtype=torch.int64)
    ).shape == (4,)


def test_killed_run_resumes_to_the_same_weights(ddp):
    tmp, reference = ddp
    torchrun(tmp, "killed", CONFIG, stall_at=35)  # checkpoints at 10, 20, 30; steps 31-35 are lost
    assert os.path.basename(list_checkpoints(tmp / "killed" / "ckpt")[-1]) == "step-000000030.pt"
    assert not (tmp / "killed" / "out" / "model.pt").exists()

    resumed = torchrun(tmp, "killed", CONFIG)
    assert resumed["resumed_from_step"] == 30 and resumed["steps"] == STEPS
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)
    assert resumed["val_auc"] == pytest.approx(reference["val_auc"], rel=1e-6)
    expected = torch.load(reference["model_path"], weights_only=True)["state_dict"]
    got = torch.load(resumed["model_path"], weights_only=True)["state_dict"]
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_a_rank_on_the_gpu_uses_nccl_and_mixed_precision(ddp):
    tmp, _ = ddp
    config = {**CONFIG, "device": "auto", "deterministic": False}
    metrics = torchrun(tmp, "gpu", config, ranks=1)
    assert (metrics["backend"], metrics["device"]) == ("nccl", "cuda:0")
    assert metrics["precision"] in ("bfloat16", "float16")
    assert metrics["world_size"] == 1 and metrics["epochs"] == 3
    assert metrics["val_auc"][-1] > 0.6 and metrics["val_loss"][-1] < metrics["val_loss"][0]
    model, _ = load_model(metrics["model_path"])  # saved from the GPU, loaded on the CPU
    assert next(model.parameters()).device.type == "cpu"
