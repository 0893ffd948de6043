"""The feature table's columns for events that are not in it yet, without Spark.

The online executor of the definitions that `features.py` runs on Spark: the same names,
windows, statistics, transforms and fixed-point widths, all taken from `feature_spec` and
the pipeline's `features` section, computed with numpy over the entity histories that
`publish-online` wrote. For an event at time t an entity's columns read only its published
events in [t - longest window, t), exactly what the batch job reads from bronze; sums are
the same integers in the same units, so a window's count, sum, mean and stddev equal the
batch job's, and the row transforms differ from Spark's by at most an ulp of log1p.
tests/test_online.py holds the two executors equal over every statistic and transform.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from sparkml_ext.config import ConfigError, FeaturesConfig, PipelineConfig
from sparkml_ext.feature_spec import (
    aggregate_name,
    entity_columns,
    feature_columns,
    fixed_point_bits,
    label_bits,
    numeric_names,
)

TIME, KEY, LABELLED, LABEL = "t", "key", "labelled", "label"  # a history's own columns
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HASH_SEED = 42  # Spark's xxhash64 seed
_HASHED_AS_INT = ("tinyint", "smallint", "int")  # Spark hashes these as 4 bytes, bigint as 8


@dataclass(frozen=True)
class History:
    """One entity value's published events, sorted by (time, key): epoch seconds, keys,
    whether each is labelled, the label (as a double, when the spec has label rates) and each
    aggregated column's value as bronze holds it (NaN for null)."""

    seconds: np.ndarray
    keys: list
    labelled: np.ndarray
    label: np.ndarray | None
    values: dict[str, np.ndarray]

    @classmethod
    def from_arrow(cls, table: pa.Table) -> History:
        names = table.column_names
        values = {n: table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                  for n in names if n not in (TIME, KEY, LABELLED, LABEL)}
        return cls(table.column(TIME).to_numpy(), table.column(KEY).to_pylist(),
                   table.column(LABELLED).to_numpy(zero_copy_only=False).astype(np.int64),
                   table.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float64) if LABEL in names else None,
                   values)


EMPTY_VALUES = np.empty(0, np.float64)
EMPTY = History(np.empty(0, np.int64), [], np.empty(0, np.int64), EMPTY_VALUES, {})  # no events


def epoch_seconds(moment: datetime) -> int:
    """A timestamp as Spark casts it to long: whole seconds since the epoch, rounded down (a
    naive time is UTC, the jobs' session time zone)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_SECOND


_ONE_SECOND = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC) - _EPOCH


def spark_round(x: np.ndarray) -> np.ndarray:
    """Spark's round(x) of doubles: half away from zero (numpy's rounds half to even)."""
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    return np.sign(x) * (whole + (magnitude - whole >= 0.5))


def spark_text(value: object) -> str:
    """A value of a text, whole-number or boolean column as Spark casts it to string: how the
    store keys entity values and the frequency encoder looks categories up."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def spark_xxhash64(value: object, spark_type: str) -> int:
    """Spark's xxhash64 of one non-null value of a string, integer or boolean column."""
    import xxhash  # the serve extra: only the server hashes

    if spark_type == "string":
        data = str(value).encode("utf-8")
    elif spark_type in _HASHED_AS_INT or spark_type == "boolean":
        data = struct.pack("<i", int(value))
    elif spark_type == "bigint":
        data = struct.pack("<q", int(value))
    else:
        raise TypeError(f"no online hash for a {spark_type} column")
    unsigned = xxhash.xxh64_intdigest(data, seed=_HASH_SEED)
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


HASHABLE_TYPES = ("string", "bigint", "boolean", *_HASHED_AS_INT)
KEYED_TYPES = ("string", "bigint", *_HASHED_AS_INT)  # entities whose Spark text is str(value)


