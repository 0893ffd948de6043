"""Checkpoints: atomic, rotated, fall back past broken files, and never execute a pickle."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkml_ext.deep.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_keeps_the_newest_k_and_leaves_no_temporary_files(tmp_path):
    (tmp_path / ".step-000000001-dead.tmp").write_bytes(b"half a checkpoint from a killed writer")
    for step in (5, 10, 15, 20):
        save_checkpoint({"step": step, "w": torch.full((3,), float(step))}, tmp_path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step-000000015.pt", "step-000000020.pt"]
    path, state = latest_checkpoint(tmp_path)
    assert os.path.basename(path) == "step-000000020.pt" and state["step"] == 20
    assert torch.equal(state["w"], torch.full((3,), 20.0))
    assert latest_checkpoint(tmp_path / "missing") is None


def test_truncated_latest_falls_back_to_the_previous_with_a_warning(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint({"step": step}, tmp_path, step)
    newest = Path(list_checkpoints(tmp_path)[-1])
    newest.write_bytes(newest.read_bytes()[:40])
    with pytest.warns(UserWarning, match=r"step-000000003\.pt cannot be loaded"):
        path, state = latest_checkpoint(tmp_path)
    assert state["step"] == 2 and os.path.basename(path) == "step-000000002.pt"


class Payload:
    """Pickles to a call of os.system: what a malicious checkpoint would contain."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    save_checkpoint({"step": 1}, tmp_path / "ckpt", 1)
    evil = tmp_path / "ckpt" / "step-000000002.pt"
    torch.save({"step": 2, "model": Payload(marker)}, evil)

    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(evil)
    with pytest.warns(UserWarning, match="cannot be loaded"):
        _, state = latest_checkpoint(tmp_path / "ckpt")
    assert state == {"step": 1}
    assert not marker.exists()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    save_checkpoint({"rng": rng_state()}, tmp_path, 1)
    before = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "step-000000001.pt")["rng"])
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1]) and before[2] == after[2]


SAVER = """
import sys, torch
from sparkml_ext.deep.checkpoint import save_checkpoint
big = torch.zeros(64 * 2**20 // 4)  # 64 MiB: each save takes long enough to be caught
for step in range(1, 10**6):
    save_checkpoint({"step": step, "weights": big + step}, sys.argv[1], step, keep=2)
    print(step, flush=True)
"""


def test_a_writer_killed_mid_save_leaves_the_last_complete_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    writer = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "1"  # one complete checkpoint exists
        deadline = time.monotonic() + 60
        while not list(folder.glob(".step-*.tmp")):  # the next one is being written
            assert time.monotonic() < deadline, "no save in progress was seen"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert list(folder.glob(".step-*.tmp"))  # the half-written file is there, but hidden
    path, state = latest_checkpoint(folder)
    assert os.path.basename(path) == f"step-{state['step']:09d}.pt"
    assert torch.equal(state["weights"][:3], torch.full((3,), float(state["step"])))
    save_checkpoint({"step": 99}, folder, 99, keep=2)  # the next save clears the leftover
    assert not list(folder.glob(".step-*.tmp"))
