"""`sparkml-ext init`: a pipeline file written from a sample of the user's own data.

Spark reads the first SAMPLE_ROWS records of the landing batches (CSV with or without a
header, JSON, Parquet) or of a Delta / catalog table, and one aggregate over them measures
every column at once: how many values are null, how many distinct, which Spark type each
text value takes (the same `try_cast` / `try_to_timestamp` ingest types it with, so what
init declares, ingest accepts), the range of numbers and times. From those facts it
proposes the key, the event time, the entities, numeric transforms and categoricals, and
writes a commented file that the loader accepts and `pipeline` runs as it is. What the
facts cannot settle is a `# QUESTION:` comment beside the choice it made, never a silent
guess. Only the one row of facts and a few raw lines reach the driver.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext.config import ConfigError, is_numeric_type, load_config

SAMPLE_ROWS = 20_000
DATA_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".json": "json", ".jsonl": "json",
                 ".ndjson": "json", ".parquet": "parquet"}
# Tried in order on a text column; the first that reads every non-null value wins.
TIMESTAMP_FORMATS = ("yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ssX", "yyyy-MM-dd'T'HH:mm:ss",
                     "yyyy-MM-dd'T'HH:mm:ss.SSSX", "yyyy-MM-dd HH:mm:ss.SSS", "yyyy-MM-dd HH:mm",
                     "yyyy-MM-dd", "MM/dd/yyyy HH:mm:ss", "MM/dd/yyyy HH:mm", "MM/dd/yyyy",
                     "dd.MM.yyyy HH:mm:ss", "yyyy/MM/dd HH:mm:ss", "yyyy/MM/dd")
NULL_TOKENS = ("NA", "N/A", "NULL", "null", "NaN", "-")
WINDOWS = {"1h": 3600, "1d": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
TABLE_TYPES = {"string": "string", "int": "int", "bigint": "bigint", "smallint": "int", "tinyint": "int",
               "double": "double", "float": "double", "boolean": "boolean", "timestamp": "timestamp",
               "timestamp_ntz": "timestamp", "date": "date"}
GENERIC_FOLDERS = {"landing", "data", "raw", "input", "batches", "public", "/", "."}
ID_NAME = re.compile(r"(^|_)(id|key|uuid|code|number|no)$", re.IGNORECASE)
TIME_NAME = re.compile(r"time|date|(^|_)(ts|at|hour|day)$", re.IGNORECASE)


class InitError(ValueError):
    """Input init cannot write a pipeline for; the message says what to do."""


@dataclass
class Source:
    """Where the records are and how a reader opens them."""

    format: str
    path: str | None = None  # the landing root (folders of batches) or the Delta table's path
    table: str | None = None  # a catalog table
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class Facts:
    """What the sample says about one column."""

    name: str
    type: str  # the Spark SQL type declared in source.schema
    nulls: float  # share of the sampled records without a value
    distinct: int
    low: float | None = None
    high: float | None = None
    whole: bool = False  # a number whose every sampled value is whole
    span: float = 0.0  # a timestamp: seconds between the earliest and latest sampled value
    timestamp_format: str | None = None
    unsupported: str | None = None  # a table type source.schema cannot declare


def write_pipeline(spark: SparkSession, source: str, label: str, out: str, name: str | None = None) -> dict:
    """Write the pipeline file for `source` (a landing root, a Delta table's path, or a
    catalog table's name) predicting `label` to `out` (empty: `<name>.yaml` here); returns
    what init decided."""
    located = locate(spark, source)
    name = name or _name(source, located)
    out = out or f"{name}.yaml"
    if Path(out).exists():
        raise InitError(f"{out} exists; init does not overwrite a pipeline file: pass --out NEW_FILE")
    sample = _read_sample(spark, located)
    columns, rows = profile(sample, located)
    if label not in columns:
        raise InitError(f"--label {label}: no such column in {source} (columns: {', '.join(columns)})")
    plan = propose(columns, rows, label)
    text = render(name, located, columns, plan, rows, source)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    try:
        load_config(out)
    except ConfigError as err:  # init's own mistake: never leave a file that does not load
        Path(out).unlink()
        raise InitError(f"init wrote a pipeline file the loader refuses ({err}); nothing was kept. "
                        "Please report this with the command you ran") from None
    return {"job": "init", "pipeline": out, "rows_sampled": rows, **plan.summary(),
            "summary": f"init: wrote {out} from {rows} sampled records of {source}; read it, then run "
                       f"`sparkml-ext pipeline --pipeline {out}`"}


def _name(source: str, located: Source) -> str:
    """The pipeline's name: the table's, or the landing root's folder (its parent's for a
    folder named like every landing root)."""
    if located.table:
        return re.sub(r"\W+", "_", located.table.rpartition(".")[2]).lower()
    parts = [p for p in Path(source.rstrip("/")).parts if p.lower() not in GENERIC_FOLDERS]
    return re.sub(r"\W+", "_", parts[-1] if parts else "pipeline").strip("_").lower() or "pipeline"


def locate(spark: SparkSession, source: str) -> Source:
    """The source's format and reader options, from what is at `source` (a URI is taken for
    a Delta table: landing folders on an object store are not listed here yet)."""
    path = Path(source)
    if "://" not in source and not path.exists():
        if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*){0,2}", source) and spark.catalog.tableExists(source):
            return Source("delta", table=source)
        raise InitError(f"--from {source}: no such folder, Delta table or catalog table")
    if (path / "_delta_log").is_dir() or "://" in source:
        return Source("delta", path=source)
    if path.is_file():
        raise InitError(f"--from {source} is a file; pipeline ingests batch folders under a landing root. "
                        f"Move it into a folder of its own, e.g. `mkdir -p landing/batch-0001 && mv {source} "
                        "landing/batch-0001/`, and run `sparkml-ext init --from landing`")
    batches = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    loose = [p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
    if loose or not batches:
        raise InitError(f"--from {source}: pipeline ingests each batch from a folder of its own under the "
                        f"landing root, and {source} holds {'data files directly' if loose else 'no folders'}; "
                        f"put each batch's files in `{source}/<batch id>/` (e.g. batch-0001)")
    suffixes = {f.suffix.lower() for b in batches for f in (path / b).rglob("*") if f.is_file()
                and not f.name.startswith(("_", "."))}
    formats = {DATA_SUFFIXES[s] for s in suffixes if s in DATA_SUFFIXES}
    if len(formats) != 1:
        found = ", ".join(sorted(suffixes)) or "no files"
        raise InitError(f"--from {source}: expected files of one format (.csv/.tsv, .json/.jsonl or .parquet) "
                        f"in its batch folders, found {found}")
    (fmt,) = formats
    located = Source(fmt, path=str(path.resolve()))
    if fmt == "csv":
        located.options = _csv_options(spark, located.path)
    return located


def _csv_options(spark: SparkSession, root: str) -> dict[str, str]:
    """Separator and header, from the first lines (`profile` finds the null token)."""
    first = (spark.read.option("recursiveFileLookup", "true").text(root)
             .where(F.trim("value") != "").limit(50).collect())  # driver-ok: 50 lines
    lines = [r.value for r in first]
    if not lines:
        raise InitError(f"--from {root}: its files hold no lines")
    sep = max((",", "\t", ";", "|"), key=lambda s: (len({line.count(s) for line in lines}) == 1, lines[0].count(s)))
    head, *body = (line.split(sep) for line in lines)
    numeric = re.compile(r"-?\d+(\.\d*)?([eE][-+]?\d+)?")
    header = (len(set(head)) == len(head) and not any(numeric.fullmatch(v.strip()) for v in head)
              and (not body or any(numeric.fullmatch(v.strip()) for row in body for v in row)
                   or all(re.fullmatch(r"[A-Za-z_][\w ]*", v.strip()) for v in head)))
    return {"sep": sep, "header": str(header).lower()}


def _read_sample(spark: SparkSession, source: Source) -> DataFrame:
    """The first SAMPLE_ROWS records, text formats with every column as text (as ingest reads
    them); a table or Parquet with its own types."""
    reader = spark.read.option("recursiveFileLookup", "true")
    if source.format == "delta":
        df = spark.read.table(source.table) if source.table else spark.read.format("delta").load(source.path)
    elif source.format == "parquet":
        df = reader.parquet(source.path)
    elif source.format == "json":
        names = reader.json(source.path).columns  # names only; typing is ours, below
        df = reader.schema(", ".join(f"`{c}` string" for c in names if c != "_corrupt_record")).json(source.path)
    else:
        df = reader.options(**source.options).csv(source.path)  # every column a string
        if source.options["header"] == "false":
            df = df.toDF(*[f"c{i + 1}" for i in range(len(df.columns))])
    return df.limit(SAMPLE_ROWS)


def profile(sample: DataFrame, source: Source) -> tuple[dict[str, Facts], int]:
    """Every column's facts from one aggregate over the sample. In CSV, a null token (NA,
    NULL, ...) counts as a null, and the commonest one found becomes the reader's nullValue."""
    text = source.format in ("csv", "json")
    types = dict(sample.dtypes)
    measures: list[Column] = [F.count(F.lit(1)).alias("_rows")]
    for i, c in enumerate(sample.columns):
        value = F.col(f"`{c}`")
        if source.format == "csv":
            measures += [F.count(F.when(value == token, 1)).alias(f"tok{i}_{k}") for k, token in enumerate(NULL_TOKENS)]
            value = F.when(~value.isin(*NULL_TOKENS), value)
        measures += [F.count(value).alias(f"n{i}"), F.count_distinct(value).alias(f"d{i}")]
        number = value.try_cast("double") if text else (value.cast("double") if is_numeric_type(types[c]) else None)
        if number is not None:
            measures += [F.count(number).alias(f"num{i}"), F.min(number).alias(f"lo{i}"), F.max(number).alias(f"hi{i}"),
                         F.count(F.when(number != F.floor(number), 1)).alias(f"frac{i}")]
        if text:
            measures += [F.count(F.when(F.lower(value).isin("true", "false"), 1)).alias(f"bool{i}")]
            measures += [F.count(F.try_to_timestamp(value, F.lit(p))).alias(f"ts{i}_{j}")
                         for j, p in enumerate(TIMESTAMP_FORMATS)]
    facts = sample.agg(*measures).first().asDict()  # driver-ok: one row of facts
    if source.format == "csv":
        found = {t: sum(facts[f"tok{i}_{k}"] for i in range(len(sample.columns))) for k, t in enumerate(NULL_TOKENS)}
        token = max(found, key=found.get)
        if found[token] and source.options.get("nullValue") is None:
            source.options["nullValue"] = token
    rows = facts["_rows"]
    columns = {c: _column(c, i, types[c], facts, rows, text) for i, c in enumerate(sample.columns)}
    timed = [c for c in columns.values() if c.type == "timestamp"]
    if timed:  # a second aggregate: the span of each column now typed as a time
        spans = sample.agg(*[_span(F.col(f"`{c.name}`"), c.timestamp_format).alias(c.name) for c in timed]).first()  # driver-ok: one row
        for c in timed:
            c.span = float(spans[c.name] or 0)
    return columns, rows