class OnlineFeatures:
    """The feature spec's columns for a batch of raw events and their entities' histories.

    `types`: the source's Spark type of each column (source.schema).
    """

    def __init__(self, spec: FeaturesConfig, types: Mapping[str, str], key: str):
        self.spec, self.types, self.key = spec, dict(types), key
        self.label_bits = label_bits(types[spec.label])
        self.columns = feature_columns(spec)
        # what an event must carry (its own aggregated values count only in later events' windows)
        self.inputs = list(dict.fromkeys([key, *spec.entities, *spec.numeric, *spec.categorical]))

    def compute(self, events: Mapping[str, Sequence], seconds: np.ndarray,
                histories: Mapping[str, Sequence[History]]) -> dict[str, np.ndarray]:
        """Every column of `feature_columns(spec)` (numeric and categorical ids) for the
        events: `events` holds each input column's values (None for null), `seconds` each
        event's time, `histories[entity]` each event's history of that entity (EMPTY
        for a null or unseen value)."""
        out: dict[str, np.ndarray] = {}
        for column, name in numeric_names(self.spec).items():
            out[name] = self.numeric_feature(column, self._doubles(column, events[column]))
        for column in self.spec.numeric:
            out[f"isnull_{column}"] = np.array([v is None for v in events[column]], dtype=np.int64)
        for entity in self.spec.entities:
            out.update(self._entity_columns(entity, events, seconds, histories[entity]))
        buckets = self.spec.hash_buckets
        for column in self.spec.categorical:
            out[f"{column}_id"] = np.array(
                [0 if v is None else spark_xxhash64(v, self.types[column]) % buckets + 1 for v in events[column]],
                dtype=np.int64)
        return out

    def numeric_feature(self, column: str, value: np.ndarray) -> np.ndarray:
        """features.numeric_feature: clipped, then sign(x) * log1p(|x|) within ±clip, or as it
        is; NaN (null) → 0."""
        numeric = self.spec.numeric_spec(column)
        value = np.where(np.isnan(value), 0.0, value)
        if numeric.clip:
            value = np.minimum(np.maximum(value, float(numeric.clip[0])), float(numeric.clip[1]))
        if numeric.transform == "none":
            return value
        return np.minimum(np.maximum(np.sign(value) * np.log1p(np.abs(value)), -self.spec.clip), self.spec.clip)

    def _doubles(self, column: str, values: Sequence) -> np.ndarray:
        """A column's values as Spark casts them to double (a float column holds float32)."""
        doubles = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        return doubles.astype(np.float32).astype(np.float64) if self.types[column] == "float" else doubles

    def _entity_columns(self, entity: str, events: Mapping[str, Sequence], seconds: np.ndarray,
                        histories: Sequence[History]) -> dict[str, np.ndarray]:
        history_spec = self.spec.entities[entity]
        windows = history_spec.window_seconds()
        rows = [self._entity_row(entity, h, int(t), k, windows, history_spec.horizon())
                for h, t, k in zip(histories, seconds, events[self.key], strict=True)]
        return {name: np.array([r[name] for r in rows], dtype=np.float64)
                for name in entity_columns(self.spec, entity)}

    def _entity_row(self, entity: str, h: History, t: int, key: object, windows: dict[str, int],
                    horizon: int) -> dict[str, float]:
        """One event's columns of one entity (features.entity_aggregates), from its history."""
        row: dict[str, float] = {}
        aggregates = self.spec.entities[entity].aggregates
        end = int(np.searchsorted(h.seconds, t - 1, side="right"))  # events at or before t - 1
        for window, width in windows.items():
            start = int(np.searchsorted(h.seconds, t - width, side="left"))
            labelled = int(h.labelled[start:end].sum())
            rows = end - start
            row[aggregate_name(entity, "events", window)] = labelled
            if self.spec.label_rate:
                label = h.label[start:end]
                label = label[~np.isnan(label)]  # an unlabelled event adds nothing
                total = int(spark_round(label * float(2**self.label_bits)).astype(np.int64).sum())
                row[aggregate_name(entity, "label_rate", window)] = _mean(total, labelled, self.label_bits)
            for column, statistics in aggregates.items():
                raw = h.values.get(column, EMPTY_VALUES)[start:end]
                # the feature values once per window, for all its statistics; a count needs none
                value = self.numeric_feature(column, raw) if set(statistics) != {"count"} else raw
                for statistic in statistics:
                    name = aggregate_name(entity, statistic, window, column)
                    row[name] = self._statistic(column, statistic, raw, value, rows)
        at = int(np.searchsorted(h.seconds, t, side="left"))  # events before t: [0, at)
        same_second = h.keys[at:int(np.searchsorted(h.seconds, t, side="right"))]
        tied_before = any(k < key for k in same_second)
        gap = 0 if tied_before else (t - int(h.seconds[at - 1]) if at else None)
        recent = gap is not None and gap <= horizon
        row[aggregate_name(entity, "log_seconds_since_prev")] = float(np.log1p(gap)) if recent else -1.0
        row[aggregate_name(entity, "no_recent_event")] = 0 if recent else 1
        return row

    def _statistic(self, column: str, statistic: str, raw: np.ndarray, value: np.ndarray, rows: int) -> float:
        """features._statistic over one window's values of a column: `raw` as bronze holds
        them (NaN: null), `value` their feature values (unused by a count)."""
        if statistic == "count":
            return int(np.count_nonzero(~np.isnan(raw)))
        if statistic in ("min", "max"):
            return float(value.min() if statistic == "min" else value.max()) if rows else 0.0
        bits = fixed_point_bits(self.spec.bound(column))
        units = spark_round(value * float(2**bits)).astype(np.int64)
        total = int(units.sum())
        if statistic == "sum":
            return total / float(2**bits)
        if statistic == "mean":
            return _mean(total, rows, bits)
        squares = sum(int(u) * int(u) for u in units)  # exact, as Spark's decimal(38,0)
        spread = rows * squares - total * total
        return float(np.sqrt(float(spread))) / rows / float(2**bits) if rows else 0.0


def _mean(fixed_sum: int, count: int, bits: int) -> float:
    return fixed_sum / float(2**bits) / count if count > 0 else 0.0


def check_servable(cfg: PipelineConfig) -> None:
    """Refuse, naming the key, a spec whose online columns could not equal the batch job's:
    an entity or a hashed category of a type whose Spark text or hash is not reproduced."""
    types = cfg.source.schema
    for entity in cfg.features.entities:
        if types.get(entity) not in KEYED_TYPES:
            raise ConfigError(f"{cfg.path}: features.entities.{entity}: online serving keys histories by string "
                              f"or whole-number entities; {entity!r} is {types.get(entity)}")
    for column in cfg.features.categorical:
        if types.get(column) not in HASHABLE_TYPES:
            raise ConfigError(f"{cfg.path}: features.categorical: online serving hashes {', '.join(HASHABLE_TYPES)} "
                              f"columns as Spark does; {column!r} is {types.get(column)}")
