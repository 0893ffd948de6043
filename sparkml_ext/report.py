"""report: what one pipeline run did and how good its models are, gathered in Spark.

`pipeline` records each run (its stage reports) as `<lakehouse>/_meta/runs/<run id>.json`,
and each job run on its own records its one stage there, so a report can be drawn, or drawn
again, from the lakehouse alone, however the jobs were run. Everything data-sized
stays in Spark: quarantine reasons are counted per batch, and each classifier's test-split
scores (beside the generator's planted probability, the Bayes-optimal score) are binned
and counted per bin; only those few hundred rows reach the driver, where ROC and
calibration curves are cumulative sums. A regression's test rows are grouped by quantiles
of its prediction, and each group's means and residual percentiles reach the driver
(`residual_bins`). `report_page` draws the page.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from functools import reduce

import pyarrow.fs as pafs
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext import lake, modelstore
from sparkml_ext.config import PipelineConfig
from sparkml_ext.holdout import (
    BAYES,
    BINARY_CLASSES,
    REGRESSION,
    Split,
    card_split,
    class_index,
    labelled_sql,
    planted,
)
from sparkml_ext.storage import filesystem

RUNS = "_meta/runs"
BINS = 500  # score bins for the ROC curve (AUC within ~1e-3 of the exact one)
CALIBRATION_BINS = 20  # equal-width groups of those bins for the calibration curve
RESIDUAL_BINS = 20  # a regression's test rows in groups of about equal size by its prediction
RESIDUAL_PERCENTILES = {"p10": 0.1, "median": 0.5, "p90": 0.9}  # of actual - predicted in a group


def stage_name(result: dict) -> str:
    """A job's stage in a run record, as `pipeline` names it: one per batch for ingest, one
    per model family (mllib, torch) for score, else the job's name."""
    if result["job"] == "ingest":
        return f"ingest {result['batch_id']}"
    if result["job"] == "score":
        return "score torch" if result["model"].startswith("torch/") else "score mllib"
    return result["job"]


def record_run(cfg: PipelineConfig, stages: dict[str, dict], job: str = "pipeline") -> str:
    """Store finished stages' reports as a new run record; returns its id.

    `pipeline` records all its stages at once, a job run on its own (`job`) its one stage,
    so that `report` draws the lakehouse after separate jobs too (see `read_run`).
    """
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    run_id = f"{stamp}.{int(now % 1 * 1e6):06d}Z-{uuid.uuid4().hex[:6]}"  # sorts by time
    fs, folder = filesystem(cfg.lakehouse_path(RUNS))
    fs.create_dir(folder)
    record = {"run_id": run_id, "job": job, "pipeline": cfg.path, "name": cfg.name,
              "created_unix": now, "tables": _tables(cfg), "stages": stages}
    with fs.open_output_stream(f"{folder}/{run_id}.json") as sink:  # unsorted: stage order
        sink.write(json.dumps(record, indent=2, default=str).encode())
    return run_id


def _tables(cfg: PipelineConfig) -> dict[str, str]:
    """The tables a run record is about. One lakehouse may hold several files' tables (a
    second label's features, models and predictions beside the first's), and a report
    draws only the runs of its own file's tables."""
    return {f.name: cfg.table_path(f.name) for f in dataclasses.fields(cfg.tables)
            if getattr(cfg.tables, f.name) is not None}


def read_run(cfg: PipelineConfig, run_id: str | None = None) -> dict:
    """A run record by id; by default the latest state of this file's tables: the latest
    pipeline run with the jobs recorded after it laid over it, each stage as its latest run
    left it (or, with no pipeline run, every job recorded); runs recorded for other tables
    in the same lakehouse are not this file's."""
    where = cfg.lakehouse_path(RUNS)
    fs, folder = filesystem(where)
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    ids = sorted(i.base_name.removesuffix(".json") for i in infos if i.base_name.endswith(".json"))
    if not ids:
        raise FileNotFoundError(f"no run recorded under {where}: run `sparkml-ext pipeline` or its "
                                "jobs first")
    if run_id is not None and run_id not in ids:
        raise FileNotFoundError(f"run {run_id!r} is not under {where} (latest: {ids[-3:]})")

    def record(chosen: str) -> dict:
        with fs.open_input_stream(f"{folder}/{chosen}.json") as source:
            return json.loads(source.read())

    if run_id is not None:
        return record(run_id)
    newest_first, mine = [], _tables(cfg)
    for chosen in reversed(ids):
        run = record(chosen)
        if run.get("tables", mine) != mine:  # (records before stop 21 name no tables)
            continue
        newest_first.append(run)
        if run.get("job", "pipeline") == "pipeline":  # older records: pipeline runs
            break
    if not newest_first:
        raise FileNotFoundError(f"no run recorded under {where} for the tables of {cfg.path}: run "
                                "`sparkml-ext pipeline` or its jobs with this file first")
    stages: dict[str, dict] = {}
    for run in reversed(newest_first):
        stages.update(run["stages"])
    return {**newest_first[0], "stages": stages}


