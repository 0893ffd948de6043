"""Typed, validated pipeline configuration from YAML.

A pipeline file becomes a tree of frozen dataclasses. One generic builder walks the
dataclass type hints, so adding a section is adding a dataclass: unknown keys, wrong
types and bad choices all fail with one message naming the file and the dotted key.
``${VAR}`` / ``${VAR:-default}`` in strings read the environment (paths, secrets);
``--set a.b=value`` overrides any key before validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from sparkml_ext.deep.config import TrainConfig, require_at_least

FORMATS = ("csv", "json", "parquet")
SPARK_TYPES = ("string", "int", "bigint", "double", "float", "boolean", "timestamp", "date")


class ConfigError(ValueError):
    """A pipeline file that cannot be used; the message names the file and the key."""


def fingerprint(described: Any, length: int = 16) -> str:
    """A short, stable digest of JSON-able settings: what names a build by what fixed it
    (a feature spec, a model's config, a shard export's source)."""
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:length]


DERIVED_KEY = "record_key"  # source.key of a table without one: ingest derives it


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """What ingest reads and the schema its records must follow: landing files (csv, json,
    parquet: a folder per batch under `path`) or an existing Delta table (delta: its `path`,
    or its catalog name in `table`), read by version (see `sparkml_ext.source_table`).

    `key` names the column that identifies an event. A table without one leaves it out:
    ingest then derives `record_key` from the record's whole content (see
    `landing.derived_key`), so records equal in every column are one event (a re-delivery,
    quarantined as a duplicate) and records that differ anywhere are two."""

    path: str | None = None  # the landing root, or the source Delta table's path or URI
    format: Literal["csv", "json", "parquet", "delta"]
    schema: dict[str, str]
    table: str | None = None  # delta only, instead of path: a catalog table (`db.name`)
    event_time: str | None = None  # the timestamp column; None: a table of records without one
    key: str = DERIVED_KEY
    options: dict[str, str] = field(default_factory=dict)
    timestamp_format: str = "yyyy-MM-dd HH:mm:ss"
    not_null: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def derives_key(self) -> bool:
        """Whether ingest derives the key from the content (no key column declared)."""
        return self.key == DERIVED_KEY and DERIVED_KEY not in self.schema


@dataclass(frozen=True)
class TablesConfig:
    """Delta tables, as paths relative to the lakehouse root or absolute URIs."""

    bronze: str
    quarantine: str
    batches: str
    features: str
    models: str
    predictions: str
    truth: str | None = None  # the click generator's planted truth: only with a `generate` section


@dataclass(frozen=True)
class IngestConfig:
    """How ingest treats bad input, keys bronze already holds, and columns outside source.schema."""

    on_bad_record: Literal["quarantine", "fail"] = "quarantine"
    # A record whose key bronze already holds (from another batch): quarantine it
    # (duplicate_key_existing:<batch>), update the held row if the record is not older
    # (a CDC feed: the latest event wins), or fail the batch.
    on_existing_key: Literal["quarantine", "update", "fail"] = "quarantine"
    max_record_chars: int = 1 << 20  # a longer record is quarantined as too_long
    schema_evolution: bool = False  # true: a batch's new columns are added to bronze


@dataclass(frozen=True)
class NumericSpec:
    """How one numeric column enters the feature table: row by row, nothing fit on the data
    (an incremental run must compute what a full one does; scaling to the training rows is
    each model's own step). `log1p`: sign(x) * log1p(|x|), for counts and heavy tails, signed
    values kept; `none`: the value as it is. `clip`: [low, high] in the column's units,
    applied first. In the file `i1: none` is short for `i1: {transform: none}`."""

    transform: Literal["log1p", "none"] = "log1p"
    clip: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.clip is not None and not (len(self.clip) == 2 and self.clip[0] < self.clip[1]):
            raise ValueError(f"clip: expected [low, high] with low < high, got {list(self.clip)}")


Aggregate = Literal["count", "sum", "mean", "min", "max", "stddev"]
AGGREGATES: tuple[str, ...] = typing.get_args(Aggregate)
# Aggregates kept as exact sums in fixed point: their column needs bounds (features.py).
SUMMED = ("sum", "mean", "stddev")


@dataclass(frozen=True)
class EntityFeatures:
    """One entity's history as features of each of its events: over every window (the
    entity's events strictly before the event's time, within the window), the count of
    events, the label's rate (FeaturesConfig.label_rate), and per column of `aggregates`
    the statistics named, of the column's feature value (a null counts as 0, as in the row
    feature): `count` (non-null values), `sum`, `mean`, `min`, `max`, `stddev` (population).
    `sum`, `mean` and `stddev` need the column bounded (log1p, or a clip)."""

    windows: list[str]
    aggregates: dict[str, list[Aggregate]] = field(default_factory=dict)

    def window_seconds(self) -> dict[str, int]:
        return {w: parse_duration(w) for w in self.windows}

    def horizon(self) -> int:
        """The longest window, in seconds: how far back an event's history reaches."""
        return max(self.window_seconds().values())


