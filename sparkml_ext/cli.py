"""`sparkml-ext <job>`: one subcommand per job, plus `pipeline` to run them in order.

`pipeline` ingests the batch folders present under source.path (or those named), after
generating click events only when the pipeline file has a `generate` section; over a Delta
table source (source.format: delta) it ingests the table's versions not ingested yet. Every job
records its result under `<lakehouse>/_meta/runs/`, and `pipeline` its whole run, which it
ends by reporting; `report` draws an HTML page with PNG plots of a recorded run (by default
the latest pipeline run with the jobs run after it).

The jobs/ scripts for spark-submit call `main` with their job's name, so a job takes
the same options however it is launched. Exit codes: 0 done, 2 bad config or usage,
3 input the job refused (nothing written), 1 storage that cannot be written (nothing
written), a metastore name taken by another table (the job's writes stand) or anything
unexpected. With `catalog.schema` set, a job that succeeded names the tables it wrote.

The console shows the jobs' own lines; Spark's output goes to a log file of the run's own
unless --verbose (see `sparkml_ext.console`), and an unexpected failure is one line there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sparkml_ext.config import ConfigError, GenerateConfig, PipelineConfig, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INPUT = 0, 1, 2, 3

# The Delta tables each job writes: named in the metastore after it when catalog.schema is set.
WRITES = {"generate": ("truth",), "ingest": ("bronze", "quarantine", "batches"),
          "features": ("features",), "score": ("predictions",)}
WRITES["pipeline"] = tuple(name for names in WRITES.values() for name in names)


def _session(cfg: PipelineConfig, args: argparse.Namespace) -> SparkSession:
    from sparkml_ext.object_store import spark_settings

    return args.console.session(f"sparkml_ext-{cfg.name}", {**spark_settings(cfg.locations()), **cfg.spark})


def name_tables(cfg: PipelineConfig, names: Sequence[str], args: argparse.Namespace) -> list[str]:
    """Register each of `names` that exists as `<catalog.schema>.<name>`; the names made."""
    from sparkml_ext.lake import register

    spark = _session(cfg, args)
    schema = cfg.catalog.schema
    names = [name for name in names if getattr(cfg.tables, name) is not None]  # truth is optional
    named = [f"{schema}.{name}" for name in names if register(spark, schema, name, cfg.table_path(name))]
    if named:
        print(f"catalog: {', '.join(named)}")
    return named


def _done(result: dict) -> dict:
    """A job's result names its job and renders its own line; the CLI only prints it."""
    print(result["summary"])
    return result