def _span(value: Column, timestamp_format: str | None) -> Column:
    """Seconds between a time column's earliest and latest value."""
    when = F.try_to_timestamp(value, F.lit(timestamp_format)) if timestamp_format else value.cast("timestamp")
    return F.max(when).cast("long") - F.min(when).cast("long")


def _column(name: str, i: int, spark_type: str, facts: dict, rows: int, text: bool) -> Facts:
    present, distinct = facts[f"n{i}"], facts[f"d{i}"]
    column = Facts(name, "string", 1 - present / rows if rows else 0.0, distinct)
    if f"num{i}" in facts and present and facts[f"num{i}"] == present:
        column.low, column.high, column.whole = facts[f"lo{i}"], facts[f"hi{i}"], facts[f"frac{i}"] == 0
    if not text:
        column.type = TABLE_TYPES.get(spark_type, "string")
        column.unsupported = None if spark_type in TABLE_TYPES else spark_type
        return column
    if not present:
        return column
    if column.low is not None:
        fits_int = column.whole and -(2**31) <= column.low and column.high < 2**31
        column.type = ("int" if fits_int else "bigint") if column.whole else "double"
    elif facts[f"bool{i}"] == present:
        column.type = "boolean"
    else:
        parsed = [p for j, p in enumerate(TIMESTAMP_FORMATS) if facts[f"ts{i}_{j}"] == present]
        if parsed:
            column.type, column.timestamp_format = "timestamp", parsed[0]
    return column


