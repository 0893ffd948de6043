"""ShardDataset: column-wise tensors, exactly-once delivery, seeded shuffles, resume, errors."""

from __future__ import annotations

import dataclasses
import shutil
import threading

import pyarrow as pa
import pytest
import torch
from shardkit import write_shards
from torch.utils.data import DataLoader

from sparkml_ext.deep.dataset import ShardDataset
from sparkml_ext.deep.manifest import assign_rows
from sparkml_ext.deep.shard_reader import read_manifest

SMALL = dict(batch_size=64, shuffle_buffer=200, chunk_rows=50)  # windows of 256 rows, 16 batches


def ids(batches) -> list[int]:
    """Row ids (the first categorical column) in delivery order."""
    return [int(i) for b in batches for i in b["categorical"][:, 0]]


def id_dataset(manifest_path, rank=0, world_size=1, **kwargs) -> ShardDataset:
    """The click shards with `id` as the first categorical column."""
    manifest = read_manifest(str(manifest_path))
    return ShardDataset(
        manifest.root,
        assign_rows(manifest.files, world_size)[rank],
        numeric=manifest.numeric,
        categorical=("id", *manifest.categorical),
        label=manifest.label,
        **{**SMALL, **kwargs},
    )


def test_columns_become_the_arrow_values(tmp_path):
    fsl_values = pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.float32())  # a null element
    table = pa.table(
        {
            "f64": pa.array([1.5, None, -2.0, 4.0], pa.float64()),
            "i": pa.array([1, 2, 3, None], pa.int16()),
            "flag": pa.array([True, False, None, True]),
            "fsl": pa.FixedSizeListArray.from_arrays(
                fsl_values, 2, mask=pa.array([False, False, True, False])
            ),
            "lst": pa.array([[1.0, 2.0], [3.0, 4.0], None, [5.0, 6.0]], pa.list_(pa.float64())),
            "c32": pa.array([7, None, 9, 0], pa.int32()),
            "c64": pa.array([2**40, 1, 2, 3], pa.int64()),
            "y": pa.array([1, 0, 1, 0], pa.int8()),
        }
    )
    path = write_shards(
        tmp_path / "s",
        table,
        files=2,
        numeric=("f64", "i", "flag", "fsl", "lst"),
        categorical=("c32", "c64"),
        label="y",
        batch_rows=1,
    )
    ds = ShardDataset.from_manifest(read_manifest(str(path)), batch_size=3, shuffle=False)
    batches = list(ds)
    assert [len(b["label"]) for b in batches] == [3, 1]
    got = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    assert got["numeric"].dtype == torch.float32 and got["categorical"].dtype == torch.int64
    assert got["label"].dtype == torch.float32
    expected_numeric = [
        # f64, i, flag, fsl[0], fsl[1], lst[0], lst[1]
        [1.5, 1, 1, 1, 2, 1, 2],
        [0, 2, 0, 3, 0, 3, 4],
        [-2, 3, 0, 0, 0, 0, 0],
        [4, 0, 1, 7, 8, 5, 6],
    ]
    assert got["numeric"].tolist() == expected_numeric
    assert got["categorical"].tolist() == [[7, 2**40], [0, 1], [9, 2], [0, 3]]
    assert got["label"].tolist() == [1, 0, 1, 0]
    assert ds.numeric_width == 7


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_row_once_per_epoch_across_ranks_and_workers(clicks, world_size, workers):
    path = clicks(rows=1100, files=3)  # 2 ranks: 9 batches each, so the workers get 5 and 4
    delivered = []
    for rank in range(world_size):
        ds = id_dataset(path, rank, world_size, seed=7)
        ds.set_epoch(1)
        got = ids(DataLoader(ds, batch_size=None, num_workers=workers))
        assert got == ids(ds), "DataLoader workers changed the planned order"
        delivered += got
    assert sorted(delivered) == list(range(1100))


def test_order_is_a_function_of_seed_and_epoch(clicks):
    path = clicks(rows=1000, files=3)

    def order(seed, epoch, **kwargs):
        ds = id_dataset(path, seed=seed, **kwargs)
        ds.set_epoch(epoch)
        return ids(ds)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 3)) == list(range(1000))
    assert order(1, 0, shuffle=False) == list(range(1000))
    first = order(1, 0)[:256]  # one window: rows come from several places of the shards
    assert max(first) - min(first) > 500


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_rest_of_the_epoch(clicks, monkeypatch, workers):
    path = clicks(rows=1000, files=3)
    whole = id_dataset(path, seed=3)
    whole.set_epoch(2)
    uninterrupted = ids(whole)

    first = id_dataset(path, seed=3)
    first.set_epoch(2)
    consumed = []
    for batch in first.batches(num_workers=workers):
        consumed.append(batch)
        if len(consumed) == 9:
            break
    state = first.state_dict()
    assert state == {"epoch": 2, "batches_done": 9}

    fills = []
    original = ShardDataset._fill
    monkeypatch.setattr(
        ShardDataset, "_fill", lambda self, *a: fills.append(1) or original(self, *a)
    )
    resumed = id_dataset(path, seed=3)
    resumed.load_state_dict(state)
    rest = ids(resumed.batches())
    assert ids(consumed) + rest == uninterrupted
    assert len(fills) == 2  # windows 0 and 1 (batches 0-7) were never read again
    assert resumed.state_dict() == {"epoch": 2, "batches_done": 16}