@dataclass(frozen=True)
class FeaturesConfig:
    """The feature spec: point-in-time entity aggregates, numeric and categorical transforms.

    `label` names the user's own column: no default could fit their table. `entities`: each
    column whose history the window features summarise (the aircraft, the airport, the
    user), with its own windows and aggregates; none: no window features (a table of
    independent records). `numeric`: a list of columns (each `log1p`) or a mapping column →
    NumericSpec."""

    label: str
    entities: dict[str, EntityFeatures] = field(default_factory=dict)
    numeric: list[str] | dict[str, NumericSpec] = field(default_factory=dict)
    categorical: list[str] = field(default_factory=list)
    hash_buckets: int = 1 << 20
    clip: float = 20.0  # |log1p| of a numeric is at most this
    # The label's mean over the entity's past labelled events in each window (a rate for a
    # 0/1 label). None: on for a numeric label, off for any other (a class name has no mean);
    # the loader decides it from source.schema.
    label_rate: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.numeric, (list, tuple)):  # every listed column the default way
            object.__setattr__(self, "numeric", {c: NumericSpec() for c in self.numeric})

    def numeric_spec(self, column: str) -> NumericSpec:
        """How `column` is transformed (an aggregated column need not be a feature itself)."""
        return self.numeric.get(column, NumericSpec())

    def bound(self, column: str) -> float | None:
        """The largest |value| a numeric column's feature can take (None: unbounded)."""
        numeric = self.numeric_spec(column)
        if numeric.transform == "log1p":
            return self.clip
        return max(abs(b) for b in numeric.clip) if numeric.clip else None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d' → seconds."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 1h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class HoldoutConfig:
    """How both training jobs and the report split the feature table's labelled rows.

    `time`: train on the earliest events, validate on later ones, test on the latest (what
    a model meets in production); `validation` and `test` are shares of the event-time span,
    and the events `gap` before each later part starts are left out (a label that arrives
    late, a window that overlaps). `hash`: a stable hash of source.key, shares of the rows;
    what a table without source.event_time is split by.
    """

    by: Literal["time", "hash"] = "time"
    validation: float = 0.1
    test: float = 0.1
    gap: str = "0s"

    def __post_init__(self) -> None:
        for name in ("validation", "test"):
            share = getattr(self, name)
            if not isinstance(share, (int, float)) or not 0 < share < 1:
                raise ValueError(f"{name}: must be a share in (0, 1), got {share!r}")
        if self.validation + self.test >= 1:
            raise ValueError(f"validation + test: must leave rows to train on, got "
                             f"{self.validation} + {self.test}")
        try:
            parse_duration(self.gap)
        except ValueError as err:
            raise ValueError(f"gap: {err}") from None


# xgboost, xgboost_regression: xgboost.spark estimators (the `xgboost` extra), in the same Pipeline
MLLIB_MODELS = ("logistic_regression", "gbt", "random_forest", "linear_regression", "gbt_regression", "kmeans",
                "xgboost", "xgboost_regression")