@dataclass
class Plan:
    """What init decided, column by column, and what it asks the user."""

    label: str
    task: str  # binary | multiclass | regression
    model: str
    key: str | None = None
    event_time: str | None = None
    timestamp_format: str | None = None
    entities: dict[str, list[str]] = field(default_factory=dict)  # entity → its windows
    aggregates: list[str] = field(default_factory=list)  # columns averaged over each window
    numeric: dict[str, str] = field(default_factory=dict)  # column → transform
    categorical: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # column → the comment beside it
    questions: list[str] = field(default_factory=list)
    hash_buckets: int = 1 << 20

    def summary(self) -> dict:
        return {"label": self.label, "task": self.task, "model": self.model, "key": self.key,
                "event_time": self.event_time, "entities": self.entities, "numeric": self.numeric,
                "categorical": self.categorical, "questions": self.questions}


# Each model's fixed params and the grid searched; a table the sample holds whole (small)
# gets the grid's first point only: a search of it would cost more than it tells.
MODEL_SETTINGS = {
    "gbt": ({"maxIter": 30, "stepSize": 0.1, "seed": 7}, {"maxDepth": [3, 5]}),
    "gbt_regression": ({"maxIter": 30, "stepSize": 0.1, "seed": 7}, {"maxDepth": [3, 5]}),
    "random_forest": ({"numTrees": 50, "seed": 7}, {"maxDepth": [5, 8]}),
}


