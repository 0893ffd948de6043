"""DDP ranks started by a real TorchDistributor, in local and barrier mode, with restarts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from pyspark import cloudpickle

from sparkml_ext.bridge import Attempt, LaunchFailed, launch, pick_backend
from sparkml_ext.deep.manifest import Manifest, ShardFile, assign_rows

# The ranks cannot import this test module by name, so its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def count_rows(manifest_path: str, config: dict) -> dict:
    """Each rank counts the rows assign_rows gives it; all_reduce adds ranks and rows."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(config["backend"])
    rank, world = dist.get_rank(), dist.get_world_size()
    manifest = Manifest.from_json(Path(manifest_path).read_text())
    mine = sum(s.length for s in assign_rows(manifest.files, world)[rank])
    totals = torch.tensor([rank, mine])
    dist.all_reduce(totals)
    dist.destroy_process_group()
    if rank != 0:
        time.sleep(1)  # return last, so that a launcher keeping the last value is caught
    return {"rank": rank, "world": world, "rank_sum": int(totals[0]), "rows": int(totals[1])}


def crash_once_then_resume(workdir: str, config: dict) -> dict:
    """The first rank to start saves a checkpoint at step 3 and crashes; the rerun resumes."""
    checkpoint = Path(workdir) / "step"
    if not checkpoint.exists():
        checkpoint.write_text("3")
        raise RuntimeError("simulated crash after step 3")
    return {"resumed_from": int(checkpoint.read_text()), "steps": config["steps"]}


def always_crash(config: dict) -> None:
    raise RuntimeError(f"simulated crash {config['tag']}")


def rank_one_crashes_late() -> int:
    if os.environ["RANK"] == "1":
        time.sleep(1)  # crash after rank 0 has returned and written its value
        raise RuntimeError("rank 1 crashed late")
    return 0


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
    files = (ShardFile("a.arrow", 7, 70), ShardFile("b.arrow", 4, 40))
    manifest = Manifest(root="/nowhere", files=files, schema={"x": "float"}, numeric=("x",))
    path = tmp_path_factory.mktemp("manifest") / "_manifest.json"
    path.write_text(manifest.to_json())
    return str(path)


@pytest.mark.parametrize("local_mode", [True, False], ids=["local", "barrier"])
def test_two_ranks_all_reduce_and_rank_zero_answers(spark, manifest_path, local_mode):
    config = {"backend": pick_backend(use_gpu=False)}
    result = launch(count_rows, manifest_path, config, num_processes=2, local_mode=local_mode)
    assert result.value == {"rank": 0, "world": 2, "rank_sum": 1, "rows": 11}
    assert [(a.number, a.error) for a in result.attempts] == [(1, None)]


def test_restart_resumes_from_checkpoint_after_a_failed_attempt(spark, tmp_path):
    seen: list[Attempt] = []
    result = launch(
        crash_once_then_resume,
        str(tmp_path),
        {"steps": 5},
        num_processes=2,
        max_restarts=1,
        on_attempt=seen.append,
    )
    assert result.value == {"resumed_from": 3, "steps": 5}
    assert [a.number for a in result.attempts] == [1, 2]
    assert "simulated crash after step 3" in result.attempts[0].error
    assert result.attempts[1].error is None
    assert tuple(seen) == result.attempts


def test_gives_up_after_the_last_attempt_and_says_why(spark):
    with pytest.raises(LaunchFailed, match=r"(?s)after 1 attempt\(s\).*simulated crash x7") as info:
        launch(always_crash, {"tag": "x7"}, num_processes=2, max_restarts=0)
    assert len(info.value.attempts) == 1


def test_a_late_crash_on_another_rank_fails_the_attempt(spark):
    with pytest.raises(LaunchFailed, match=r"(?s)rank-1 raised.*rank 1 crashed late"):
        launch(rank_one_crashes_late, num_processes=2)


def test_pick_backend():
    assert pick_backend(use_gpu=True) == "nccl"
    assert pick_backend(use_gpu=False) == "gloo"
    assert pick_backend(use_gpu=True, override="gloo") == "gloo"
    with pytest.raises(ValueError, match="nccl"):
        pick_backend(use_gpu=False, override="nccl")


def test_negative_restarts_are_refused():
    with pytest.raises(ValueError, match="max_restarts"):
        launch(always_crash, {"tag": "never"}, num_processes=1, max_restarts=-1)