@dataclass(frozen=True)
class MllibModelConfig:
    """One model type's fixed params and the grid searched, by the estimator's param name
    (MLlib's `maxDepth`; xgboost.spark's `max_depth` for the xgboost types)."""

    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainMllibConfig:
    """One MLlib model: its type, fixed params, the grid to search and how.

    Params and grid are kept per model type under `models`, so that switching `model`
    switches them too (a GBT's stepSize means nothing to a logistic regression); a type
    without an entry trains with MLlib's defaults. `params` / `grid`, when set, replace the
    chosen type's for one run (`--set 'train_mllib.grid={}'`).
    """

    model: Literal[MLLIB_MODELS] = "gbt"
    label: str | None = None  # default: features.label
    feature_version: int | None = None
    search: Literal["train_validation_split", "cross_validator"] = "train_validation_split"
    folds: int = 3
    parallelism: int = 2
    models: dict[str, MllibModelConfig] = field(default_factory=dict)
    params: dict[str, Any] | None = None  # null = models.<model>.params
    grid: dict[str, list[Any]] | None = None  # null = models.<model>.grid
    max_categories: int = 1000
    sample_fraction: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MLLIB_MODELS))
        if unknown:
            raise ValueError(f"models.{unknown[0]}: not a model type (expected one of: "
                             f"{', '.join(MLLIB_MODELS)})")

    def chosen(self) -> TrainMllibConfig:
        """This run's settings: the chosen model's params and grid, without `models`."""
        entry = self.models.get(self.model, MllibModelConfig())
        return dataclasses.replace(
            self, models={},
            params=entry.params if self.params is None else self.params,
            grid=entry.grid if self.grid is None else self.grid)


@dataclass(frozen=True)
class TrainTorchConfig(TrainConfig):
    """A DLRM trained with PyTorch DDP on Arrow shards of the feature table (train-torch).

    The ranks' knobs (epochs, batch_size, lr, vocabulary, ...) are `deep.config.TrainConfig`'s;
    this section adds the driver's own, and `for_ranks` hands the ranks theirs.

    Categorical ids are hashed into `features.hash_buckets`; each embedding table has
    `embedding_rows` rows (row 0 = null) and larger ids fold into it by modulo inside the
    model, so one shard export serves any table size. null = hash_buckets + 1 rows.
    With `vocabulary` K set instead, each column's K most frequent ids in the training rows
    get rows of their own and every other id shares row 0 (like train_mllib.max_categories).
    """

    feature_version: int | None = None
    num_processes: int = 2
    local_mode: bool = True
    use_gpu: bool | None = None  # null = torch.cuda.is_available() on the driver
    max_restarts: int = 1
    embedding_rows: int | None = 4096
    checkpoint_root: str | None = None  # null = <lakehouse>/checkpoints; a path or URI all ranks see
    # binary | multiclass (a label of classes: 2 or more) | regression (any number); null =
    # binary for a numeric label of 0s and 1s, regression for other numbers, binary or
    # multiclass by the count of classes for any other label. The ranks get the decided one.
    task: Literal["binary", "multiclass", "regression"] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, {"num_processes": 1, "max_restarts": 0, "embedding_rows": 2})
        if self.backend == "nccl" and self.use_gpu is False:
            raise ValueError("backend: nccl needs GPUs; use gloo or use_gpu: null")

    def for_ranks(self, **per_run: Any) -> TrainConfig:
        """The ranks' knobs: this section without the driver's own, with `per_run` set."""
        knobs = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**knobs, **per_run})


TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                    "databricks-uc", "file")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking of the training jobs (sparkml_ext.tracking).

    mode: auto = track when MLflow is installed, else say so in one line and train anyway;
    required = fail when it is not; disabled = never. uri: null (or "") = a SQLite store at
    <lakehouse>/mlflow.db with artifacts in <lakehouse>/mlartifacts. registered_model:
    register each stored model under this name, `{model}` = the model type (null = no registry).
    Credentials only through MLflow's environment variables (MLFLOW_TRACKING_TOKEN, ...).
    """

    mode: Literal["auto", "required", "disabled"] = "auto"
    uri: str | None = None
    registry_uri: str | None = None  # null = the tracking URI
    experiment: str | None = None  # null = the pipeline's name
    artifact_location: str | None = None  # for a new experiment; null = see `uri`, or the server's
    registered_model: str | None = None


@dataclass(frozen=True)
class CatalogConfig:
    """Metastore names for the Delta tables, for SQL and discovery.

    The jobs address tables by path (the same on every catalog); with `schema` set, each
    job also names the tables it wrote as external tables `<schema>.<table>` at those paths.
    """

    schema: str | None = None  # `catalog.schema` (Unity Catalog) or `database` (Hive); null = paths only


@dataclass(frozen=True)
class ScoreConfig:
    model: str = "latest"
    feature_version: int | None = None


@dataclass(frozen=True)
class OnlineConfig:
    """Online scoring (`publish-online`, `serve`). `store`: the SQLite file of published entity
    histories (null: <lakehouse>/online/<name>.sqlite; must be on a local disk of the serving
    host). `late_tolerance`: how long before the newest published event a request's
    event_time may lie and still be scored exactly (each entity's events from that far back
    less its longest window are kept). `max_events`: the most events one request may carry.
    `poll_seconds`: how often `serve` looks for a new version of a `<kind>/latest` model."""

    store: str | None = None
    late_tolerance: str = "1d"
    feature_version: int | None = None  # null = the latest, pinned at the start of the publish
    max_events: int = 1024
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        try:
            parse_duration(self.late_tolerance)
        except ValueError as err:
            raise ValueError(f"late_tolerance: {err}") from None
        if not isinstance(self.max_events, int) or self.max_events < 1:
            raise ValueError(f"max_events: must be a positive whole number, got {self.max_events!r}")
        if not self.poll_seconds > 0:
            raise ValueError(f"poll_seconds: must be positive, got {self.poll_seconds!r}")


@dataclass(frozen=True)
class GenerateConfig:
    """Synthetic click events (`sparkml_ext.generate`): the same values always yield the same
    events, lines and truth. `landing` is where `sparkml-ext generate` lands them; `pipeline`
    lands them under source.path, where it ingests. A pipeline file without this section
    runs over the user's own batches: nothing is generated."""

    rows: int = 100_000
    seed: int = 7
    batches: int = 1
    format: Literal["csv", "json", "parquet"] = "csv"
    start_date: str = "2026-01-01"
    days: int = 7
    users: int | None = None  # null = max(100, rows // 50)
    null_rate: float = 0.05
    malformed_rate: float = 0.0
    partitions: int | None = None  # null = Spark's default parallelism
    landing: str = "data/generated/landing"

    def __post_init__(self) -> None:
        def require(ok: bool, key: str, wanted: str) -> None:
            if not ok:
                raise ValueError(f"{key}: must be {wanted}, got {getattr(self, key)!r}")

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        require(is_int(self.rows) and self.rows >= 1, "rows", "a positive int")
        require(is_int(self.seed), "seed", "an int")
        require(is_int(self.batches) and 1 <= self.batches <= self.rows, "batches",
                "an int between 1 and rows")
        require(self.format in FORMATS, "format", f"one of {', '.join(FORMATS)}")
        try:
            date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            require(False, "start_date", "an ISO date like '2026-01-01'")
        require(is_int(self.days) and self.days >= 1, "days", "a positive int")
        if self.users is None:
            object.__setattr__(self, "users", max(100, self.rows // 50))
        require(is_int(self.users) and self.users >= 1, "users", "a positive int")
        for key in ("null_rate", "malformed_rate"):
            value = getattr(self, key)
            require(isinstance(value, (int, float)) and 0 <= value < 1, key, "in [0, 1)")
        require(self.partitions is None or (is_int(self.partitions) and self.partitions >= 1),
                "partitions", "null or a positive int")


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    lakehouse: str
    source: SourceConfig
    tables: TablesConfig
    features: FeaturesConfig
    ingest: IngestConfig = IngestConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    generate: GenerateConfig | None = None  # None: the pipeline generates nothing
    train_mllib: TrainMllibConfig = TrainMllibConfig()
    train_torch: TrainTorchConfig | None = None  # None: the pipeline trains no torch model
    score: ScoreConfig = ScoreConfig()
    online: OnlineConfig = OnlineConfig()
    tracking: TrackingConfig = TrackingConfig()
    catalog: CatalogConfig = CatalogConfig()
    spark: dict[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def lakehouse_root(self) -> str:
        """The lakehouse as every job addresses it: a URI as written, a local folder absolute."""
        return self.lakehouse.rstrip("/") if "://" in self.lakehouse else os.path.abspath(self.lakehouse)

    def lakehouse_path(self, name: str) -> str:
        """A location under the lakehouse (run records, reports, shards, checkpoints)."""
        return f"{self.lakehouse_root}/{name}"

    def table_path(self, name: str) -> str:
        """Absolute location of one of `tables`: relative entries live under the lakehouse."""
        where = getattr(self.tables, name)
        if where is None:
            raise ConfigError(f"{self.path}: tables.{name}: not set")
        if "://" in where or os.path.isabs(where):
            return where
        return self.lakehouse_path(where)

    def online_store(self) -> str:
        """The online store's file: online.store, or one under a local lakehouse."""
        if self.online.store:
            return os.path.abspath(self.online.store)
        if "://" in self.lakehouse_root:
            raise ConfigError(f"{self.path}: online.store: the lakehouse is {self.lakehouse_root}; "
                              "set online.store to a file on a local disk of the host that serves")
        return self.lakehouse_path(f"online/{self.name}.sqlite")

    def locations(self) -> list[str]:
        """Every place the jobs read or write: the lakehouse, the source, each table."""
        tables = [self.table_path(f.name) for f in dataclasses.fields(self.tables)
                  if getattr(self.tables, f.name) is not None]
        return [self.lakehouse_root, *([self.source.path] if self.source.path else []), *tables]

    def batch_path(self, batch_id: str, input_path: str | None = None) -> str:
        """The landing folder of one batch, confined to `source.path`.

        A batch id is one path segment, and `--input` must lie under the landing root,
        so neither can make ingest read (and fingerprint) files outside it.
        """
        root = self.source.path.rstrip("/")
        if not _SEGMENT.fullmatch(batch_id) or batch_id in (".", ".."):
            raise ConfigError(f"{self.path}: --batch-id: {batch_id!r} must be one path segment "
                              "(letters, digits, '.', '_', '=', '-')")
        if input_path is None:
            return f"{root}/{batch_id}"
        if not _inside(root, input_path):
            raise ConfigError(f"{self.path}: --input: {input_path!r} is outside source.path {root!r}")
        return input_path


_SEGMENT = re.compile(r"[A-Za-z0-9._=-]+")
_SCHEMA_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")


def _inside(root: str, path: str) -> bool:
    """Whether `path` is `root` or below it, after resolving '..' (and links, locally)."""
    root, path = _resolved(root), _resolved(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolved(path: str) -> str:
    scheme, sep, rest = path.partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}" if sep else os.path.realpath(path)


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, interpolate, override and validate one pipeline YAML file."""
    file = str(path)
    try:
        raw = yaml.safe_load(Path(file).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: pipeline file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item, file)
    raw = _interpolate(raw, file, "")
    raw.setdefault("path", file)
    _refuse_one_entity_keys(raw.get("features"), file)
    config = _build(PipelineConfig, raw, file, "")
    _check_source(config.source, file)
    _check_updates(config, file)
    _check_tables(config, file)
    config = _checked_features(config, file)
    _check_tracking(config.tracking, file)
    _check_catalog(config.catalog, file)
    return config


def _refuse_one_entity_keys(features: Any, file: str) -> None:
    """features.entity / windows / window_means (files before entities had their own
    windows and aggregates): name the section that replaces them, written out."""
    if not isinstance(features, dict) or not {"entity", "windows", "window_means"} & set(features):
        return
    old = next(k for k in ("entity", "windows", "window_means") if k in features)
    entity, windows = features.get("entity") or "<column>", features.get("windows", ["1h", "1d", "7d"])
    aggregates = ", ".join(f"{c}: [mean]" for c in features.get("window_means") or [])
    raise ConfigError(
        f"{file}: features.{old}: replaced by features.entities, one entry per entity with its own "
        f"windows and aggregates; write `entities: {{{entity}: {{windows: [{', '.join(map(str, windows))}]"
        f"{f', aggregates: {{{aggregates}}}' if aggregates else ''}}}}}`")


def _apply_override(raw: dict, item: str, file: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{file}: --set expects key=value, got {item!r}")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{file}: --set {key}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(value) if value else ""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, file: str, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, file, _join(key, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, file, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{file}: {key}: environment variable {name} is not set")
        return default

    return _ENV.sub(value, node)


def _join(key: str, part: str) -> str:
    return f"{key}.{part}" if key else part


def _build(cls: type, raw: Any, file: str, key: str) -> Any:
    """Turn a parsed YAML mapping into dataclass `cls`, naming the key on any mismatch."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: {key or 'top level'}: expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    # a field marked per_run (deep.config.PER_RUN) is set by a job for each run, not by the file
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("per_run")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = _join(key, unknown[0])
        raise ConfigError(f"{file}: {where}: unknown key (expected one of: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        sub = _join(key, name)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], file, sub)
            if required and values[name] in ("", None):
                raise ConfigError(f"{file}: {sub}: must not be empty")
        elif required:
            raise ConfigError(f"{file}: {sub}: required key is missing")
    try:
        return cls(**values)
    except ValueError as err:  # a section's own checks, worded "<its key>: <problem>"
        raise ConfigError(f"{file}: {_join(key, str(err))}") from None


def _coerce(hint: Any, value: Any, file: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, (str, int, float)):  # a scalar sets the section's first key
            value = {dataclasses.fields(hint)[0].name: value}
        return _build(hint, value, file, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{file}: {key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(next((a for a in options if _fits(a, value)), options[0]), value, file, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {key}: expected a mapping, got {_kind(value)}")
        return {str(k): _coerce(args[1], v, file, _join(key, str(k))) for k, v in value.items()}
    if origin in (list, tuple):  # tuple[X, ...]: a list in the file, a tuple in the config
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {key}: expected a list, got {_kind(value)}")
        return origin(_coerce(args[0], v, file, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float, bool)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{file}: {key}: expected {hint.__name__}, got {_kind(value)} {value!r}")
    return value


def _fits(hint: Any, value: Any) -> bool:
    """Whether `value` has the shape of `hint` (a list for a list, a mapping for a mapping):
    picks the member of a union a file's value is meant for."""
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    return not isinstance(value, (list, dict))


def _kind(value: Any) -> str:
    return type(value).__name__


_TABLE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*){0,2}")


def _check_source(source: SourceConfig, file: str) -> None:
    _check_source_location(source, file)
    for column, spark_type in source.schema.items():
        if spark_type.lower() not in SPARK_TYPES:
            raise ConfigError(
                f"{file}: source.schema.{column}: unknown type {spark_type!r} "
                f"(expected one of {', '.join(SPARK_TYPES)})"
            )
    declared = set(source.schema) | ({DERIVED_KEY} if source.derives_key else set())
    timed = [("event_time", source.event_time)] if source.event_time is not None else []
    for name, column in [("key", source.key), *timed] + [
        (f"not_null[{i}]", c) for i, c in enumerate(source.not_null)
    ]:
        if column not in declared:
            raise ConfigError(f"{file}: source.{name}: column {column!r} is not in source.schema")
    if timed and source.schema[source.event_time].lower() != "timestamp":
        raise ConfigError(f"{file}: source.event_time: column {source.event_time!r} must be a timestamp")


def _check_source_location(source: SourceConfig, file: str) -> None:
    """Landing files live under source.path; a Delta table is named by exactly one of
    source.path (its location) and source.table (its catalog name)."""
    if source.format != "delta":
        if source.table is not None:
            raise ConfigError(f"{file}: source.table: only a delta source is named by a catalog table; "
                              f"a {source.format} source is a folder of batches at source.path")
        if not source.path:
            raise ConfigError(f"{file}: source.path: required key is missing (the folder of batch folders)")
        return
    if source.path and source.table:
        raise ConfigError(f"{file}: source.table: a delta source is source.path (the table's location) "
                          "or source.table (its catalog name), not both")
    if not (source.path or source.table):
        raise ConfigError(f"{file}: source.path: a delta source needs the table's path or URI here, "
                          "or its catalog name in source.table")
    if source.table is not None and not _TABLE_NAME.fullmatch(source.table):
        raise ConfigError(f"{file}: source.table: {source.table!r} is not `table`, `schema.table` or "
                          "`catalog.schema.table` (letters, digits, underscores)")


def _check_updates(config: PipelineConfig, file: str) -> None:
    """ingest.on_existing_key: update keeps a key's later event: it needs both."""
    if config.ingest.on_existing_key != "update":
        return
    if config.source.event_time is None:
        raise ConfigError(f"{file}: ingest.on_existing_key: 'update' keeps the later event of a key, "
                          "which needs source.event_time")
    if config.source.derives_key:
        raise ConfigError(f"{file}: ingest.on_existing_key: 'update' needs a key column (source.key): "
                          "a key derived from the content changes with any column, so a newer "
                          "version of a record would be a new record")


def _check_tables(config: PipelineConfig, file: str) -> None:
    """A relative table path must stay inside the lakehouse ('..' may not climb out); the
    generator needs a table for its truth."""
    if config.generate is not None and config.tables.truth is None:
        raise ConfigError(f"{file}: tables.truth: required with a generate section (where the "
                          "generator's planted truth goes); or remove the generate section")
    for name, where in dataclasses.asdict(config.tables).items():
        if where is None or "://" in where or os.path.isabs(where):
            continue
        if posixpath.normpath(where).split("/")[0] in ("..", "."):
            raise ConfigError(f"{file}: tables.{name}: {where!r} escapes the lakehouse; "
                              "use a path below it (or an absolute path or URI)")


def is_numeric_type(spark_type: str) -> bool:
    """Whether a column of this Spark SQL type (as source.schema or `DataFrame.dtypes` spell
    it) holds numbers that a mean or a transform can take."""
    return is_integral_type(spark_type) or spark_type in ("float", "double") or spark_type.startswith("decimal")


def is_integral_type(spark_type: str) -> bool:
    """Whether a column of this Spark SQL type holds whole numbers (summed exactly as longs)."""
    return spark_type in ("tinyint", "smallint", "int", "bigint", "boolean")


def _checked_features(config: PipelineConfig, file: str) -> PipelineConfig:
    """The features section checked against the source, with `label_rate` decided."""
    spec, source = config.features, config.source
    if spec.entities and source.event_time is None:
        raise ConfigError(f"{file}: features.entities: window features need the events' time; set "
                          "source.event_time, or leave features.entities out")
    taken = {source.key: "source.key", source.event_time: "source.event_time", spec.label: "features.label",
             **{c: f"features.entities.{c}" for c in spec.entities},
             **{c: f"features.categorical[{i}]" for i, c in enumerate(spec.categorical)}}
    taken.pop(None, None)
    for column, numeric in spec.numeric.items():
        if column in taken and (numeric.transform == "none" or column in (spec.label, source.key)):
            raise ConfigError(f"{file}: features.numeric.{column}: the column is {taken[column]} too; "
                              "a feature may not copy it (the label would leak, a key is no feature)")
    for i, column in enumerate(spec.categorical):
        if column in (spec.label, source.key):
            role = "features.label" if column == spec.label else "source.key"
            raise ConfigError(f"{file}: features.categorical[{i}]: {column!r} is {role}; a feature "
                              "may not copy it (the label would leak, a key is no feature)")
    for entity, history in spec.entities.items():
        _check_entity(spec, entity, history, source, file)
    label_type = source.schema.get(spec.label)
    numeric_label = label_type is None or is_numeric_type(label_type)  # None: a column ingest adds
    if spec.label_rate and not numeric_label:
        raise ConfigError(f"{file}: features.label_rate: the label {spec.label!r} is {label_type}, which has "
                          "no mean; leave label_rate out (or false), or declare the label as a number")
    if spec.hash_buckets < 2:
        raise ConfigError(f"{file}: features.hash_buckets: must be at least 2")
    label_rate = numeric_label if spec.label_rate is None else spec.label_rate
    return dataclasses.replace(config, features=dataclasses.replace(spec, label_rate=label_rate))


def _check_entity(spec: FeaturesConfig, entity: str, history: EntityFeatures, source: SourceConfig,
                  file: str) -> None:
    """One entity's windows parse, and each aggregate can be computed exactly."""
    key = f"features.entities.{entity}"
    if entity in (spec.label, source.key, source.event_time):
        raise ConfigError(f"{file}: {key}: {entity!r} is the label, the key or the event time; an "
                          "entity is a column whose values repeat over events (a user, a device)")
    if not history.windows:
        raise ConfigError(f"{file}: {key}.windows: an entity's history needs at least one window")
    for i, window in enumerate(history.windows):
        try:
            parse_duration(window)
        except ValueError as err:
            raise ConfigError(f"{file}: {key}.windows[{i}]: {err}") from None
    for column, statistics in history.aggregates.items():
        repeated = sorted({s for s in statistics if statistics.count(s) > 1})
        if repeated or not statistics:
            problem = f"{repeated[0]} is listed twice" if repeated else "names no statistic"
            raise ConfigError(f"{file}: {key}.aggregates.{column}: {problem} (one or more of "
                              f"{', '.join(AGGREGATES)})")
        summed = [s for s in statistics if s in SUMMED]
        if summed and spec.bound(column) is None:
            raise ConfigError(f"{file}: {key}.aggregates.{column}: {summed[0]} needs the column's "
                              f"values bounded, and {column!r} has transform none and no clip: set "
                              f"features.numeric.{column}.clip: [low, high] (or use log1p)")
        if column in (spec.label, source.key):
            raise ConfigError(f"{file}: {key}.aggregates.{column}: the column is "
                              f"{'features.label' if column == spec.label else 'source.key'}; the "
                              "label's history is features.label_rate, a key has none")


def _check_catalog(catalog: CatalogConfig, file: str) -> None:
    if catalog.schema is not None and not _SCHEMA_NAME.fullmatch(catalog.schema):
        raise ConfigError(f"{file}: catalog.schema: {catalog.schema!r} is not `schema` or "
                          "`catalog.schema` (letters, digits, underscores)")


def _check_tracking(tr: TrackingConfig, file: str) -> None:
    for key in ("uri", "registry_uri"):
        uri = getattr(tr, key)
        scheme = re.split(r"[:+]", uri or "")[0]
        if uri and scheme not in TRACKING_SCHEMES:
            raise ConfigError(f"{file}: tracking.{key}: {uri!r} is not an MLflow store URI (expected "
                              f"{', '.join(s + ':' for s in TRACKING_SCHEMES)} ..., or null)")
    if tr.experiment == "":
        raise ConfigError(f"{file}: tracking.experiment: must not be empty (null = the pipeline's name)")
    name = tr.registered_model
    rest = (name or "").replace("{model}", "")
    if name is not None and (not name.strip() or "{" in rest or "}" in rest):
        raise ConfigError(f"{file}: tracking.registered_model: {name!r} must be a name in which "
                          f"{{model}} (the model type) is the only placeholder")