def propose(columns: dict[str, Facts], rows: int, label: str) -> Plan:
    """The roles of the columns, from their facts (see the module's docstring)."""
    plan = _label_plan(columns[label], rows)
    others = [c for c in columns.values() if c.name != label]
    for c in others:
        if c.unsupported:
            plan.notes[c.name] = f"left out: a {c.unsupported} column is not a type source.schema declares"
        elif c.nulls == 1:
            plan.notes[c.name] = "left out: null in every sampled record"
    usable = [c for c in others if c.name not in plan.notes]
    keys = [c for c in usable if c.type in ("string", "int", "bigint") and c.nulls == 0 and c.distinct == rows]
    keys.sort(key=lambda c: (not ID_NAME.search(c.name), c.type != "string"))
    if keys:
        plan.key = keys[0].name
        plan.notes[plan.key] = "the key: unique and never null in the sample"
    else:
        plan.questions.append("No column is unique in the sample, so there is no `key`: ingest derives "
                              "record_key from each record's content (a record delivered twice lands once). "
                              "If a column does identify an event, set source.key to it.")
    times = [c for c in usable if c.type == "timestamp" and c.name != plan.key]
    times.sort(key=lambda c: (c.nulls > 0, not TIME_NAME.search(c.name), c.nulls, -c.span))
    if times:
        chosen = times[0]
        plan.event_time, plan.timestamp_format = chosen.name, chosen.timestamp_format
        plan.notes[chosen.name] = "the event time" + (f" (format {chosen.timestamp_format})"
                                                      if chosen.timestamp_format else "")
        for c in times[1:]:
            if c.timestamp_format != chosen.timestamp_format:
                c.type = "string"  # source.timestamp_format is one for all columns
            plan.notes[c.name] = "left out: a second time; derive what you need from it (e.g. a delay) upstream"
        if len(times) > 1:
            plan.questions.append(f"Several columns hold times ({', '.join(c.name for c in times)}); "
                                  f"{chosen.name} is the event time. Is it the time the event happened?")
    else:
        plan.questions.append("No column reads as a timestamp: no window features, and the holdout is a "
                              "hash of the key. If a column holds the events' time, declare it `timestamp` "
                              "with its source.timestamp_format and set source.event_time.")
    taken = {label, plan.key, plan.event_time}
    rest = [c for c in usable if c.name not in taken and c.name not in plan.notes]
    if plan.event_time:
        span = next(c.span for c in times if c.name == plan.event_time)
        windows = [w for w, seconds in WINDOWS.items() if seconds <= span][-3:] or ["1h"]
        ids = [c for c in rest if (c.type == "string" or (c.whole and ID_NAME.search(c.name)))
               and c.nulls < 0.5 and c.distinct >= 20 and c.distinct * 2 <= rows * (1 - c.nulls)]
        for c in sorted(ids, key=lambda c: -c.distinct)[:2]:
            plan.entities[c.name] = windows
            plan.notes[c.name] = (f"an entity: {c.distinct} values, each repeating over time; its history "
                                  "becomes features of its events")
    for c in rest:
        if c.name in plan.entities:
            if c.type == "string":  # its values are a category of the event too
                plan.categorical.append(c.name)
        elif c.type in ("int", "bigint", "double", "boolean"):
            plan.numeric[c.name] = _transform(c)
            plan.notes[c.name] = f"numeric, {plan.numeric[c.name]}" + (
                " (signed values keep their sign)" if plan.numeric[c.name] == "log1p" and (c.low or 0) < 0 else "")
        elif c.type == "string" and c.distinct <= max(1000, rows * 0.05):
            plan.categorical.append(c.name)
            plan.notes.setdefault(c.name, f"categorical: {c.distinct} values in the sample")
        else:
            plan.notes[c.name] = f"left out: {c.distinct} distinct values in {rows} records, an id or free text?"
    # averaged over the windows: up to three bounded (log1p) columns, measurements before counts
    plan.aggregates = sorted((c for c in plan.numeric if plan.numeric[c] == "log1p"),
                             key=lambda c: (columns[c].whole, columns[c].nulls, -columns[c].distinct)
                             )[:3] if plan.entities else []
    widest = max([columns[c].distinct for c in plan.categorical] or [0])
    plan.hash_buckets = min(1 << 20, max(64, 1 << (4 * widest).bit_length()))
    if plan.numeric:
        plan.questions.append("Is any numeric or categorical column known only after the label (an arrival "
                              "time for an arrival delay)? Remove it: a feature must be known when you score.")
    return plan