def build_report(spark: SparkSession, cfg: PipelineConfig, run: dict, out: str | None = None
                 ) -> dict:
    """Draw the page of a run record into `out` (default `<lakehouse>/reports/<run id>`)."""
    from sparkml_ext.report_page import write_page

    out = out or cfg.lakehouse_path(f"reports/{run['run_id']}")
    page = write_page(gather(spark, cfg, run), out)
    return {"job": "report", "summary": f"report: run {page['run_id']}: {page['html']}", "counts": {}, **page}


def gather(spark: SparkSession, cfg: PipelineConfig, run: dict) -> dict:
    """The page's data: stage rows, quarantine reasons, classifiers' curves, regressions'
    residuals, training and bridge figures."""
    stages = run["stages"]
    batches = [r["batch_id"] for r in stages.values() if r["job"] == "ingest"]
    scores = [r for r in stages.values() if r["job"] == "score"]
    models = cfg.table_path("models")
    cards = {r["model"]: modelstore.read_json(modelstore.resolve(models, r["model"]), "card.json")
             for r in scores}
    binary = [r for r in scores if cards[r["model"]]["metrics"].get("auc_roc") is not None]
    regressions = [r for r in scores if cards[r["model"]].get("task") == REGRESSION]
    splits = {name: card_split(card, cfg.source.key) for name, card in cards.items()}
    classes = {name: card.get("classes") for name, card in cards.items()}
    bins = score_bins(spark, cfg, binary, splits, classes) if binary else {}
    return {
        "run": {k: run[k] for k in ("run_id", "pipeline", "name", "created_unix")},
        "stages": [{"stage": name, "seconds": r.get("stage_seconds"), **r["counts"]}
                   for name, r in stages.items()],
        "quarantine": quarantine_reasons(spark, cfg, batches),
        "curves": {name: curves(rows) for name, rows in bins.items()},
        "residuals": residuals(spark, cfg, regressions, splits) if regressions else {},
        "models": {name: {**_model_summary(card), "holdout": splits[name].card()}
                   for name, card in cards.items()},
    }


def _model_summary(card: dict) -> dict:
    metrics = card["metrics"]
    return {
        "kind": card["model"],
        "task": card.get("task"),
        "feature_version": card["feature_version"],
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "card_auc": metrics.get("auc_roc"),
        "bayes_optimal_auc": metrics.get("bayes_optimal_auc"),
        "log_loss": metrics.get("log_loss"),
        "epochs": card.get("epochs"),  # torch: train_loss, val_loss, val_<VALIDATION_METRIC> per epoch
        "search": card.get("search"),  # MLlib: validation score per grid point
        "rows_per_s": card.get("rows_per_s"),
        "timings": card.get("timings"),
        "world_size": card.get("training", {}).get("world_size"),
    }


def quarantine_reasons(spark: SparkSession, cfg: PipelineConfig, batches: list[str]
                       ) -> dict[str, dict[str, int]]:
    """Quarantined records per first reason and batch: {reason: {batch: count}}."""
    table = cfg.table_path("quarantine")
    if not batches or not lake.is_delta(spark, table):
        return {}
    rows = (lake.read_version(spark, table)[0].where(F.col("batch_id").isin(batches))
            .groupBy("reason", "batch_id").count()
            .collect())  # driver-ok: reasons x batches
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["reason"], {})[r["batch_id"]] = r["count"]
    return counts


def score_bins(spark: SparkSession, cfg: PipelineConfig, scores: list[dict],
               splits: dict[str, Split], classes: dict[str, list | None]) -> dict[str, list[tuple]]:
    """(bin, rows, positives, score sum) per curve over the test split, binned in Spark.

    Each model's test rows are those of the split its card was judged on (`splits`); a
    row is a positive when its label is the second of the model's `classes` (the card's;
    a card without them has a 0/1 label).
    Each scored model is read from the predictions table as the run left it; the
    Bayes-optimal curve scores the same test rows with the generator's planted probability
    where the generator's truth covers them (generated data only).
    """
    label = cfg.features.label
    frames = [rows.select(F.lit(name).alias("curve"), "score", _positive(label, classes.get(name)))
              for name, rows in _judged(spark, cfg, scores, splits).items()]
    last = scores[-1]
    truth = planted(spark, cfg, _test_rows(spark, cfg, last["feature_version"], splits[last["model"]]))
    if truth is not None:
        frames.append(truth.select(F.lit(BAYES).alias("curve"), "score", _positive(label, None)))
    score = F.col("score").cast("double")
    bin_ = F.least(F.greatest(F.floor(score * BINS), F.lit(0)), F.lit(BINS - 1)).cast("int")
    rows = (reduce(DataFrame.unionByName, frames)
            .groupBy("curve", bin_.alias("bin"))
            .agg(F.count(F.lit(1)).alias("rows"),
                 F.sum("positive").alias("positives"),
                 F.sum(score).alias("score_sum"))
            .collect())  # driver-ok: at most BINS rows per curve
    binned: dict[str, list[tuple]] = {}
    for r in rows:
        binned.setdefault(r["curve"], []).append((r["bin"], r["rows"], r["positives"],
                                                  r["score_sum"]))
    return binned


