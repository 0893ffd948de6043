"""The contract between the Spark side (bridge) and the torch side (deep).

Spark executors write Arrow IPC *file* format shards (memory-mappable) under a root
URI; the driver records them in a manifest. Ranks get contiguous row ranges of the
concatenated shards, equal to within one row, so that every row is read exactly once
per epoch and no rank runs out of data far ahead of the others.

Pure Python: no pyspark, no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

MANIFEST_NAME = "_manifest.json"


@dataclass(frozen=True)
class ShardFile:
    """One Arrow IPC file: its path relative to the manifest root, row count and size."""

    path: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class RowSlice:
    """Rows [offset, offset + length) of one shard file."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True)
class Manifest:
    """What a training process needs to find and interpret the shards.

    `source` is the cache key the shards were built from (table, version, columns,
    filter); `schema` maps column name to its Arrow type as text.
    """

    root: str
    files: tuple[ShardFile, ...]
    schema: dict[str, str]
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    label: str | None = None
    source: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["files"] = tuple(ShardFile(**f) for f in raw["files"])
        raw["numeric"] = tuple(raw.get("numeric", ()))
        raw["categorical"] = tuple(raw.get("categorical", ()))
        return cls(**raw)


def assign_rows(files: tuple[ShardFile, ...] | list[ShardFile], world_size: int) -> list[list[RowSlice]]:
    """Split the concatenated shards into `world_size` contiguous, row-balanced ranges.

    Rank r gets rows [r*N//W, (r+1)*N//W) of the concatenation, expressed as slices of
    files; the sizes differ by at most one row and together cover every row once.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    total = sum(f.rows for f in files)
    bounds = [r * total // world_size for r in range(world_size + 1)]
    ranks: list[list[RowSlice]] = [[] for _ in range(world_size)]
    start = 0
    for f in files:
        end = start + f.rows
        for r in range(world_size):
            lo, hi = max(start, bounds[r]), min(end, bounds[r + 1])
            if lo < hi:
                ranks[r].append(RowSlice(f.path, lo - start, hi - lo))
        start = end
    return ranks