def _label_plan(label: Facts, rows: int) -> Plan:
    """The label's task and the MLlib model that learns it."""
    if label.type in ("timestamp", "date") or label.unsupported:
        raise InitError(f"--label {label.name}: a {label.unsupported or label.type} column is no label; "
                        "choose a column of classes or numbers")
    if label.distinct < 2:
        raise InitError(f"--label {label.name}: one value in the {rows} sampled records; nothing to learn")
    if label.type in ("int", "bigint", "double"):
        if label.whole and {label.low, label.high} <= {0, 1}:
            return Plan(label.name, "binary", "gbt")
        if not label.whole or label.distinct > 10:
            return Plan(label.name, "regression", "gbt_regression")
        plan = Plan(label.name, "multiclass", "random_forest")
        plan.questions.append(f"The label {label.name} holds {label.distinct} whole numbers: learnt as classes. "
                              "If it is a quantity (a count), use train_mllib.model: gbt_regression.")
        return plan
    if label.distinct > 1000:
        raise InitError(f"--label {label.name}: {label.distinct} distinct values; a classifier learns at "
                        "most 1,000 classes. Choose a label of classes or numbers")
    return Plan(label.name, "binary" if label.distinct == 2 else "multiclass",
                "gbt" if label.distinct == 2 else "random_forest")


def _transform(c: Facts) -> str:
    """log1p for counts and amounts of a wide range (signed kept); small values as they are."""
    if c.type == "boolean" or c.low is None:
        return "none"
    return "none" if max(abs(c.low), abs(c.high)) <= 100 else "log1p"