def residuals(spark: SparkSession, cfg: PipelineConfig, scores: list[dict],
              splits: dict[str, Split]) -> dict[str, list[dict]]:
    """`residual_bins` of each scored regression's test rows (see `_judged`)."""
    label = cfg.features.label
    frames = [rows.select(F.lit(name).alias("curve"), F.col("prediction").cast("double").alias("predicted"),
                          F.col(label).cast("double").alias("actual"))
              for name, rows in _judged(spark, cfg, scores, splits).items()]
    return residual_bins(reduce(DataFrame.unionByName, frames))


def residual_bins(rows: DataFrame) -> dict[str, list[dict]]:
    """How a regression errs, per curve of `rows` (curve, predicted, actual), in one query.

    Each curve's rows are grouped by RESIDUAL_BINS quantiles of its prediction (approximate,
    `percentile_approx`, joined back in the same query), so every group holds about as many
    rows wherever the predictions crowd; a group is the rows above one quantile and up to the
    next. Per group: its rows, mean prediction, mean actual value and RESIDUAL_PERCENTILES of
    the residual (actual - predicted). At most RESIDUAL_BINS rows per curve reach the driver.
    """
    fractions = [i / RESIDUAL_BINS for i in range(1, RESIDUAL_BINS)]
    edges = rows.groupBy("curve").agg(F.percentile_approx("predicted", fractions).alias("edges"))
    predicted = F.col("predicted")
    bin_ = F.size(F.filter("edges", lambda edge: edge < predicted))
    groups = (rows.join(F.broadcast(edges), "curve")
              .groupBy("curve", bin_.alias("bin"))
              .agg(F.count(F.lit(1)).alias("rows"),
                   F.avg(predicted).alias("predicted"),
                   F.avg("actual").alias("actual"),
                   F.percentile_approx(F.col("actual") - predicted, list(RESIDUAL_PERCENTILES.values()))
                   .alias("residual"))
              .collect())  # driver-ok: at most RESIDUAL_BINS rows per curve
    summary: dict[str, list[dict]] = {}
    for g in sorted(groups, key=lambda g: (g["curve"], g["bin"])):
        summary.setdefault(g["curve"], []).append(
            {"rows": g["rows"], "predicted": g["predicted"], "actual": g["actual"],
             "residual": dict(zip(RESIDUAL_PERCENTILES, g["residual"]))})
    return summary


def _judged(spark: SparkSession, cfg: PipelineConfig, scores: list[dict],
            splits: dict[str, Split]) -> dict[str, DataFrame]:
    """Each scored model's test rows (key, label) joined to its predictions (`score`,
    `prediction`): the rows of the split its card was judged on (`splits`), the predictions
    as the run left them in the predictions table."""
    key = cfg.source.key
    predictions, _ = lake.read_version(spark, cfg.table_path("predictions"),
                                       max(r["predictions_version"] for r in scores))
    judged = {}
    for r in scores:
        scored = predictions.where((F.col("model") == r["model"])
                                   & (F.col("feature_version") == r["feature_version"]))
        judged[r["model"]] = _test_rows(spark, cfg, r["feature_version"], splits[r["model"]]).join(scored, key)
    return judged


def _positive(label: str, classes: list | None) -> Column:
    """1 for a row of the second class (a card without `classes` has a 0/1 label)."""
    return (class_index(label, classes or BINARY_CLASSES) == 1).cast("long").alias("positive")


def _test_rows(spark: SparkSession, cfg: PipelineConfig, version: int, split: Split) -> DataFrame:
    features, _ = lake.read_version(spark, cfg.table_path("features"), version)
    key, label = cfg.source.key, cfg.features.label
    return features.where((split.of() == "test") & F.expr(labelled_sql(label))).select(key, label)


def curves(bins: list[tuple]) -> dict:
    """ROC (highest scores first, ties within a bin as one step), its AUC, and calibration."""
    ordered = sorted(bins, reverse=True)
    positives = sum(b[2] for b in ordered)
    negatives = sum(b[1] - b[2] for b in ordered)
    fpr, tpr, auc = [0.0], [0.0], 0.0
    for _, rows, pos, _ in ordered:
        x = fpr[-1] + (rows - pos) / max(negatives, 1)
        y = tpr[-1] + pos / max(positives, 1)
        auc += (x - fpr[-1]) * (y + tpr[-1]) / 2
        fpr.append(x)
        tpr.append(y)
    groups: dict[int, list[float]] = {}
    for bin_, rows, pos, score_sum in bins:
        group = groups.setdefault(bin_ * CALIBRATION_BINS // BINS, [0, 0, 0.0])
        group[0] += rows
        group[1] += pos
        group[2] += score_sum
    calibration = [{"predicted": s / n, "observed": p / n, "rows": n}
                   for _, (n, p, s) in sorted(groups.items())]
    return {"fpr": fpr, "tpr": tpr, "auc": auc, "rows": positives + negatives,
            "positives": positives, "calibration": calibration}