def run_generate(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.generate import generate_clicks

    gen = _generate_section(cfg)
    spark = _session(cfg, args)
    return _done(generate_clicks(spark, gen, gen.landing, cfg.table_path("truth")))


def _generate_section(cfg: PipelineConfig) -> GenerateConfig:
    if cfg.generate is None:
        raise ConfigError(f"{cfg.path}: generate: no such section; add one (e.g. `generate: "
                          "{rows: 100000}`) to generate click events")
    return cfg.generate


def generate_into_source(spark: SparkSession, cfg: PipelineConfig, gen: GenerateConfig) -> dict:
    """Generate `gen`'s events under source.path, where ingest reads them (`gen.landing` is
    where `sparkml-ext generate` lands them and plays no part here); its report."""
    from sparkml_ext.generate import generate_clicks

    if gen.format != cfg.source.format:
        raise ConfigError(f"{cfg.path}: generate.format {gen.format!r} is not source.format "
                          f"{cfg.source.format!r}: ingest could not read what generate lands")
    return generate_clicks(spark, gen, cfg.source.path, cfg.table_path("truth"))


def run_ingest(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    """A landing batch by --batch-id; a Delta table source's next versions (their range is
    the batch id, so none is given)."""
    from sparkml_ext.ingest import ingest_batch
    from sparkml_ext.source_table import ingest_table

    if cfg.source.format == "delta":
        if args.batch_id or args.input:
            raise ConfigError(f"{cfg.path}: --batch-id/--input: a delta source (source.format) ingests the "
                              "table's versions not ingested yet, named by their range (v0-v5); give neither")
        return _done(ingest_table(_session(cfg, args), cfg).to_dict())
    if not args.batch_id:
        raise ConfigError(f"{cfg.path}: --batch-id: required for a {cfg.source.format} source "
                          "(the batch's folder under source.path)")
    return _done(ingest_batch(_session(cfg, args), cfg, args.batch_id, args.input).to_dict())


def run_features(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.features import build_features

    return _done(build_features(_session(cfg, args), cfg).to_dict())


def run_train_mllib(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.train_mllib import train_mllib

    return _done(train_mllib(_session(cfg, args), cfg))


def run_train_torch(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.train_torch import train_torch

    return _done(train_torch(_session(cfg, args), cfg))


def run_score(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.score import score

    return _done(score(_session(cfg, args), cfg, args.model))


def run_publish_online(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.online.publish import publish_online

    return _done(publish_online(_session(cfg, args), cfg, args.feature_version))


def run_serve(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    """Serve until interrupted; no Spark (the store and the model are read directly)."""
    from sparkml_ext.online.errors import ServeError

    try:
        from sparkml_ext.online.scorer import Scorer
        from sparkml_ext.online.server import serve
        from sparkml_ext.online.store import SQLiteStore
    except ImportError as err:
        raise ServeError(f"serve needs the serve extra ({err}): pip install 'sparkml-ext[serve]'") from None

    scorer = Scorer(cfg, args.model, SQLiteStore(cfg.online_store()))
    facts = scorer.check_store()
    print(f"serve: {scorer.model.stored.name} with feature v{facts['feature_version']} histories "
          f"({cfg.online_store()}) on http://{args.host}:{args.port} (POST /score, GET /health)", flush=True)
    serve(scorer, args.host, args.port)
    return {"job": "serve", "summary": "serve: stopped"}


def run_report(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    from sparkml_ext.report import build_report, read_run

    run = read_run(cfg, args.run_id)  # before the session: a missing run fails fast
    return _done(build_report(_session(cfg, args), cfg, run, args.out))


def run_pipeline(args: argparse.Namespace, cfg: PipelineConfig) -> dict:
    """Every stage in order for one pipeline file, a progress line each, a table at the end.

    Results are kept by `report.stage_name`, as a job run on its own records its result.
    """
    from sparkml_ext.report import stage_name

    spark = _session(cfg, args)
    stages: list[tuple[str, Callable[[], dict]]] = []
    if cfg.generate is not None:
        stages.append(("generate", lambda: _done(generate_into_source(spark, cfg, cfg.generate))))
    for batch in pipeline_batches(spark, cfg, args.batch_ids):
        batch_args = argparse.Namespace(**{**vars(args), "batch_id": batch, "input": None})
        stages.append((f"ingest {batch or 'new versions'}", lambda a=batch_args: run_ingest(a, cfg)))
    stages.append(("features", lambda: run_features(args, cfg)))
    trainers = {"mllib": run_train_mllib, "torch": run_train_torch}
    if cfg.train_torch is None:  # a file without the section trains no torch model
        del trainers["torch"]
    for kind, train in trainers.items():
        stages.append((f"train-{kind}", lambda run=train: run(args, cfg)))
    results: dict[str, dict] = {}

    def score_model(trained: str) -> dict:  # the version the train stage just stored
        return run_score(argparse.Namespace(**{**vars(args), "model": results[trained]["model_version"]}), cfg)

    for kind in trainers:
        stages.append((f"score {kind}", lambda trained=f"train-{kind}": score_model(trained)))

    def report_run() -> dict:  # record the jobs' reports first, so `report` can redraw it later
        from sparkml_ext.report import record_run

        run_id = record_run(cfg, results)
        return run_report(argparse.Namespace(**{**vars(args), "run_id": run_id, "out": None}), cfg)

    stages.append(("report", report_run))
    for number, (name, stage) in enumerate(stages, 1):
        print(f"[{number}/{len(stages)}] {name} …", flush=True)
        started = time.monotonic()
        result = stage()
        result["stage_seconds"] = round(time.monotonic() - started, 1)
        results[stage_name(result)] = result
    print(_summary_table(results))
    print(f"report: {results['report']['html']}")
    return results


def pipeline_batches(spark: SparkSession, cfg: PipelineConfig, named: Sequence[str] = ()) -> list[str | None]:
    """The batch ids `pipeline` ingests, checked before any stage runs: `named` (--batch-id),
    else those the generate section lands, else every batch folder under source.path. A
    Delta table source has one batch, its versions not ingested yet, which ingest names
    (None here)."""
    from sparkml_ext.generate import batch_id

    if cfg.source.format == "delta":
        if named:
            raise ConfigError(f"{cfg.path}: --batch-id: a delta source (source.format) ingests the table's "
                              "versions not ingested yet, named by their range; give none")
        return [None]
    root = cfg.source.path.rstrip("/")
    if cfg.generate is not None:
        landed = [batch_id(k) for k in range(cfg.generate.batches)]
    else:
        landed = batch_folders(spark, root)
    missing = [batch for batch in named if batch not in landed]
    if missing:
        raise FileNotFoundError(f"{cfg.path}: --batch-id {missing[0]}: no batch folder {root}/{missing[0]}")
    if not (named or landed):
        raise FileNotFoundError(f"{cfg.path}: no batch folder under source.path {root}: put each "
                                "batch's files in a folder of their own (its name is the batch id)")
    for batch in named or landed:
        cfg.batch_path(batch)  # a folder whose name is no batch id: refused now, not after hours
    return list(named or landed)


def batch_folders(spark: SparkSession, root: str) -> list[str]:
    """The folders under `root` in name order, but hidden ones (`_*`, `.*`, which Spark skips too).

    Listed through Hadoop's FileSystem, which opens whatever ingest reads (dbfs:, abfss:, ...).
    """
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(root)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return []
    names = (status.getPath().getName() for status in fs.listStatus(path) if status.isDirectory())
    return sorted(name for name in names if not name.startswith(("_", ".")))


def _summary_table(results: dict[str, dict]) -> str:
    lines = [f"{'stage':<22}{'seconds':>9}  result"]
    for name, result in results.items():
        lines.append(f"{name:<22}{result['stage_seconds']:>9}  {result['summary']}")
    return "\n".join(lines)


def run_doctor(args: argparse.Namespace) -> int:
    """`doctor` checks what the jobs need, so it needs no pipeline file and no session;
    exit 1 when a check found a problem (warnings pass)."""
    from sparkml_ext.doctor import as_json, failed, render, run_checks

    checks = run_checks(args.pipeline)
    print(json.dumps(as_json(checks), indent=2) if args.json else render(checks, sys.stdout.isatty()))
    return EXIT_FAILED if failed(checks) else EXIT_OK


def run_init(args: argparse.Namespace) -> int:
    """`init` writes a pipeline file from the user's data, so it starts from no pipeline file."""
    from sparkml_ext.scaffold import InitError, write_pipeline

    spark = args.console.session("sparkml_ext-init")
    try:
        result = write_pipeline(spark, args.source, args.label, args.out or "", args.name)
    except InitError as err:
        print(f"init refused: {err}", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps(result, indent=2, default=str) if args.json else "\n".join(
        [result["summary"], *[f"question: {q}" for q in result["questions"]]]))
    return EXIT_OK


VERBOSE_HELP = ("show Spark's own output (Ivy's resolution, log4j, WARN lines) on the console "
                "rather than only in the run's log file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkml-ext", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--pipeline", default="conf/pipelines/clicks.yaml",
        help="pipeline YAML file (default: %(default)s)",
    )
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set ingest.on_bad_record=fail (repeatable)",
    )
    common.add_argument("--json", action="store_true", help="print the job's report as JSON")
    common.add_argument(
        "--log-level", default="ERROR", choices=["ERROR", "WARN", "INFO", "DEBUG"],
        help="Spark's log level (default: %(default)s; above it, Spark's output is on the console)",
    )
    common.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")

    gen = jobs.add_parser("generate", parents=[common], help="generate Criteo-like click logs")
    gen.add_argument("--rows", type=int, help="events to generate (overrides generate.rows)")
    gen.add_argument("--batches", type=int, help="landing batches (overrides generate.batches)")
    gen.add_argument("--seed", type=int, help="random seed (overrides generate.seed)")
    gen.add_argument("--format", choices=["csv", "json", "parquet"], help="landing file format")
    gen.set_defaults(run=run_generate)

    ing = jobs.add_parser("ingest", parents=[common], help="land one batch in the bronze Delta table")
    ing.add_argument("--batch-id", help="batch id, also the folder under source.path (none for a delta "
                                        "source: the table's new versions are the batch)")
    ing.add_argument("--input", help="read this folder instead of <source.path>/<batch-id>")
    ing.set_defaults(run=run_ingest)

    feat = jobs.add_parser("features", parents=[common], help="bronze → feature table (incremental)")
    feat.set_defaults(run=run_features)

    mllib = jobs.add_parser("train-mllib", parents=[common], help="fit, tune and store an MLlib model")
    mllib.set_defaults(run=run_train_mllib)

    deep = jobs.add_parser("train-torch", parents=[common],
                           help="train a DLRM with PyTorch DDP on Arrow shards and store it")
    deep.set_defaults(run=run_train_torch)

    sco = jobs.add_parser("score", parents=[common], help="predictions of a stored model into Delta")
    sco.add_argument("--model", help="model version, e.g. gbt/v3, torch/latest (default: score.model)")
    sco.set_defaults(run=run_score)

    pub = jobs.add_parser("publish-online", parents=[common],
                          help="publish the entity histories online scoring needs (from the feature table)")
    pub.add_argument("--feature-version", type=int,
                     help="the feature table version to publish (default: online.feature_version, else the latest)")
    pub.set_defaults(run=run_publish_online)

    srv = jobs.add_parser("serve", parents=[common], help="score events over HTTP with a torch model and the "
                                                          "published histories (no Spark)")
    srv.add_argument("--model", default="torch/latest",
                     help="model version, e.g. torch/v3, or torch/latest to follow new versions (default: %(default)s)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    srv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    srv.set_defaults(run=run_serve)

    rep = jobs.add_parser("report", parents=[common],
                          help="HTML page with PNG plots of a pipeline run (rows, quarantine, ROC, "
                               "calibration, training, throughput)")
    rep.add_argument("--run", dest="run_id", help="run id under <lakehouse>/_meta/runs (default: the latest run)")
    rep.add_argument("--out", help="folder for index.html and its PNGs (default: <lakehouse>/reports/<run id>)")
    rep.set_defaults(run=run_report)

    pipe = jobs.add_parser("pipeline", parents=[common], help="run every stage in order, then report")
    pipe.add_argument("--batch-id", dest="batch_ids", action="append", default=[], metavar="BATCH_ID",
                      help="ingest only this batch folder under source.path (repeatable; default: "
                           "every batch folder there, in name order, or the generated ones)")
    pipe.set_defaults(run=run_pipeline)

    init = jobs.add_parser("init", help="write a pipeline file from a sample of your data")
    init.add_argument("--from", dest="source", required=True, metavar="PATH_OR_TABLE",
                      help="a landing root (a folder per batch of CSV, JSON or Parquet files), a Delta "
                           "table's path, or a catalog table's name")
    init.add_argument("--label", required=True, help="the column to predict")
    init.add_argument("--out", help="the pipeline file to write (default: <name>.yaml here)")
    init.add_argument("--name", help="the pipeline's name (default: from the folder or table)")
    init.add_argument("--log-level", default="ERROR", choices=["ERROR", "WARN", "INFO", "DEBUG"],
                      help="Spark's log level (default: %(default)s; above it, Spark's output is on "
                           "the console)")
    init.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    init.add_argument("--json", action="store_true", help="print what init decided as JSON")

    doc = jobs.add_parser("doctor", help="check Python, Java, Spark/Delta, the Delta jars, the "
                                         "lakehouse and the optional extras; say what to fix")
    doc.add_argument("--pipeline", help="also check this pipeline file and its lakehouse "
                                        "(default: the lakehouse in $SPARKML_EXT_LAKEHOUSE, if set)")
    doc.add_argument("--json", action="store_true", help="print the checks as JSON")
    return parser


def _generate_overrides(args: argparse.Namespace) -> list[str]:
    """`generate --rows 1000` is sugar for `--set generate.rows=1000`."""
    names = {"rows": "rows", "batches": "batches", "seed": "seed", "format": "format"}
    return [f"generate.{key}={getattr(args, attr)}" for attr, key in names.items()
            if getattr(args, attr, None) is not None]


# The jobs that record their own result; `pipeline` records its whole run, `report` only reads.
RECORDED = ("generate", "ingest", "features", "train-mllib", "train-torch", "score")


def _record(cfg: PipelineConfig, job: str, result: dict, started: float) -> None:
    """Record a job's result for `report`. The job's writes stand either way, so a record that
    cannot be written (a lakehouse URI pyarrow cannot open, such as s3a://) is said, not fatal."""
    from sparkml_ext.report import RUNS, record_run, stage_name

    result["stage_seconds"] = round(time.monotonic() - started, 1)
    try:
        record_run(cfg, {stage_name(result): result}, job)
    except (OSError, ValueError) as err:
        print(f"{job}: its run is not recorded under {cfg.lakehouse_path(RUNS)} ({err}); "
              "`report` will not show it", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.job == "doctor":  # checks what the jobs need: no pipeline file, no session
        return run_doctor(args)
    from sparkml_ext.console import Console

    args.console = Console(args.job, args.log_level, verbose=args.verbose, as_json=args.json)
    try:
        return run_init(args) if args.job == "init" else _run_job(args)  # init: no pipeline file
    except Exception as err:  # unexpected: one line here and the traceback in the run's log
        if not args.console.failed(err):
            raise
        return EXIT_FAILED
    finally:
        args.console.close()


def _run_job(args: argparse.Namespace) -> int:
    """A pipeline file's job; its refusals are one line each, with their exit codes."""
    from sparkml_ext.features import FeaturesError
    from sparkml_ext.holdout import TrainError
    from sparkml_ext.ingest import IngestError
    from sparkml_ext.lake import BatchConflict, CatalogConflict, StorageError
    from sparkml_ext.online.errors import PublishError, ServeError

    try:
        cfg = load_config(args.pipeline, [*args.overrides, *_generate_overrides(args)])
        started = time.monotonic()
        report = args.run(args, cfg)
        if args.job in RECORDED:
            _record(cfg, args.job, report, started)
        if cfg.catalog.schema and args.job in WRITES:
            name_tables(cfg, WRITES[args.job], args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (IngestError, FeaturesError, TrainError, BatchConflict, PublishError, ServeError,
            FileNotFoundError) as err:
        print(f"{args.job} refused: {err}", file=sys.stderr)
        return EXIT_INPUT
    except (StorageError, CatalogConflict) as err:  # the lakehouse cannot be written, or named
        print(f"{args.job} failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return EXIT_OK


SEED_STEPS = ("generate", "ingest", "features")
Step = Callable[[str, Callable[[], Any]], Any]  # (step name, run) -> run()


def _run_step(name: str, run: Callable[[], Any]) -> Any:
    return run()


def seed_lakehouse(
    spark: SparkSession,
    cfg: PipelineConfig,
    gen: GenerateConfig | None = None,
    *,
    through: Literal["ingest", "features"] = "features",
    step: Step = _run_step,
) -> dict:
    """Generate `gen` (by default the pipeline's `generate` section), ingest every batch it
    lands, then build the feature table, unless `through="ingest"` stops before it.

    The events land under `source.path` (`generate_into_source`), so `gen.format` must be
    `source.format`. Each of `SEED_STEPS` runs as `step(name, run)`, which returns `run()`: a
    benchmark passes its clock there. Returns each step's report by name: the generate
    report, the list of ingest reports in batch order and the features report. The start of
    `sparkml-ext pipeline` as one call, for the test fixtures and the benchmarks.
    """
    from sparkml_ext.features import build_features
    from sparkml_ext.ingest import ingest_batch

    if through not in ("ingest", "features"):
        raise ValueError(f"through: must be 'ingest' or 'features', got {through!r}")
    gen = _generate_section(cfg) if gen is None else gen
    reports: dict = {"generate": step("generate", lambda: generate_into_source(spark, cfg, gen))}
    batches = [folder.rstrip("/").rpartition("/")[2] for folder in reports["generate"]["batch_dirs"]]
    reports["ingest"] = step("ingest", lambda: [ingest_batch(spark, cfg, batch) for batch in batches])
    if through == "features":
        reports["features"] = step("features", lambda: build_features(spark, cfg))
    return reports


if __name__ == "__main__":
    sys.exit(main())