def test_file_uri_root_reads_the_same_rows(clicks):
    path = clicks(rows=300, files=2)
    manifest = read_manifest(f"file://{path.parent}")
    as_uri = dataclasses.replace(manifest, root=f"file://{manifest.root}")
    local, remote = (
        ShardDataset.from_manifest(manifest, **SMALL),
        ShardDataset.from_manifest(as_uri, **SMALL),
    )
    for a, b in zip(local, remote, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unsupported_column_type_names_the_column(tmp_path):
    table = pa.table(
        {"x": pa.array([1.0, 2.0]), "city": pa.array(["a", "b"]), "y": pa.array([0, 1])}
    )
    path = write_shards(
        tmp_path / "s", table, files=1, numeric=("x",), categorical=("city",), label="y"
    )
    with pytest.raises(ValueError, match=r"categorical column 'city' has Arrow type string"):
        ShardDataset.from_manifest(read_manifest(str(path)))


def test_ragged_list_column_and_null_labels_are_refused(tmp_path):
    ragged = pa.table({"v": pa.array([[1.0, 2.0], [3.0]]), "y": pa.array([0, 1])})
    path = write_shards(tmp_path / "r", ragged, files=1, numeric=("v",), label="y")
    with pytest.raises(ValueError, match=r"'v' must hold vectors of one length \(2\)"):
        list(ShardDataset.from_manifest(read_manifest(str(path))))
    nulls = pa.table({"x": pa.array([1.0, 2.0]), "y": pa.array([0, None])})
    path = write_shards(tmp_path / "n", nulls, files=1, numeric=("x",), label="y")
    with pytest.raises(ValueError, match=r"label column 'y' has nulls"):
        list(ShardDataset.from_manifest(read_manifest(str(path))))


def test_vanished_shards_say_so(clicks, tmp_path):
    path = clicks(rows=300, files=3)
    manifest = read_manifest(str(path))
    ds = ShardDataset.from_manifest(manifest, **SMALL)
    (path.parent / manifest.files[2].path).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"part-00002\.arrow does not exist: the Arrow shards vanished.*re-export",
    ):
        list(ds)
    shutil.rmtree(path.parent)
    with pytest.raises(FileNotFoundError, match=r"_manifest\.json does not exist.*re-export"):
        read_manifest(str(path.parent))
    with pytest.raises(FileNotFoundError, match=r"part-00000\.arrow does not exist"):
        ShardDataset.from_manifest(manifest, **SMALL)


def test_read_ahead_thread_gives_the_same_batches_and_position(clicks):
    ds = ShardDataset.from_manifest(read_manifest(str(clicks(rows=700))), batch_size=64)
    expected = list(ds.batches())
    ds.set_epoch(0)
    got = []
    for batch in ds.batches(read_ahead=3):
        got.append(batch)
        if len(got) == 4:
            break  # the consumer stops early: the thread must end, the position say 4
    assert ds.state_dict() == {"epoch": 0, "batches_done": 4}
    got += list(ds.batches(read_ahead=3))  # the rest of the epoch, resumed
    assert len(got) == len(expected) == 11
    for want, batch in zip(expected, got, strict=True):
        assert all(torch.equal(want[k], batch[k]) for k in want)
    assert not [t for t in threading.enumerate() if t.name == "shard-read-ahead"]


def test_read_ahead_thread_raises_the_readers_error(clicks):
    path = clicks(rows=300)
    ds = ShardDataset.from_manifest(read_manifest(str(path)), batch_size=64, shuffle=False)
    for shard in path.parent.glob("*.arrow"):
        shard.unlink()
    with pytest.raises(FileNotFoundError, match="vanished"):
        list(ds.batches(read_ahead=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_batches_copy_to_the_gpu_unchanged(clicks, workers):
    ds = ShardDataset.from_manifest(read_manifest(str(clicks(rows=500))), batch_size=64)
    expected = list(ds.batches())
    ds.set_epoch(0)
    for want, got in zip(expected, ds.batches(workers, True, 2 - workers), strict=True):
        assert all(t.is_pinned() for t in got.values())
        on_gpu = {k: v.to("cuda", non_blocking=True) for k, v in got.items()}
        for key in want:
            assert torch.equal(on_gpu[key].cpu(), want[key])