def render(name: str, source: Source, columns: dict[str, Facts], plan: Plan, rows: int, origin: str) -> str:
    """The pipeline file: every choice with the fact behind it, questions on top."""
    q = _flow
    lines = [f"# Written by `sparkml-ext init --from {origin} --label {plan.label}` from {rows} sampled",
             "# records. Read it through: every choice says why, and each QUESTION is something the",
             "# sample could not settle. conf/pipelines/clicks.yaml explains every key.",
             *[f"# QUESTION: {question}" for question in plan.questions],
             f"name: {q(name)}",
             f"lakehouse: ${{SPARKML_EXT_LAKEHOUSE:-lakehouse/{name}}}",
             "", "source:"]
    if source.table:
        lines += ["  format: delta", f"  table: {q(source.table)}"]
    else:
        lines += [f"  path: {q(source.path)}", f"  format: {source.format}"]
    if source.options:
        lines += [f"  options: {q(source.options)}"]
    if plan.timestamp_format:
        lines += [f"  timestamp_format: {q(plan.timestamp_format)}"]
    if plan.event_time:
        lines += [f"  event_time: {q(plan.event_time)}"]
    if plan.key:
        lines += [f"  key: {q(plan.key)}"]
    lines += ["  schema:"]
    width = max(len(q(c)) for c in columns) + 1
    for c in columns.values():
        note = plan.notes.get(c.name, "the label" if c.name == plan.label else "")
        nulls = f"{c.nulls:.1%} null" if c.nulls else "never null"
        lines += [f"    {(q(c.name) + ':').ljust(width)} {c.type.ljust(9)} # {nulls}; {note}".rstrip("; ")]
    required = [c for c in (plan.key, plan.event_time) if c]
    if required:
        lines += [f"  not_null: {q(required)}"]
    lines += ["", "tables:"] + [f"  {t}: {t}/{name}" for t in ("bronze", "quarantine", "features", "models",
                                                                "predictions")]
    lines += ["  batches: _meta/ingest_batches", "", "features:",
              f"  label: {q(plan.label)}   # {plan.task}"]
    if plan.entities:
        lines += ["  entities:"]
        aggregates = q({c: ["mean"] for c in plan.aggregates})
        for entity, windows in plan.entities.items():
            lines += [f"    {q(entity)}: {{windows: {q(windows)}" + (f", aggregates: {aggregates}}}"
                                                                     if plan.aggregates else "}")]
        lines += ["  # windows from the sample's time span; aggregates: count, sum, mean, min, max, stddev"]
    if plan.numeric:
        lines += [f"  numeric: {q(plan.numeric)}"]
    if plan.categorical:
        lines += [f"  categorical: {q(plan.categorical)}"]
    lines += [f"  hash_buckets: {plan.hash_buckets}", "", "holdout:",
              f"  by: {'time' if plan.event_time else 'hash'}"
              + ("   # train on earlier events, test on the latest" if plan.event_time else ""),
              "", "train_mllib:", f"  model: {plan.model}", *_model_lines(plan.model, rows), "",
              "# A deep model too: add `train_torch: {epochs: 5}` (its head follows the label).", "",
              "tracking:", "  mode: ${SPARKML_EXT_TRACKING:-auto}", "  registered_model: null", ""]
    return "\n".join(lines)


def _model_lines(model: str, rows: int) -> list[str]:
    params, grid = MODEL_SETTINGS[model]
    if rows < SAMPLE_ROWS:  # the whole table was sampled
        grid = {name: values[:1] for name, values in grid.items()}
        note = f"   # {rows} records: one grid point; list more values to search"
    else:
        note = ""
    return [f"  models: {_flow({model: {'params': params, 'grid': grid}})}{note}"]


def _flow(value: object) -> str:
    """A value in YAML flow style: plain where YAML reads it back as the same string."""
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_/][\w./-]*", value) and value.lower() not in (
            "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~")
        return value if plain else json.dumps(value)  # JSON's strings are YAML's double-quoted ones
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flow(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)
