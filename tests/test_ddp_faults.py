"""A DDP rank SIGKILLed mid-training, in TorchDistributor's local and barrier modes.

TorchDistributor never retries; `bridge.launch` reruns the attempt, and `train_worker`
resumes from rank 0's last checkpoint. The killed run must lose at most one checkpoint
interval and end with the same weights as an uninterrupted one (deterministic CPU run).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pyspark import cloudpickle
from shardkit import CLICK_COLUMNS, DDP_KNOBS, click_table, write_shards

from sparkml_ext.bridge import launch
from sparkml_ext.deep.config import TrainConfig
from sparkml_ext.deep.train import train_worker

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ranks cannot import tests/

CONFIG = TrainConfig(backend="gloo", **DDP_KNOBS)
STEPS = 3 * 10  # 1280 rows: 640 per rank, 10 batches of 64 per epoch
KILL_AFTER = 25  # rank 0 checkpointed at steps 10 and 20


def train_killing_rank_one_once(train: str, config: TrainConfig, marker: str) -> dict:
    """train_worker, except that rank 1 SIGKILLs itself after step KILL_AFTER, once."""
    import os
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook

    if os.environ["RANK"] == "1" and not Path(marker).exists():
        steps = 0

        def kill_at(optimizer, args, kwargs):
            nonlocal steps
            steps += 1
            if steps == KILL_AFTER:
                Path(marker).write_text(f"pid {os.getpid()} killed after step {steps}")
                os.kill(os.getpid(), signal.SIGKILL)

        register_optimizer_step_post_hook(kill_at)
    return train_worker(train, config)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-faults")
    return root, str(write_shards(root / "train", click_table(1280), files=3, **CLICK_COLUMNS))


def run(root: Path, name: str, train: str, local_mode: bool, kill: bool):
    config = replace(CONFIG, checkpoint_dir=str(root / name), output_dir=str(root / name))
    marker = str(root / f"{name}.killed") if kill else str(root)  # an existing path: no kill
    return launch(
        train_killing_rank_one_once, train, config, marker,
        num_processes=2, local_mode=local_mode, max_restarts=1,
    )


@pytest.fixture(scope="module")
def reference(spark, shards):
    root, train = shards
    result = run(root, "uninterrupted", train, local_mode=True, kill=False)
    assert len(result.attempts) == 1 and result.value["steps"] == STEPS
    return torch.load(result.value["model_path"], weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("local_mode", [True, False], ids=["local", "barrier"])
def test_a_killed_rank_is_restarted_and_ends_with_the_same_weights(
    spark, shards, reference, local_mode
):
    root, train = shards
    name = f"killed-{'local' if local_mode else 'barrier'}"
    result = run(root, name, train, local_mode, kill=True)
    assert (root / f"{name}.killed").read_text().endswith(f"killed after step {KILL_AFTER}")
    first, second = result.attempts
    assert first.error is not None and second.error is None, result.attempts
    assert result.value["resumed_from_step"] == 20  # lost 5 steps: under one interval of 10
    assert result.value["steps"] == STEPS
    got = torch.load(result.value["model_path"], weights_only=True)["state_dict"]
    assert got.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(got[key], reference[key], rtol=0, atol=1e-6), key
