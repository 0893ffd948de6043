"""publish-online: the entity histories online scoring needs, from the feature table's bronze.

A feature table version records the bronze version it was built from; the window
features of an event are computed from bronze's events of its entities. So the state
published for serving is, per entity value, its bronze events at that version from
(newest event − longest window − online.late_tolerance) on, with exactly the fields the
definitions read (time, key, whether labelled, the label, each aggregated column), sorted
and packed as Arrow IPC by the executors (`applyInArrow`), streamed to the driver one
partition at a time into the store. A later publish rewrites only the entity values that
bronze's change feed shows changed since the version the store holds (and removes those
left with no events); another spec, late_tolerance or an older version rewrites all.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.config import (
    PipelineConfig,
    is_numeric_type,
    parse_duration,
)
from sparkml_ext.feature_spec import spec_fingerprint
from sparkml_ext.feature_table import processed_version
from sparkml_ext.online.errors import PublishError
from sparkml_ext.online.features import KEY, LABEL, LABELLED, TIME, check_servable
from sparkml_ext.online.store import SQLiteStore

JOB = "publish-online"
_VALUE = "_value"
_PACKED = "value string, events binary"


def publish_online(spark: SparkSession, cfg: PipelineConfig, feature_version: int | None = None) -> dict:
    """Bring the online store up to a feature table version (default: online.feature_version,
    else the latest)."""
    started = time.monotonic()
    check_servable(cfg)
    spec, event_time = cfg.features, cfg.source.event_time
    features_path, bronze_path = cfg.table_path("features"), cfg.table_path("bronze")
    pinned = feature_version if feature_version is not None else cfg.online.feature_version
    version = pinned if pinned is not None else lake.current_version(spark, features_path)
    fingerprint = spec_fingerprint(spec)
    bronze_version = (processed_version(spark, features_path, fingerprint, cfg.path, version)
                      if version is not None else None)
    if bronze_version is None:
        raise PublishError(f"no feature table at {features_path}"
                           f"{f' version {version}' if version is not None else ''}: run `sparkml-ext features` first")
    store = SQLiteStore(cfg.online_store())
    before = store.facts()
    facts = {"pipeline": cfg.name, "spec": fingerprint, "feature_version": version,
             "bronze_version": bronze_version, "late_tolerance": cfg.online.late_tolerance,
             "entities": list(spec.entities)}
    if all(before.get(k) == facts[k] for k in ("spec", "feature_version", "late_tolerance", "pipeline")):
        return _result(cfg, facts | {k: before[k] for k in ("newest_event", "exact_from")}, 0, "already", started)

    bronze, _ = lake.read_version(spark, bronze_path, bronze_version)
    newest = bronze.agg(F.max(F.col(event_time).cast("long"))).first()[0] if spec.entities else None  # driver-ok
    late = parse_duration(cfg.online.late_tolerance)
    facts |= {"newest_event": _when(newest), "exact_from": None if newest is None else newest - late,
              "published_at": datetime.now(UTC).isoformat(timespec="seconds")}
    since = before.get("bronze_version")
    incremental = (since is not None and since < bronze_version
                   and all(before.get(k) == facts[k] for k in ("spec", "late_tolerance", "pipeline")))
    changed = lake.read_changes(spark, bronze_path, since + 1, bronze_version) if incremental else None
    rows = _histories(cfg, bronze, newest, late, changed) if newest is not None else []
    written = store.publish(facts, rows, replace=not incremental)
    how = f"bronze v{since}→v{bronze_version}, changed entities only" if incremental else "all"
    return _result(cfg, facts, written, how, started)


def _histories(cfg: PipelineConfig, bronze: DataFrame, newest: int, late: int, changed: DataFrame | None):
    """(entity, value, packed events or None) for each entity value to (re)write."""
    spec, key, event_time = cfg.features, cfg.source.key, cfg.source.event_time
    seconds = F.col(event_time).cast("long")
    for entity, history in spec.entities.items():
        cutoff = newest - history.horizon() - late
        events = bronze.where(F.col(entity).isNotNull() & (seconds >= cutoff)).select(
            F.col(entity).cast("string").alias(_VALUE),
            seconds.alias(TIME),
            F.col(key).alias(KEY),
            F.col(spec.label).isNotNull().alias(LABELLED),
            *([F.col(spec.label).cast("double").alias(LABEL)] if spec.label_rate else []),
            *[_aggregated(cfg, column).alias(column) for column in history.aggregates],
        )
        packed = events.groupBy(_VALUE).applyInArrow(_pack, _PACKED)
        if changed is not None:  # the changed values, and None for one left with no events
            values = changed.where(F.col(entity).isNotNull()).select(F.col(entity).cast("string").alias("value"))
            packed = values.distinct().join(packed, "value", "left")
        for row in packed.toLocalIterator(prefetchPartitions=True):  # driver-ok: one partition at a time
            yield entity, row.value, row.events


def _aggregated(cfg: PipelineConfig, column: str) -> Column:
    """An aggregated column as the definitions read it: a number as a double; a column of
    another type only counts (1.0 where present)."""
    if is_numeric_type(cfg.source.schema[column]):
        return F.col(column).cast("double")
    return F.when(F.col(column).isNotNull(), F.lit(1.0)).cast("double")


def _pack(table: pa.Table) -> pa.Table:
    """Executor side: one entity value's events, sorted by (time, key), as Arrow IPC bytes."""
    value = table.column(_VALUE)[0].as_py()
    events = table.drop_columns([_VALUE]).sort_by([(TIME, "ascending"), (KEY, "ascending")])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, events.schema) as writer:
        writer.write_table(events)
    return pa.table({"value": [value], "events": pa.array([sink.getvalue().to_pybytes()], pa.binary())})


def _result(cfg: PipelineConfig, facts: dict, written: int, how: str, started: float) -> dict:
    """The job's report; `how`: "already" (nothing written), "all", or which changes."""
    if how == "already":
        summary = f"publish-online: feature v{facts['feature_version']} already published to {cfg.online_store()}"
    else:
        summary = (f"publish-online: feature v{facts['feature_version']} ({how}): {written} entity histories "
                   f"→ {cfg.online_store()}; exact for events from {_when(facts.get('exact_from'))}")
    return {"job": JOB, "summary": summary, "counts": {"histories written": written}, **facts,
            "store": cfg.online_store(), "seconds": round(time.monotonic() - started, 1)}


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "any time (no window features)"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
