"""Fixtures of the torch-side tests."""

from pathlib import Path

import pytest
from shardkit import CLICK_COLUMNS, click_table, write_shards


@pytest.fixture
def clicks(tmp_path):
    """A function (rows, files, seed, name) -> manifest path of synthetic click shards."""

    def make(rows: int = 1000, files: int = 3, seed: int = 0, name: str = "shards") -> Path:
        return write_shards(tmp_path / name, click_table(rows, seed), files, **CLICK_COLUMNS)

    return make
