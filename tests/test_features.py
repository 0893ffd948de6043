"""Features on real Spark + Delta: point-in-time aggregates, incremental = full, idempotent."""

from __future__ import annotations

import math
import random
from statistics import pstdev

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from clickdata import clicks_config, line, write_batch
from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.config import ConfigError
from sparkml_ext.feature_spec import feature_columns
from sparkml_ext.features import FeaturesError, build_features, engineer, entity_aggregates
from sparkml_ext.ingest import ingest_batch
from sparkml_ext.session import WIDE_STAGE_CONF, session_settings

DAY1 = [
    line("u1-a", "1", "2026-01-01 10:00:00", label="1", numeric="3"),
    line("u1-b", "1", "2026-01-01 10:00:30", label="0", numeric=""),
    line("u1-c", "1", "2026-01-01 10:00:30", label="1"),
    line("u2-a", "2", "2026-01-01 10:10:00", label="0"),
]
DAY1_LATER = [
    line("u1-d", "1", "2026-01-01 11:30:00", label="0"),
    line("u2-b", "2", "2026-01-03 09:00:00", label="1"),
    line("u3-a", "3", "2026-01-03 09:00:00", label="1"),
]


def _ingest(spark, cfg, root, batch, lines):
    write_batch(root / "landing" / batch, lines)
    ingest_batch(spark, cfg, batch)


def _table(spark, cfg):
    return spark.read.format("delta").load(cfg.table_path("features"))


