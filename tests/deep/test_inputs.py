"""The model's input statistics and vocabularies, from a seeded sample of the training rows."""

import numpy as np
import pyarrow as pa
import pytest
from shardkit import write_shards

from sparkml_ext.deep.inputs import frequent_ids, numeric_stats
from sparkml_ext.deep.shard_reader import read_manifest


def test_frequent_ids_are_each_columns_most_common_non_null_ids(tmp_path):
    # column a: 9 x4, 5 x3, 2 x2, 7 x1, null (0) x6; column b: 1 x8, 3 x8 (a tie)
    a = [9] * 4 + [5] * 3 + [2] * 2 + [7] + [0] * 6
    b = [1] * 8 + [3] * 8
    table = pa.table({"x": pa.array([0.5] * 16), "a": pa.array(a), "b": pa.array(b),
                      "y": pa.array([0, 1] * 8, pa.int8())})
    path = write_shards(tmp_path / "s", table, files=2, numeric=("x",), categorical=("a", "b"),
                        label="y", batch_rows=4)
    manifest = read_manifest(str(path))
    assert frequent_ids(manifest, top=3) == [[2, 5, 9], [1, 3]]
    assert frequent_ids(manifest, top=1) == [[9], [1]]  # a tie goes to the smaller id
    assert frequent_ids(manifest, top=3, sample_rows=16, seed=5) == [[2, 5, 9], [1, 3]]


def test_numeric_stats_are_of_squashed_values_and_a_constant_gets_std_one(tmp_path):
    x = np.array([-100.0, -1.0, 0.0, 3.0, 1e6] * 4)
    table = pa.table({"x": pa.array(x), "flat": pa.array([7.0] * 20),
                      "y": pa.array([0, 1] * 10, pa.int8())})
    path = write_shards(tmp_path / "s", table, files=2, numeric=("x", "flat"), label="y",
                        batch_rows=4)
    mean, std = numeric_stats(read_manifest(str(path)))
    squashed = np.sign(x) * np.log1p(np.abs(x))
    assert mean == pytest.approx([squashed.mean(), np.log1p(7.0)])
    assert std == pytest.approx([squashed.std(), 1.0])