def test_aggregates_see_only_strictly_earlier_events(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    _ingest(spark, cfg, tmp_path, "b1", DAY1 + DAY1_LATER)
    report = build_features(spark, cfg)
    assert (report.rows_in, report.rows_merged) == (7, 7)
    [warning] = report.warnings  # the events span 47 hours: 1h and 1d fit, 7d does not
    assert f"{cfg.path}: features.entities.user_id.windows: 7d is longer than the 1.9d the events in bronze span" in warning
    assert "warning: " + warning in report.summary()

    got = _table(spark, cfg).select(
        "event_id", "user_id_events_1h", "user_id_label_rate_1h", "user_id_events_1d", "user_id_label_rate_1d",
        "user_id_log_seconds_since_prev", "user_id_no_recent_event",
    )
    expected = spark.createDataFrame(
        [
            ("u1-a", 0, 0.0, 0, 0.0, -1.0, 1),
            ("u1-b", 1, 1.0, 1, 1.0, math.log1p(30), 0),  # u1-c shares its second: not "before"
            ("u1-c", 1, 1.0, 1, 1.0, 0.0, 0),
            ("u1-d", 0, 0.0, 3, 2 / 3, math.log1p(5370), 0),  # 10:00-10:00:30 fall outside 1h
            ("u2-a", 0, 0.0, 0, 0.0, -1.0, 1),
            ("u2-b", 0, 0.0, 0, 0.0, math.log1p(168600), 0),  # 2 days later: inside 7d only
            ("u3-a", 0, 0.0, 0, 0.0, -1.0, 1),
        ],
        "event_id string, user_id_events_1h int, user_id_label_rate_1h double, user_id_events_1d int, "
        "user_id_label_rate_1d double, user_id_log_seconds_since_prev double, user_id_no_recent_event int",
    )
    assert_approx_df_equality(got, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)

    row = _table(spark, cfg).where("event_id = 'u1-b'").head()
    assert row.isnull_i1 == 1 and row.log_i1 == 0.0
    assert 1 <= row.c1_id <= cfg.features.hash_buckets and row.c1 == "a1b2c3d4"
    u1d = _table(spark, cfg).where("event_id = 'u1-d'").head()
    # 7d mean of log1p(i1) over u1-a (3), u1-b (null → 0) and u1-c (1.5)
    assert u1d.user_id_events_7d == 3
    assert u1d.user_id_mean_i1_7d == pytest.approx((math.log1p(3) + 0.0 + math.log1p(1.5)) / 3)


EVERY_STATISTIC = ("features.entities.user_id.aggregates="
                   "{i1: [count, sum, mean, min, max, stddev], i3: [mean, stddev]}")


def test_window_aggregates_equal_a_brute_force_scan_over_a_heavy_user(spark, tmp_path):
    """Running-sum differences and sliding frames give what a per-row scan of [t - width, t - 1]
    gives, for every statistic."""
    spec = clicks_config(tmp_path, EVERY_STATISTIC).features
    aggregated = list(spec.entities["user_id"].aggregates)
    rng = random.Random(7)
    rows = []
    for user, events, span in (("heavy", 1500, 10 * 86400), ("light", 40, 3 * 86400), ("once", 1, 1)):
        for i in range(events):
            offset = rng.randrange(span)
            ts = 1_767_225_600 + offset - offset % rng.choice((1, 60))  # many events share a minute
            values = [rng.choice((None, -2.0, 0.0, rng.expovariate(0.01), 1e12)) for _ in aggregated]
            rows.append((f"{user}-{i}", user, ts, rng.choice((0, 1)), *values))
    events = spark.createDataFrame(rows, ["event_id", "user_id", "ts", spec.label, *aggregated])
    events = events.withColumn("event_time", F.timestamp_seconds("ts"))
    windows, columns = entity_aggregates(spec, "user_id", "event_id", "event_time", "bigint")
    got = {r["event_id"]: r for r in events.select("*", *windows).select("event_id", *columns).collect()}

    def log(value):  # signed: sign(x) * log1p(|x|), bounded by ±clip
        return math.copysign(min(math.log1p(abs(value or 0.0)), spec.clip), value or 0.0)

    def expected(statistic, values, raw):
        if statistic == "count":
            return sum(v is not None for v in raw)
        if not values:
            return 0.0
        mean = sum(values) / len(values)
        return {"sum": sum(values), "mean": mean, "min": min(values), "max": max(values),
                "stddev": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}[statistic]

    tolerance = {"count": 0, "sum": 1e-4, "mean": 1e-7, "min": 1e-12, "max": 1e-12, "stddev": 1e-6}
    by_user: dict[str, list[tuple]] = {}
    for row in rows:
        by_user.setdefault(row[1], []).append(row)
    for name, width in spec.entities["user_id"].window_seconds().items():
        for row in rows:
            window = [r for r in by_user[row[1]] if row[2] - width <= r[2] <= row[2] - 1]
            actual = got[row[0]]
            assert actual[f"user_id_events_{name}"] == len(window), (row[0], name)
            rate = sum(r[3] for r in window) / len(window) if window else 0.0
            assert actual[f"user_id_label_rate_{name}"] == pytest.approx(rate, abs=1e-12)
            for i, (column, statistics) in enumerate(spec.entities["user_id"].aggregates.items()):
                raw = [r[4 + i] for r in window]
                for statistic in statistics:
                    want = expected(statistic, [log(v) for v in raw], raw)
                    assert actual[f"user_id_{statistic}_{column}_{name}"] == pytest.approx(
                        want, abs=tolerance[statistic]), (row[0], column, statistic, name)
    assert got["once-0"]["user_id_stddev_i1_7d"] == 0.0
    # the gap to the previous event in (time, key) order: 0 after a same-second event of a smaller key
    horizon = spec.entities["user_id"].horizon()
    for user_rows in by_user.values():
        ordered = sorted(user_rows, key=lambda r: (r[2], r[0]))
        for previous, row in zip([None, *ordered], ordered):
            gap = None if previous is None else row[2] - previous[2]
            recent = gap is not None and gap <= horizon
            actual = got[row[0]]
            assert actual["user_id_log_seconds_since_prev"] == pytest.approx(math.log1p(gap) if recent else -1.0, abs=1e-12), row[0]
            assert actual["user_id_no_recent_event"] == int(not recent), row[0]


def test_each_window_aggregate_is_evaluated_once_per_row(spark, tmp_path):
    """Spark's Window operator evaluates every occurrence of a window expression, identical
    ones included: a mean's event count, an events column's sum and a gap's running max are
    each read by several features, and were summed once per reader (84 aggregates for 26
    distinct in the click spec). The plan holds each once, in one Window operator (one sort)."""
    cfg = clicks_config(tmp_path, EVERY_STATISTIC, "features.label_rate=true")
    schema = ", ".join(f"{name} {kind}" for name, kind in cfg.source.schema.items())
    features = engineer(spark.createDataFrame([], schema), cfg.features, cfg.source.key, cfg.source.event_time)
    windows, node = [], features._jdf.queryExecution().optimizedPlan()
    pending = [node]
    while pending:
        node = pending.pop()
        if node.nodeName() == "Window":
            expressions = node.windowExpressions()
            windows.append([expressions.apply(i).child().canonicalized().toString()
                            for i in range(expressions.size())])
        pending += [node.children().apply(i) for i in range(node.children().size())]
    [aggregates] = windows
    # 8 running sums to t - 1 (events, labelled events, label, i1's non-nulls, i1, i3, i1², i3²)
    # shared by the 3 windows; per window the same 8 to t - width - 1, and i1's min and max;
    # the gap's 2 (the first key of the second, the latest earlier second).
    assert len(aggregates) == len(set(aggregates)) == 8 + 3 * (8 + 2) + 2


def test_incremental_runs_equal_one_full_run_and_rerun_writes_nothing(spark, tmp_path):
    """Also for events with no entity (no history of their own): one in each batch."""
    optional_entity = "source.not_null=[event_id, event_time]"
    day1, later = DAY1 + [line("anon-a", "", "2026-01-01 10:05:00")], DAY1_LATER + [line("anon-b", "")]
    inc = clicks_config(tmp_path / "inc", optional_entity)
    _ingest(spark, inc, tmp_path / "inc", "b1", day1)
    build_features(spark, inc)
    _ingest(spark, inc, tmp_path / "inc", "b2", later)
    second = build_features(spark, inc)
    assert (second.previous_bronze_version, second.rows_in) == (0, 4)

    version = lake.current_version(spark, inc.table_path("features"))
    again = build_features(spark, inc)
    assert again.feature_version is None
    assert lake.current_version(spark, inc.table_path("features")) == version

    full = clicks_config(tmp_path / "full", optional_entity)
    _ingest(spark, full, tmp_path / "full", "b1", day1 + later)
    build_features(spark, full)
    anonymous = _table(spark, full).where("user_id IS NULL").collect()
    assert sorted((r.event_id, r.user_id_events_7d, r.user_id_no_recent_event) for r in anonymous) == [
        ("anon-a", 0, 1), ("anon-b", 0, 1)]
    columns = ["event_id", *feature_columns(full.features)["numeric"], *feature_columns(full.features)["categorical_ids"]]
    assert_df_equality(
        _table(spark, inc).select(columns), _table(spark, full).select(columns),
        ignore_row_order=True, ignore_nullable=True,
    )


def test_two_entities_incremental_equals_full_with_late_and_moved_events(spark, tmp_path):
    """Per user and per category (c1): a late event and an event updated into another category
    change the later events of both its users and both its categories, and of none else."""
    two = ("source.not_null=[event_id, event_time]", "ingest.on_existing_key=update",
           ("features.entities={user_id: {windows: [1h, 1d], aggregates: {i1: [mean, max]}}, "
            "c1: {windows: [1h], aggregates: {i1: [sum, stddev]}}}"))
    first = [line("a", "1", "2026-01-01 10:00:00", numeric="1", category="X"),
             line("b", "2", "2026-01-01 10:10:00", numeric="2", category="X"),
             line("c", "1", "2026-01-01 10:20:00", numeric="3", category="Y"),
             line("anon-a", "", "2026-01-01 10:30:00", numeric="4", category="X"),
             line("d", "3", "2026-01-01 11:00:00", numeric="5", category="X"),
             line("e", "2", "2026-01-01 12:00:00", numeric="6", category="Y"),
             line("z", "4", "2026-01-01 10:50:00", numeric="7", category="Z")]
    second = [line("f", "3", "2026-01-01 10:05:00", numeric="8", category="Y"),   # late
              line("b", "2", "2026-01-01 10:15:00", numeric="9", category="Y"),   # moved X → Y
              line("anon-b", "", "2026-01-01 10:40:00", numeric="10", category="X")]
    inc = clicks_config(tmp_path / "inc", *two)
    _ingest(spark, inc, tmp_path / "inc", "b1", first)
    build_features(spark, inc)
    before = {r.event_id: r for r in _table(spark, inc).collect()}
    _ingest(spark, inc, tmp_path / "inc", "b2", second)
    # all but a (before every change to user 1 and category X) and z (user 4, category Z)
    assert build_features(spark, inc).rows_merged == 7

    full = clicks_config(tmp_path / "full", *two)
    _ingest(spark, full, tmp_path / "full", "b1", first + second)  # the older b: a duplicate
    build_features(spark, full)
    columns = ["event_id", *feature_columns(full.features)["numeric"]]
    assert_df_equality(_table(spark, inc).select(columns), _table(spark, full).select(columns),
                       ignore_row_order=True, ignore_nullable=True)
    after = {r.event_id: r for r in _table(spark, full).collect()}
    assert (after["a"], after["z"]) == (before["a"], before["z"])
    d = after["d"]  # category X's hour up to 11:00: a, anon-a and anon-b (b moved out)
    x_hour = [math.log1p(1), math.log1p(4), math.log1p(10)]
    assert d.c1_events_1h == 3 and d.c1_sum_i1_1h == pytest.approx(sum(x_hour), abs=1e-6)
    assert d.c1_stddev_i1_1h == pytest.approx(pstdev(x_hour), abs=1e-6)
    assert (d.user_id_events_1h, d.user_id_max_i1_1h) == (1, pytest.approx(math.log1p(8)))  # f, late


def test_the_entity_may_also_be_a_categorical(spark, tmp_path):
    cfg = clicks_config(tmp_path, "features.categorical=[user_id, c1]")
    _ingest(spark, cfg, tmp_path, "b1", DAY1)
    assert build_features(spark, cfg).rows_merged == 4
    table = _table(spark, cfg)
    assert table.columns.count("user_id") == 1 and "user_id_id" in table.columns
    assert set(feature_columns(cfg.features)["categorical_raw"]) <= set(table.columns)


def test_a_stage_too_long_for_the_jit_runs_operator_by_operator_in_the_features_write(spark, tmp_path, monkeypatch):
    """HotSpot never JIT-compiles a method over 8,000 bytes of bytecode, and whole-stage code
    generation makes the click table's first stage (107 row columns) one method of 14,156: run
    so, it ran in the bytecode interpreter, twice as slow (benchmarks/README.md). The features
    write runs with Spark's limit at 8,000, so Spark runs such a stage operator by operator;
    the session keeps Spark's default outside it (MLlib's transforms ran 4x slower with the
    limit), and a value the user set wins. Spark falls back when it executes a stage, so the
    plan still shows the long method: this checks that the limit is needed and where it holds;
    the benchmark shows what it saves."""
    cfg = clicks_config(tmp_path)
    _ingest(spark, cfg, tmp_path, "b1", DAY1)
    bronze = spark.read.format("delta").load(cfg.table_path("bronze"))
    # Spark's default; the suite's is NO_CODEGEN (no whole-stage methods)
    with session_settings(spark, {"spark.sql.codegen.factoryMode": "FALLBACK"}, override=True):
        features = engineer(bronze, cfg.features, cfg.source.key, cfg.source.event_time)
        features.collect()  # adaptive execution plans its stages as it runs them
        plan = features._jdf.queryExecution().executedPlan()
        stages = spark._jvm.org.apache.spark.sql.execution.debug.package.codegenStringSeq(plan)
    longest = max(stages.apply(i)._3().maxMethodCodeSize() for i in range(stages.size()))
    assert longest > 8000, f"the longest generated method is {longest} bytes: the limit may no longer be needed"

    [(name, limit)] = WIDE_STAGE_CONF.items()
    limits_seen, merge = [], lake.merge_by_key

    def merge_noting_the_limit(*args, **kwargs):
        limits_seen.append(spark.conf.get(name))
        return merge(*args, **kwargs)

    monkeypatch.setattr(lake, "merge_by_key", merge_noting_the_limit)
    build_features(spark, cfg)
    assert spark.conf.get(name, None) is None  # the session's default again
    with session_settings(spark, {name: "12000"}, override=True):  # a user's own value
        _ingest(spark, cfg, tmp_path, "b2", DAY1_LATER)
        build_features(spark, cfg)
        assert spark.conf.get(name) == "12000"
    assert limits_seen == [limit, "12000"]


def test_numeric_transforms_keep_the_sign_or_take_the_value_as_it_is(spark, tmp_path):
    spec = clicks_config(tmp_path, "features.numeric={i1: log1p, i2: none, i3: {transform: none, clip: [-10, 10]}}",
                         "features.entities={user_id: {windows: [1d], aggregates: {i1: [mean], i3: [mean]}}}",
                         "features.categorical=[]").features
    rows = [("a", "u", 0, 1, -5.0, -20.0, -50.0), ("b", "u", 60, 0, 3.0, 7.5, 4.0),
            ("c", "u", 120, None, None, None, None)]
    events = spark.createDataFrame(rows, "event_id string, user_id string, ts long, label int, "
                                         "i1 double, i2 double, i3 double")
    events = events.withColumn("event_time", F.timestamp_seconds("ts"))
    got = {r.event_id: r for r in engineer(events, spec, "event_id", "event_time").collect()}
    assert feature_columns(spec)["numeric"][:6] == ["log_i1", "i2", "i3", "isnull_i1", "isnull_i2", "isnull_i3"]
    assert got["a"].log_i1 == pytest.approx(-math.log1p(5)) and got["b"].log_i1 == pytest.approx(math.log1p(3))
    assert (got["a"].i2, got["a"].i3, got["b"].i3) == (-20.0, -10.0, 4.0)  # as is; clipped to its bounds
    assert (got["c"].i2, got["c"].isnull_i2) == (0.0, 1)
    assert got["c"].user_id_mean_i3_1d == pytest.approx((-10.0 + 4.0) / 2)
    assert got["c"].user_id_mean_i1_1d == pytest.approx((math.log1p(3) - math.log1p(5)) / 2, abs=1e-7)
    assert got["c"].user_id_label_rate_1d == pytest.approx(0.5)


def test_spec_naming_a_missing_or_text_column_is_refused(spark, tmp_path):
    cfg = clicks_config(tmp_path, "features.entities.user_id.aggregates={i1: [mean], nope: [max]}")
    _ingest(spark, cfg, tmp_path, "b1", DAY1)
    with pytest.raises(ConfigError, match="features.entities.user_id.aggregates: column 'nope' is not in the bronze table"):
        build_features(spark, cfg)
    with pytest.raises(ConfigError, match=r"features.numeric: column 'c1' is string in bronze, not a number; "
                                          r"declare it .* or list it under features.categorical"):
        build_features(spark, clicks_config(tmp_path, "features.numeric=[i1, c1]"))
    assert lake.current_version(spark, cfg.table_path("features")) is None


def test_a_fractional_label_too_large_to_sum_is_refused_naming_the_key(spark, tmp_path):
    """A double label's rate sums it in units of 2^-24: values near 1e12 overflow a long, and
    the job says which key and what to do, instead of Spark's ARITHMETIC_OVERFLOW."""
    cfg = clicks_config(tmp_path, "source.schema.label=double", "source.checks={}",
                        "features.entities.user_id.aggregates={}")
    _ingest(spark, cfg, tmp_path, "b1", [line(f"e{i}", "1", f"2026-01-01 10:0{i}:00", label="9e11") for i in range(3)])
    with pytest.raises(FeaturesError, match=r"features.label_rate: a window's sum of the label 'label' overflowed"):
        build_features(spark, cfg)
    assert lake.current_version(spark, cfg.table_path("features")) is None


def test_changed_spec_is_refused_and_missing_bronze_is_clear(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    with pytest.raises(FeaturesError, match="no bronze table .* run `sparkml-ext ingest` first"):
        build_features(spark, cfg)
    _ingest(spark, cfg, tmp_path, "b1", DAY1)
    build_features(spark, cfg)
    with pytest.raises(ConfigError, match="the feature spec changed"):
        build_features(spark, clicks_config(tmp_path, "features.clip=5"))
